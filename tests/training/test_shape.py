"""The shape model and its step: data sources, loss behaviour, the albedo head, the NoW-style metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facecore import geometry as geo
from models.albedo_head import AlbedoHead, AlbedoHeadConfig, w_statistics
from models.face.model import FaceModel
from models.stylegan2 import Generator
from training.alternate import DistInfo, Trainer
from training.config import load_config
from training.data.groups import PhotoGroups, RecipeGroups, SyntheticGroups, chip_theta, pixels_to_ndc
from training.evaluation import MeshDistance, closest_point_on_triangle, now_scan_to_mesh, umeyama
from training.shape import NOW_LANDMARKS, DataSection, ShapeTrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
PHOTOS = REPO / "tests" / "fixtures" / "photos"  # CC0, shipped in the repository


def tiny_config(section: str = "shape", *overrides: str) -> ShapeTrainConfig:
    file = CONFIGS / ("shape_tiny.yaml" if section == "shape" else "alternate_tiny.yaml")
    cfg = load_config(file, overrides)
    if section == "alternate":
        from training.alternate import config_from

        return config_from(cfg)
    return ShapeTrainConfig.from_dict(cfg["shape"], "shape")


def make_trainer(tmp_path: Path, cfg: ShapeTrainConfig, stage: str = "shape") -> Trainer:
    torch.set_num_threads(1)
    return Trainer(cfg, tmp_path, DistInfo(0, 1, torch.device("cpu"), False), stage)


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.from_file()


# ------------------------------------------------------------------------------------------------ configuration
def test_config_defaults_validation_and_roundtrip():
    cfg = tiny_config("shape")
    assert cfg.data.kind == "synthetic" and cfg.region == "head"
    assert ShapeTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        ShapeTrainConfig.from_dict({"model": {"encoder": {"dept": 18}}})
    with pytest.raises(ValueError, match="unknown terms"):
        ShapeTrainConfig.from_dict({"weights": {"photometric": 1.0}})
    with pytest.raises(ValueError, match="held out"):
        ShapeTrainConfig.from_dict({"data": {"seed": 5}, "eval": {"seed": 5}})
    with pytest.raises(ValueError, match="data.path"):
        ShapeTrainConfig.from_dict({"data": {"kind": "photos"}})
    with pytest.raises(ValueError, match="detail_dim"):
        ShapeTrainConfig.from_dict({"model": {"displacement": {"detail_dim": 8}}})
    # the alternate section is merged over the shape section
    alt = tiny_config("alternate")
    assert (alt.schedule.shape_steps, alt.schedule.albedo_steps, alt.schedule.cycles) == (3, 2, 2)
    assert alt.model == cfg.model and alt.albedo_step.optim.lr == 0.001


# ------------------------------------------------------------------------------------------------ albedo head
def test_albedo_head_starts_at_the_mean_w_and_roundtrips():
    torch.manual_seed(0)
    G = Generator(16, 0, 8, 8, 3, {"num_layers": 2}, {"channel_base": 64, "channel_max": 16})
    head = AlbedoHead.from_generator(G, in_features=12, n_samples=256, per_layer=True, hidden=16)
    mean, std = w_statistics(G, 256)
    ws = head(torch.randn(3, 12))
    assert ws.shape == (3, G.num_ws, 8)
    torch.testing.assert_close(ws, mean.expand(3, G.num_ws, 8))
    assert bool((std > 0).all())
    torch.testing.assert_close(head.normalise(ws), torch.zeros_like(ws))
    cfg = AlbedoHeadConfig.from_dict(json.loads(json.dumps(head.config.to_dict())))
    assert cfg == head.config
    with pytest.raises(ValueError, match="not an albedo_head"):
        AlbedoHeadConfig.from_dict({**head.config.to_dict(), "format_version": 99})
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(2, 5))


# ------------------------------------------------------------------------------------------------ data
def test_synthetic_groups_share_identity_and_albedo(face_model):
    src = SyntheticGroups(DataSection(groups=2, views=3), 32, 48, face_model)
    b = src.batch(step=1)
    assert b.image.shape == (6, 3, 32, 32) and b.chip_theta.shape == (6, 2, 3)
    assert b.identity.tolist() == [2, 2, 2, 3, 3, 3]
    shape, albedo, pose = b.gt.codes.shape, b.gt.albedo_uv, b.gt.codes.pose
    for g in (0, 3):
        torch.testing.assert_close(shape[g + 1], shape[g], rtol=0, atol=0)
        torch.testing.assert_close(albedo[g + 2], albedo[g], rtol=0, atol=0)
        assert not torch.equal(pose[g + 1], pose[g])
    assert not torch.equal(shape[0], shape[3])
    # deterministic in (seed, step, rank) and sharded across ranks
    torch.testing.assert_close(src.batch(step=1).image, b.image, rtol=0, atol=0)
    assert src.batch(step=0, rank=1, world_size=2).identity.tolist() == [1, 1, 1]


def test_alignment_jitter_moves_the_crop_not_the_truth(face_model):
    """With data.align_jitter the crops are cut from noisy anchors (as the service cuts them from detected points):
    the face sits off the template by about the jitter, reproducibly, and the returned landmarks are still the
    true ones in the crop that was cut."""
    from facecore.detect import ALIGN_TEMPLATE, alignment_anchors

    exact = SyntheticGroups(DataSection(groups=4, views=2), 64, 48, face_model).batch(0)
    noisy_src = SyntheticGroups(DataSection(groups=4, views=2, align_jitter=0.1), 64, 48, face_model)
    noisy = noisy_src.batch(0)
    torch.testing.assert_close(noisy_src.batch(0).image, noisy.image, rtol=0, atol=0)  # seeded per sample
    template = ALIGN_TEMPLATE * 64 - 0.5
    eyes = np.linalg.norm(template[1] - template[0])

    def anchors(b) -> np.ndarray:
        return np.stack([alignment_anchors(lm) for lm in b.landmarks_px.double().numpy()])

    # the same faces (same stream), cut around noisy anchors: each anchor moves by ~the jitter in the crop
    moved = np.linalg.norm(anchors(noisy) - anchors(exact), axis=-1) / eyes
    assert 0.04 < moved.mean() < 0.2, moved.mean()  # √(π/2)·0.1 ≈ 0.125 per anchor, less after the similarity fit
    assert moved.min(1).max() > 0.01  # every crop moved
    torch.testing.assert_close(noisy.gt.codes.pose, exact.gt.codes.pose, rtol=0, atol=0)  # only the crop differs
    with pytest.raises(ValueError, match="align_jitter"):
        DataSection(align_jitter=0.8)


def test_chips_cut_the_face(face_model):
    """The chip matrices put the landmarks where dlib's chip template wants them, in normalised coordinates."""
    src = SyntheticGroups(DataSection(groups=1, views=2), 64, 150, face_model)
    b = src.batch(0)
    theta = torch.from_numpy(chip_theta(b.landmarks_px.numpy(), 64, 150))
    # chip centre (pixel 74.5) maps to the centre of the face (between the eyes and the mouth)
    centre_img = ((theta[:, :, 2] + 1) * 64 - 1) / 2  # image pixels of normalised chip point (0, 0)
    face_centre = b.landmarks_px[:, [36, 45, 48, 54]].mean(1)
    assert (centre_img - face_centre).norm(dim=-1).max() < 6


