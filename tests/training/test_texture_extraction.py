"""Texture extraction (training/texture.py): the fit, the extraction, the de-lighting, and the CLI stage.

Tolerances were measured on these synthetic renders (seed 11, 128 px, 80 steps at a 64 px photometric render,
the renders' own landmarks): global rotation error 1.3–3.9°, camera scale error 0.5–3.6 %, landmark error
0.014–0.021 inter-ocular distances, facial-skin PSNR (gain-corrected) 33–40 dB de-lit vs 19–34 dB raw.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from facecore import texture as uv_texture
from models.face.model import FaceModel, axis_angle_to_matrix
from training import face_fit
from training import run as run_cli
from training import texture as T
from training.data.synthetic import SyntheticConfig, SyntheticFaces

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
INDICES = [0, 1, 2]  # yaw −44°, 21°, −10°
FIT = T.FitConfig(steps=80, render_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fm() -> FaceModel:
    return FaceModel.from_file()


@pytest.fixture(scope="module")
def batch(fm):
    ds = SyntheticFaces(SyntheticConfig(image_size=128, albedo_size=128, seed=11), face_model=FaceModel(fm.arrays))
    return ds.batch(INDICES)


@pytest.fixture(scope="module")
def images(batch) -> list[np.ndarray]:
    return [T.to_uint8(batch.image_srgb[i].permute(1, 2, 0).numpy()) for i in range(len(INDICES))]


@pytest.fixture(scope="module")
def fits(fm, batch, images) -> list[T.FitResult]:
    return T.fit_faces(images, batch.landmarks_px.double().numpy(), fm, config=FIT)


@pytest.fixture(scope="module")
def textures(fm, images, fits) -> list[T.ExtractedTexture]:
    return [T.extract_texture(im, fit, fm, 128) for im, fit in zip(images, fits, strict=True)]


# -- the fit ---------------------------------------------------------------------------------------------------


def test_fit_lowers_its_losses(fits):
    for fit in fits:
        lmk = fit.losses["landmark"]
        assert lmk.shape == (FIT.steps,)
        end_of_landmark_stage = round(FIT.landmark_fraction * FIT.steps) - 1
        assert lmk[end_of_landmark_stage] < 0.8 * lmk[0]  # from the closed-form start
        assert lmk[-5:].mean() < lmk[0]
        photo = fit.losses["photo"]
        active = np.flatnonzero(np.isfinite(photo))
        assert active[0] == round(FIT.landmark_fraction * FIT.steps) and active[-1] == FIT.steps - 1
        assert photo[active[-5:]].mean() < photo[active[0]]
        assert np.all(np.isnan(photo[: active[0]]))  # not active in the landmark stages


def test_fit_recovers_pose_and_camera(fits, batch):
    for i, fit in enumerate(fits):
        r_true = axis_angle_to_matrix(batch.codes.pose[i, 0].double())
        r_fit = axis_angle_to_matrix(torch.as_tensor(fit.pose[0]))
        angle = torch.rad2deg(torch.arccos((((r_true.T @ r_fit).trace() - 1) / 2).clamp(-1, 1)))
        assert float(angle) < 6.0, (i, float(angle))
        assert abs(fit.camera[0] / float(batch.camera.scale[i]) - 1) < 0.08
        assert fit.landmark_error < 0.04
        assert fit.mask.shape == (128, 128) and 0.2 < fit.mask.mean() < 0.9
        assert np.all((fit.expression >= 0) & (fit.expression <= 1))
        assert np.all(fit.pose[[1, 3, 4]] == 0)  # neck and eyes are not fitted


def test_fit_light_convention(fits):
    for fit in fits:
        assert fit.sh.shape == (9, 3) and np.all(np.isfinite(fit.sh))
        assert np.all(fit.skin_colour > 0) and fit.skin_colour.max() <= FIT.max_skin_albedo + 1e-9
        json.dumps(fit.to_json())  # JSON-ready


def test_fit_is_deterministic_and_batch_independent(fm, batch, images):
    cfg = T.FitConfig(steps=12, render_size=48)
    lms = batch.landmarks_px.double().numpy()
    a = face_fit.fit_face(images[0], lms[0], fm, config=cfg)
    b = face_fit.fit_face(images[0], lms[0], fm, config=cfg)
    for name in ("shape", "expression", "pose", "camera", "sh", "skin_colour"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # batched fits are independent: another image in the batch changes only float rounding, which Adam's
    # normalised steps amplify in weakly determined directions (measured after 12 steps: 4e-4 rad, 2e-3 in the
    # identity, 2e-3 in the camera; a coupling bug would show as differences of the size of the fit itself)
    pair = T.fit_faces(images[:2], lms[:2], fm, config=cfg)
    assert np.abs(pair[0].pose - a.pose).max() < 4e-3
    assert np.abs(pair[0].shape - a.shape).max() < 0.025
    assert np.abs(pair[0].camera - a.camera).max() < 0.02


def test_fit_without_landmarks_runs_photometric_only(fm, images):
    fit = face_fit.fit_face(images[2], None, fm, config=T.FitConfig(steps=6, render_size=48))
    assert np.isnan(fit.landmark_error) and np.all(np.isnan(fit.losses["landmark"]))
    assert np.all(np.isfinite(fit.losses["photo"]))


def test_fit_rejects_bad_input(fm, images):
    with pytest.raises(ValueError, match="square"):
        face_fit.fit_face(images[0][:, :100], None, fm, steps=1)
    with pytest.raises(ValueError, match="landmarks"):
        face_fit.fit_face(images[0], np.zeros((5, 2)), fm, steps=1)
    with pytest.raises(ValueError, match="unknown keys"):
        T.FitConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="rigid_fraction"):
        T.FitConfig(rigid_fraction=0.8, landmark_fraction=0.5)


def test_face_region_is_the_facial_skin(fm):
    region = T.face_region(fm.arrays)
    skin = fm.arrays.face_part == 0
    assert region.shape == (len(fm.arrays.faces),) and np.all(region[~skin] == 0)
    assert 0.1 < region[skin].mean() < 0.6
    lm_faces = fm.arrays.landmark_faces
    assert region[lm_faces[[36, 39, 42, 45, 48, 54]]].max() == 0  # eye corners, mouth corners cut out
    assert region[lm_faces[[2, 14, 29]]].min() == 1  # cheeks, nose bridge in


def test_procedural_texture_model_has_the_layouts_features(fm):
    model = face_fit.procedural_texture_model(fm, 12, 64, maps=256)
    assert model.mean.shape == (3, 64, 64) and model.components.shape == (12, 3, 64, 64)
    assert face_fit.procedural_texture_model(fm, 12, 64, maps=256) is model  # cached
    c = model.components.reshape(12, -1).double()
    std = c.norm(dim=1)
    assert torch.all(std[:-1] >= std[1:]) and std[-1] > 0  # principal directions, largest first
    unit = c / std[:, None]
    assert torch.allclose(unit @ unit.T, torch.eye(12, dtype=torch.float64), atol=1e-6)
    # the mean map is registered to the layout: lips redder than the cheeks, brows darker than the forehead
    regions = uv_texture.uv_regions(fm.arrays, 64)
    mean = model.mean.permute(1, 2, 0).double().numpy()

    def avg(name: str) -> np.ndarray:
        return mean[regions[name]].mean(0)

    lips, cheeks = avg("lips"), avg("cheeks")  # measured: R/G 1.89 vs 1.64, luminance 0.74 × the cheeks'
    assert lips[0] / lips[1] > 1.1 * cheeks[0] / cheeks[1]
    assert lips @ uv_texture.LUMA < 0.85 * cheeks @ uv_texture.LUMA
    assert avg("brows") @ uv_texture.LUMA < 0.92 * avg("forehead") @ uv_texture.LUMA  # measured 0.85
    assert model(torch.zeros(2, 12)).shape == (2, 3, 64, 64)


def test_textured_stage_registers_the_features_beyond_noisy_landmarks(fm):
    # the targets are the true landmarks + 2 px noise (~0.05 inter-ocular distances, dlib's level); the textured
    # stage's brows, lids and lips bring the fitted inner landmarks closer to the *true* ones than the flat fit.
    # Measured on these 8 faces with this noise draw and another: mean 0.104 → 0.087 / 0.107 → 0.089 of the
    # inter-ocular distance, 15 of 16 fits closer, the worst +0.03. On 3 faces it had been asserted per face within
    # 0.003, which a float-level change of the machine broke (one fit's trajectory: 0.114 → 0.142), so the claim is
    # the mean, most faces, and no face far worse
    ds = SyntheticFaces(SyntheticConfig(image_size=128, albedo_size=128, seed=11), face_model=FaceModel(fm.arrays))
    batch = ds.batch(list(range(8)))
    images = [T.to_uint8(batch.image_srgb[i].permute(1, 2, 0).numpy()) for i in range(8)]
    truth = batch.landmarks_px.double().numpy()
    noisy = truth + np.random.default_rng(0).normal(0.0, 2.0, truth.shape)
    errors = {}
    for texture in ("flat", "procedural"):
        cfg = T.FitConfig(steps=120, render_size=96, texture=texture)
        fits = face_fit.fit_faces(images, noisy, fm, config=cfg)
        errors[texture] = np.array(
            [face_fit.normalised_landmark_error(f.landmarks_px(fm)[17:], truth[i][17:]) for i, f in enumerate(fits)]
        )
        assert all(f.landmark_error < 0.15 for f in fits)  # still on its targets, within their noise
    assert errors["procedural"].mean() < 0.9 * errors["flat"].mean(), errors
    assert (errors["procedural"] < errors["flat"]).sum() >= 6, errors
    assert np.all(errors["procedural"] < errors["flat"] + 0.05), errors


def test_textured_stage_is_undone_when_it_leaves_the_landmarks(fm, batch, images):
    # margin −1: every textured stage counts as having left its landmarks, so the fit is exactly the flat fit
    # stopped where the textured stage began (80 steps: rigid to 12, landmarks to 40, textured from 60)
    lms = batch.landmarks_px.double().numpy()[:1]
    undone = face_fit.fit_faces(images[:1], lms, fm, config=T.FitConfig(steps=80, render_size=48, texture_margin=-1.0))
    stopped = face_fit.fit_faces(
        images[:1], lms, fm,
        config=T.FitConfig(steps=60, render_size=48, texture="flat", rigid_fraction=0.2, landmark_fraction=40 / 60),
    )  # fmt: skip
    for name in ("shape", "expression", "pose", "camera", "sh", "skin_colour"):
        assert np.allclose(getattr(undone[0], name), getattr(stopped[0], name), atol=1e-6), name
    kept = face_fit.fit_faces(images[:1], lms, fm, config=T.FitConfig(steps=80, render_size=48))
    assert not np.allclose(kept[0].pose, stopped[0].pose, atol=1e-4)  # the stage does move the fit


# -- extraction ------------------------------------------------------------------------------------------------


def test_extraction_shapes_and_ranges(textures):
    for tex in textures:
        R = 128
        for name in ("albedo", "colour", "shading"):
            arr = getattr(tex, name)
            assert arr.shape == (R, R, 3) and np.all(np.isfinite(arr)), name
        assert tex.albedo.min() >= 0 and tex.albedo.max() <= 1
        assert tex.source.dtype == np.uint8 and set(np.unique(tex.source)) <= {0, 1, 2, 3, 4}
        assert tex.valid.dtype == bool and np.all(tex.source[tex.valid] == 1)
        assert tex.valid.sum() > 0.1 * R * R
        assert tex.shading[tex.source > 0].min() > 0


def test_delighting_brings_the_albedo_closer_to_the_truth(fm, batch, textures):
    face = T.face_texels(fm.arrays, 128)
    errs = [
        T.albedo_errors(tex, batch.albedo_uv[i].permute(1, 2, 0).double().numpy(), face)
        for i, tex in enumerate(textures)
    ]
    for e in errs:  # the shading pattern is removed (both sides with their best gain)
        assert e["face_psnr"] > e["face_psnr_raw"] + 3.0, e
        assert e["delit_gain"] < 0.03, e
    # and with the scale convention as it is, on average
    assert np.mean([e["delit"] for e in errs]) < np.mean([e["raw"] for e in errs])


def test_invalid_texels_take_their_mirror():
    R = 8
    source = np.ones((R, R), np.uint8)
    colour = np.full((R, R, 3), 0.4)
    albedo = np.full((R, R, 3), 0.5)
    albedo[:, R - 1] = 0.9  # the mirror column of column 0
    shading = np.ones((R, R, 3))
    shading[:, 0] = 0.05  # deep shadow: not valid
    colour[2, 3] = 1.0  # clipped: not valid, and its mirror (column 4) is valid
    out = T._correct(uv_texture.Unwrapped(albedo, colour, source, shading), min_shading=0.15, clip_level=0.995)
    assert not out.valid[:, 0].any() and not out.valid[2, 3]
    assert np.allclose(out.albedo[:, 0], 0.9) and np.allclose(out.albedo[2, 3], albedo[2, 4])


# -- the CLI stage ---------------------------------------------------------------------------------------------


def _write_config(tmp_path, extract: dict) -> str:
    path = tmp_path / "extract.yaml"
    path.write_text(yaml.safe_dump({"extract": extract}))
    return str(path)


TINY = {"resolution": 64, "crop_size": 112, "batch_size": 2, "fit": {"steps": 16, "render_size": 48}}


def test_cli_extracts_a_folder_and_resumes(tmp_path, fm, monkeypatch, caplog):
    ds = SyntheticFaces(SyntheticConfig(image_size=192, albedo_size=64, seed=5), face_model=FaceModel(fm.arrays))
    photos = tmp_path / "photos"
    (photos / "b").mkdir(parents=True)
    batch = ds.batch([0, 1])
    for i, name in enumerate(("a.jpg", "b/face.jpeg")):
        Image.fromarray(T.to_uint8(batch.image_srgb[i].permute(1, 2, 0).numpy())).save(photos / name, quality=92)
    (photos / "c_broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(photos / "d_blank.png")
    cfg = _write_config(tmp_path, {"images": str(photos), "detector": "hog", **TINY})
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert run_cli.main(["extract", "--config", cfg, "--out", str(out)]) == 0
    stage = out / "extract"
    records = [json.loads(line) for line in (stage / "fits.jsonl").read_text().splitlines()]
    by_index = {r["index"]: r for r in records}
    assert sorted(by_index) == [0, 1, 2, 3]
    assert by_index[0]["source"].endswith("a.jpg") and by_index[1]["source"].endswith("b/face.jpeg")  # sorted by path
    assert by_index[0]["status"] == by_index[1]["status"] == "ok"
    assert by_index[2]["status"] == "skipped" and "UnidentifiedImageError" in by_index[2]["reason"]
    assert by_index[3]["status"] == "skipped" and "NoFaceError" in by_index[3]["reason"]
    assert "skipping" in caplog.text
    for i in (0, 1):
        img = np.asarray(Image.open(stage / "albedo" / f"{i:06d}.png"))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.max() > 0
        assert (stage / "shading" / f"{i:06d}.png").exists()
        mask = np.asarray(Image.open(stage / "mask" / f"{i:06d}.png"))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= set(T.MASK_PNG_VALUES.values())
        assert (mask == T.MASK_PNG_VALUES["seen_valid"]).any()
        assert set(by_index[i]) >= {"shape", "expression", "pose", "camera", "sh", "landmark_error"}
    assert not (stage / "albedo" / "000002.png").exists()
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["ok"] == 2 and summary["skipped"] == 2

    # a rerun redoes nothing ...
    def no_fit(*args, **kwargs):
        raise AssertionError("fit_faces called on a finished run")

    monkeypatch.setattr(T, "fit_faces", no_fit)
    assert run_cli.main(["extract", "--config", cfg, "--out", str(out)]) == 0
    # ... except a face whose albedo went missing
    monkeypatch.undo()
    calls: list[int] = []
    real = T.fit_faces

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(T, "fit_faces", counting)
    (stage / "albedo" / "000001.png").unlink()
    assert run_cli.main(["extract", "--config", cfg, "--out", str(out)]) == 0
    assert calls == [1] and (stage / "albedo" / "000001.png").exists()


def test_cli_synthetic_source_reports_accuracy(tmp_path):
    synthetic = {"count": 1, "seed": 3, "resolution": 128, "landmarks": "truth"}
    cfg = _write_config(tmp_path, {"synthetic": synthetic, **TINY})
    assert run_cli.main(["extract", "--config", cfg, "--out", str(tmp_path / "run")]) == 0
    stage = tmp_path / "run" / "extract"
    (record,) = [json.loads(line) for line in (stage / "fits.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["source"] == "synthetic:3:0"
    assert {"landmark_nme", "shape_rms_mm", "raw", "delit", "face_psnr"} <= set(record["truth"])
    assert "truth_mean" in json.loads((stage / "summary.json").read_text())


@pytest.mark.parametrize(
    ("extract", "message"),
    [
        ({"images": "MISSING"}, "folder not found"),
        ({"images": "EMPTY"}, "no images"),
        ({}, "exactly one of"),
        ({"images": "EMPTY", "synthetic": {"count": 1}}, "exactly one of"),
        ({"synthetic": {"count": 0}}, "count: expected at least 1"),
        ({"images": "EMPTY", "colour": 1}, "unknown keys"),
        ({"images": "EMPTY", "landmarks": "ibug"}, "landmarks: expected one of localiser, dlib"),
        ({"images": "EMPTY", "localiser": "MISSING"}, "missing: bundle not found"),
    ],
)
def test_cli_clear_errors(tmp_path, caplog, extract, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    paths = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty")}
    extract = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in extract.items()}
    cfg = _write_config(tmp_path, extract)
    assert run_cli.main(["extract", "--config", cfg, "--out", str(tmp_path / "run")]) == 2
    assert message in caplog.text


def test_cli_flags_a_greyscale_photo_and_keeps_it_out_of_the_training_set(tmp_path, fm):
    ds = SyntheticFaces(SyntheticConfig(image_size=192, albedo_size=64, seed=5), face_model=FaceModel(fm.arrays))
    photos = tmp_path / "photos"
    photos.mkdir()
    batch = ds.batch([0])
    rgb = T.to_uint8(batch.image_srgb[0].permute(1, 2, 0).numpy())
    Image.fromarray(rgb).save(photos / "a_colour.png")
    Image.fromarray(rgb).convert("L").convert("RGB").save(photos / "b_grey.png")
    cfg = _write_config(tmp_path, {"images": str(photos), "detector": "hog", **TINY})
    out = tmp_path / "run"
    assert run_cli.main(["extract", "--config", cfg, "--out", str(out)]) == 0
    stage = out / "extract"
    records = {r["index"]: r for r in map(json.loads, (stage / "fits.jsonl").read_text().splitlines())}
    assert records[0]["status"] == records[1]["status"] == "ok"
    assert records[0]["flags"] == [] and records[1]["flags"] == ["greyscale"]
    assert (stage / "albedo" / "000000.png").exists() and not (stage / "albedo" / "000001.png").exists()
    assert (stage / T.FLAGGED_DIR / "albedo" / "000001.png").exists()  # written, but outside the training folder
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["ok"] == 2 and summary["flagged"] == 1 and summary["training_maps"] == 1
    assert summary["flagged_reasons"]["greyscale"] == 1
    # the finished run resumes without redoing the flagged face
    assert run_cli.main(["extract", "--config", cfg, "--out", str(out)]) == 0
    assert len((stage / "fits.jsonl").read_text().splitlines()) == 2


# -- where the landmarks come from -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def localiser() -> T.LocaliserLandmarks:
    return T.LocaliserLandmarks()  # the embedded bundle's


def _nme(points: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))


def test_localiser_landmarks_beat_dlibs_on_renders_and_agree_with_them_on_a_photo(fm, localiser):
    from models.landmarks import landmarks68

    ds = SyntheticFaces(SyntheticConfig(image_size=192, albedo_size=64, seed=5), face_model=FaceModel(fm.arrays))
    batch = ds.batch([0, 1, 2, 3])
    ours, dlib = [], []
    for i in range(4):
        image = T.to_uint8(batch.image_srgb[i].permute(1, 2, 0).numpy())
        truth = batch.landmarks_px[i].double().numpy()
        points, detector = localiser(image, "hog")
        assert points.shape == (68, 2) and detector == "hog+localiser"
        ours.append(_nme(points, truth))
        dlib.append(_nme(landmarks68(image, detector="hog"), truth))
    # measured: 0.039–0.056 vs dlib's 68-point model 0.061–0.136 (the model's own landmark definition)
    assert max(ours) < 0.07 and np.mean(ours) < 0.8 * np.mean(dlib)
    photo = np.asarray(Image.open(PHOTOS / "cc0-interfaces-001.jpg").convert("RGB"))
    assert _nme(localiser(photo)[0], landmarks68(photo)) < 0.1  # measured 0.066: a real, frontal face
    with pytest.raises(ValueError, match="no face"):
        localiser(np.full((96, 96, 3), 128, np.uint8))


def test_the_fill_prior_is_a_face_at_its_texels(fm):
    """The extract stage's fill prior (the mean of the synthetic source's true maps) has brows darker than the
    forehead and lips redder than the cheeks, where the layout has them; a negative count is refused."""
    prior = T.mean_albedo(64, maps=32)
    assert prior.shape == (64, 64, 3) and np.all(np.isfinite(prior)) and prior.min() >= 0 and prior.max() <= 1
    regions = uv_texture.uv_regions(fm.arrays, 64)
    luma = prior @ uv_texture.LUMA
    assert np.percentile(luma[regions["brows"]], 20) < 0.75 * np.median(luma[regions["forehead"]])  # (band > brow)
    red = np.log(prior[..., 0] / prior[..., 1])
    assert np.median(red[regions["lips"]]) > np.median(red[regions["cheeks"]]) + 0.1


def test_cli_refuses_a_negative_fill_prior(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    cfg = _write_config(tmp_path, {"images": str(tmp_path / "empty"), "fill_prior": -1})
    assert run_cli.main(["extract", "--config", cfg, "--out", str(tmp_path / "run")]) == 2
    assert "fill_prior" in caplog.text