def write_recipe(root: Path, w_dim: int = 32, size: int = 64, model_path: Path | None = None) -> Path:
    """Two shards of 3 identities × 3 views (random images, the mean face's landmarks jittered), like the recipe."""
    model = geo.FaceModelArrays.load(model_path or REPO / "models" / "face" / "data" / "anny_head.npz")
    lm = geo.landmarks_3d(model, model.mean[None].astype(np.float64))[0]
    base = np.stack([size / 2 + 250 * lm[:, 0], size / 2 - 250 * lm[:, 1] + 2], 1)
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    ident = 0
    for shard in range(2):
        n = 9
        np.savez(
            root / "shards" / f"shard_{shard:05d}.npz",
            image=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
            landmarks=(base[None] + rng.normal(0, 0.5, (n, 68, 2))).astype(np.float32),
            identity=np.repeat(np.arange(ident, ident + 3), 3),
            w=rng.normal(0, 1, (n, w_dim)).astype(np.float32),
            edit=np.tile(np.arange(3), 3),
        )
        ident += 3
    return root


def test_recipe_groups(tmp_path):
    root = write_recipe(tmp_path / "recipe")
    cfg = DataSection(kind="stylegan2_recipe", path=str(root), groups=2, views=2)
    src = RecipeGroups(cfg, 32, 64, crop_scale=1.0)
    assert len(src.group_items) == 6 and src.w_dim == 32
    seen = []
    for step in range(3):  # one epoch: every identity once, two views each
        b = src.batch(step)
        assert b.image.shape == (4, 3, 32, 32) and b.w.shape == (4, 32)
        ids = b.identity.tolist()
        assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
        seen += ids[::2]
        # aligned like the service's crops: the eyes land on the template
        eyes = b.landmarks_px[:, [36, 45]].mean(1)
        assert bool(((eyes - torch.tensor([15.5, 11.7])).abs() < 3).all())
    assert sorted(seen) == list(range(6))
    torch.testing.assert_close(src.batch(1).image, RecipeGroups(cfg, 32, 64, 1.0).batch(1).image, rtol=0, atol=0)


def test_recipe_shape_step_trains_the_head_on_the_known_w(tmp_path):
    root = write_recipe(tmp_path / "recipe")
    cfg = tiny_config(
        "shape",
        "shape.data.kind=stylegan2_recipe",
        f"shape.data.path={root}",
        "shape.weights.identity=0",
        "shape.weights.perceptual=0",
        "shape.eval.num_samples=0",
    )
    assert cfg.region == "face"
    tr = make_trainer(tmp_path / "run", cfg)
    b = tr.batch(0)
    logs = [tr.shape_step(b)[0] for _ in range(4)]
    assert logs[0]["w_latent"] > 0.5 and logs[-1]["w_latent"] < logs[0]["w_latent"]
    assert "gt_shape" not in logs[0]


def test_photo_groups_detect_once_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    (root / "person_a").mkdir(parents=True)
    shutil.copy(PHOTOS / "cc0-interfaces-001.jpg", root / "person_a" / "1.jpg")
    shutil.copy(PHOTOS / "cc0-interfaces-006.jpg", root / "person_a" / "2.jpg")
    shutil.copy(PHOTOS / "cc0-interfaces-028.jpg", root / "solo.jpg")
    cfg = DataSection(kind="photos", path=str(root), groups=2, views=2, detector="hog")
    cache = tmp_path / "lm.json"
    src = PhotoGroups(cfg, 32, 64, 1.0, cache)
    table = json.loads(cache.read_text())
    assert sorted(table) == ["person_a/1.jpg", "person_a/2.jpg", "solo.jpg"]
    assert src.group_items == [[0, 1], [2]]

    def fail(*_a, **_k):
        raise AssertionError("landmarks must come from the cache")

    monkeypatch.setattr("models.landmarks.landmarks68", fail)
    again = PhotoGroups(cfg, 32, 64, 1.0, cache, detect=False)
    b = again.batch(0)
    assert b.image.shape == (3, 3, 32, 32) and sorted(b.identity.tolist()) == [0, 0, 1]
    assert b.w is None and b.mask is None and b.gt is None


# ------------------------------------------------------------------------------------------------ shape step
def test_shape_steps_lower_the_loss(tmp_path):
    """A few shape steps on one synthetic batch lower the total loss (every term on, identity + perceptual) and
    the photometric term by a third. (The priors start at 0 for the zero-initialised codes and rise as the codes
    move, so the total falls less, by how much depends on the tiny network's path: 0.80–0.88 × in 8 steps.)"""
    tr = make_trainer(tmp_path, tiny_config("shape", "shape.optim.lr=0.001"))
    b = tr.batch(0)
    terms = [tr.shape_step(b)[0] for _ in range(8)]
    totals = [t["total"] for t in terms]
    assert totals[-1] < 0.92 * totals[0], totals
    assert terms[-1]["reconstruction"] < 0.67 * terms[0]["reconstruction"], [t["reconstruction"] for t in terms]
    assert tr.ctx.embedder is not None


def test_landmark_term_moves_landmarks_toward_the_ground_truth(tmp_path):
    zero = [f"shape.weights.{k}=0" for k in tiny_config().weights if k != "landmark"]
    tr = make_trainer(tmp_path, tiny_config("shape", *zero, "shape.weights.landmark=1", "shape.optim.lr=0.001"))
    assert tr.ctx.embedder is None
    b = tr.batch(0)
    target = pixels_to_ndc(b.landmarks_px, 32)

    def error() -> float:  # in training mode (batch statistics), as the step sees the batch
        with torch.no_grad():
            out = tr.model(b.image)
            verts = tr.face_model(out.codes.shape, out.codes.expression, out.codes.pose)
            pred = tr.pipeline.landmarks_ndc(verts, out.codes.camera)
        return float(((pred - target).norm(dim=-1) * b.visibility).sum() / b.visibility.sum())

    before = error()
    for _ in range(8):
        log, _ = tr.shape_step(b)
        assert set(log) >= {"landmark", "total"} and log["total"] == pytest.approx(log["landmark"])
    assert error() < 0.85 * before


# ------------------------------------------------------------------------------------------------ metric
def test_closest_point_on_triangle_matches_a_dense_search():
    g = torch.Generator().manual_seed(0)
    tri = torch.randn(20, 3, 3, generator=g, dtype=torch.float64)
    p = torch.randn(20, 3, generator=g, dtype=torch.float64) * 2
    q = closest_point_on_triangle(p, tri[:, 0], tri[:, 1], tri[:, 2])
    u, v = torch.meshgrid(
        torch.linspace(0, 1, 201, dtype=torch.float64), torch.linspace(0, 1, 201, dtype=torch.float64), indexing="ij"
    )
    keep = (u + v) <= 1
    bary = torch.stack([1 - u[keep] - v[keep], u[keep], v[keep]], -1)  # (N, 3)
    dense = torch.einsum("nk,tkc->tnc", bary, tri)
    d_dense = (dense - p[:, None]).norm(dim=-1).min(1).values
    d = (q - p).norm(dim=-1)
    assert bool((d <= d_dense + 1e-12).all()) and bool((d_dense - d < 5e-3).all())


def test_now_metric_is_zero_for_the_same_face_and_measures_an_offset(face_model):
    fm = face_model
    shape = fm.sample_shape(1, torch.Generator().manual_seed(3))
    verts = fm(shape)[0]
    lm = fm.landmarks(verts[None])[0, list(NOW_LANDMARKS)]
    near = (verts - fm.landmarks(verts[None])[0, 30]).norm(dim=-1) < 0.095
    scan = verts[near]
    dist = MeshDistance(fm.faces, fm.n_verts)
    # a rotated, scaled and shifted copy of the same mesh: the similarity alignment undoes it
    angle = torch.tensor(0.4)
    R = torch.tensor([[torch.cos(angle), 0, torch.sin(angle)], [0, 1, 0], [-torch.sin(angle), 0, torch.cos(angle)]])
    moved = 1.3 * verts @ R.T + torch.tensor([0.1, -0.2, 0.05])
    moved_lm = 1.3 * lm @ R.T + torch.tensor([0.1, -0.2, 0.05])
    d = now_scan_to_mesh(scan, lm, moved, moved_lm, dist, icp_iterations=2)
    assert float(d.max()) < 1e-5
    # a 2 mm bump on one cheek (away from the landmarks) is measured there, and only there
    cheek = fm.landmarks(verts[None])[0, [45, 54]].mean(0) + torch.tensor([0.01, 0.0, 0.0])
    centre = verts[(verts - cheek).norm(dim=-1).argmin()]
    weight = (1 - (verts - centre).norm(dim=-1) / 0.015).clamp_min(0)
    bumped = verts + 0.002 * weight[:, None] * fm.vertex_normals(verts[None])[0]
    d = now_scan_to_mesh(scan, lm, bumped, fm.landmarks(bumped[None])[0, list(NOW_LANDMARKS)], dist, icp_iterations=3)
    assert 0.0015 < float(d.max()) < 0.0021 and float(d.median()) < 0.0002
    s, R2, t = umeyama(lm, moved_lm)
    torch.testing.assert_close(s, torch.tensor(1.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(R2, R, atol=1e-5, rtol=0)


def test_encoder_starts_from_arcface_weights_and_the_prior_mean(tmp_path, face_model):
    from models.encoder import IResNet
    from training.shape import build_shape_model

    torch.manual_seed(1)
    arcface = IResNet(18)
    torch.save(arcface.state_dict(), tmp_path / "arcface.pth")
    cfg = tiny_config("shape", f"shape.model.encoder.arcface_weights={tmp_path / 'arcface.pth'}").model
    G = Generator(16, 0, 8, 8, 3, {"num_layers": 1}, {"channel_base": 64, "channel_max": 16})
    model = build_shape_model(cfg, face_model, G)
    assert all(torch.equal(v, arcface.state_dict()[k]) for k, v in model.encoder.backbone.state_dict().items())
    model.eval()
    out = model(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(out.codes.shape, face_model.shape_prior_mean.expand(2, -1))
    assert out.displacement.abs().max() == 0 and out.ws.shape == (2, G.num_ws, 8)
