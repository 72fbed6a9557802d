"""``training.export --replace-generator``: a bundle copy with a new AlbedoGAN, served end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from facecore.bundle import load_bundle
from training.albedo import AlbedoTrainConfig, train
from training.checkpoint import latest_checkpoint
from training.export import main as export_main
from training.weights import load_checkpoint_generator

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "tests" / "fixtures" / "photos"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def albedo_run(tmp_path_factory) -> Path:
    """A 32² AlbedoGAN with a learned mean image, 4 steps on procedural albedos."""
    cfg = {
        "resolution": 32, "batch": 8, "steps": 4, "seed": 0, "progress": False, "sample_every": 0,
        "checkpoint_every": 4, "mean_w_samples": 64, "metric": {"every": 0},
        "G": {"z_dim": 32, "w_dim": 32, "mapping": {"num_layers": 2},
              "synthesis": {"channel_base": 256, "channel_max": 32, "mean_image": True}},
        "D": {"channel_base": 256, "channel_max": 32},
        "data": {"kind": "synthetic", "num_samples": 32, "holdout": 0, "seed": 0},
    }  # fmt: skip
    out = tmp_path_factory.mktemp("albedo_run")
    assert train(AlbedoTrainConfig.from_dict(cfg), out).done
    return out


def test_replaced_generator_is_served_and_the_old_latent_output_is_cut(albedo_run, tiny_bundle, tmp_path):
    out = tmp_path / "bundle"
    assert export_main(["--replace-generator", str(albedo_run), "--bundle", str(tiny_bundle), "--out", str(out),
                        "--version", "9.9.9"]) == 0  # fmt: skip
    old, new = load_bundle(tiny_bundle), load_bundle(out)
    m = new.manifest
    assert m.version == "9.9.9" and m.resolutions.albedo == 32 and m.codes.z_dim == 32 and m.codes.w_dim == 32
    assert "ws" in old.manifest.graphs["encoder"].outputs and "ws" not in m.graphs["encoder"].outputs
    assert m.graphs["albedo"].weights_dtype == old.manifest.graphs["albedo"].weights_dtype  # stored like the source

    # the encoder's other outputs are what they were
    size = old.manifest.graphs["encoder"].inputs["image"].shape[-1]
    image = np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)
    runs = {}
    for name, bundle in (("old", old), ("new", new)):
        s = ort.InferenceSession(str(bundle.root / "encoder.onnx"), providers=["CPUExecutionProvider"])
        runs[name] = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": image}), strict=True))
    assert set(runs["old"]) - set(runs["new"]) == {"ws"}
    for key, value in runs["new"].items():
        np.testing.assert_array_equal(value, runs["old"][key])

    # the served albedo is the run's G_ema at the bundle's truncation centre
    G = load_checkpoint_generator(latest_checkpoint(albedo_run / "checkpoints"))
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = G(z, noise_mode="const").numpy()
    mapping = ort.InferenceSession(str(out / "mapping.onnx"), providers=["CPUExecutionProvider"])
    albedo = ort.InferenceSession(str(out / "albedo.onnx"), providers=["CPUExecutionProvider"])
    got = albedo.run(None, {"ws": mapping.run(None, {"z": z.numpy()})[0]})[0]
    assert np.abs(got - want).max() < 2e-2 * max(1.0, np.abs(want).max())

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(bundle=out, results_dir=tmp_path / "results", max_wait_ms=2.0)
    with TestClient(create_app(settings)) as client:
        r = client.post("/generate", json={"seed": 3, "texture_size": 256, "outputs": ["albedo"]})
        assert r.status_code == 200, r.text
        assert r.json()["texture"] == {"size": 256, "native_resolution": 32}
        png = client.get(r.json()["links"]["albedo.png"]).content
        assert Image.open(io.BytesIO(png)).size == (256, 256)
        photo = sorted(PHOTO.glob("*.jpg"))[0].read_bytes()
        r = client.post("/reconstruct", files={"image": ("p.jpg", photo, "image/jpeg")},
                        data={"albedo": "generated"})  # fmt: skip
        assert r.status_code == 422 and "ws" in r.json()["detail"]


def test_a_replaced_generator_drops_the_old_ones_mean_calibration(albedo_run, tiny_bundle, tmp_path):
    from training.albedo_mean import calibrate
    from training.export import replace_generator

    data = {"kind": "synthetic", "num_samples": 32, "holdout": 0, "seed": 0}  # the run's own training maps
    swapped = replace_generator(tiny_bundle, albedo_run, tmp_path / "a")
    calibrated = calibrate(swapped, tmp_path / "b", data, samples=32)
    assert load_bundle(calibrated).manifest.albedo_mean["training_maps"] == 32
    again = load_bundle(replace_generator(calibrated, albedo_run, tmp_path / "c")).manifest
    assert getattr(again, "albedo_mean", None) is None  # it described the generator that was replaced


def test_a_latent_graph_fitted_to_the_new_generator_brings_back_generated_albedo(
    albedo_run, tiny_bundle, tmp_path, monkeypatch
):
    from facecore.texture import box_downsample
    from service import pipeline
    from service.app import create_app
    from service.settings import Settings
    from training.albedo_latent import add_latent_graph
    from training.albedo_mean import calibrate
    from training.export import replace_generator

    swapped = replace_generator(tiny_bundle, albedo_run, tmp_path / "a")
    fitted = add_latent_graph(swapped, tmp_path / "b", count=16, size=8, seed=3)
    m = load_bundle(fitted).manifest
    assert m.graphs["albedo_latent"].inputs["albedo"].shape == [None, 3, 8, 8]
    assert m.graphs["albedo_latent"].outputs["ws"].shape == [None, m.codes.num_ws, 32]
    report = m.albedo_latent
    assert report["pairs"] + report["failed"] == 16 and report["validation_pairs"] >= 1
    assert report["penalty"] in (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0) and np.isfinite(report["psnr_db"])

    photo = sorted(PHOTO.glob("*.jpg"))[0].read_bytes()
    # the generator's map as the latent draws it (the photo's skin tone on top: tests/facecore, test_embedded_bundle)
    monkeypatch.setattr(pipeline, "TONE_MATCH", False)
    settings = Settings(bundle=fitted, results_dir=tmp_path / "results", max_wait_ms=2.0, min_texture_size=32)
    with TestClient(create_app(settings)) as client:
        maps = {}
        for mode, size in (("photo", 32), ("generated", 32), ("generated", 256)):
            r = client.post("/reconstruct", files={"image": ("p.jpg", photo, "image/jpeg")},
                            data={"albedo": mode, "texture_size": str(size), "outputs": "albedo"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["texture"]["native_resolution"] == 32
            png = client.get(r.json()["links"]["albedo.png"]).content
            maps[mode, size] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0
    # generated = the generator at the latent graph's w for the photo's own albedo (unwrapped at the generator's
    # 32², averaged down to 8²), whatever texture size was asked
    latent = ort.InferenceSession(str(fitted / "albedo_latent.onnx"), providers=["CPUExecutionProvider"])
    albedo = ort.InferenceSession(str(fitted / "albedo.onnx"), providers=["CPUExecutionProvider"])
    ws = latent.run(None, {"albedo": box_downsample(maps["photo", 32], 8).transpose(2, 0, 1)[None]})[0]
    want = np.clip((albedo.run(None, {"ws": ws})[0][0].transpose(1, 2, 0) + 1) / 2, 0, 1)
    for size in (32, 256):
        assert np.abs(box_downsample(maps["generated", size], 32) - want).mean() < 0.02, size
    mean_map = np.clip((albedo.run(None, {"ws": np.repeat(load_bundle(fitted).w_avg[None, None], ws.shape[1], 1)})[0][0]
                        .transpose(1, 2, 0) + 1) / 2, 0, 1)  # fmt: skip
    assert np.abs(want - mean_map).mean() > 1e-3  # the photo moved the latent off the mean

    # edits that change what a latent draws drop the graph: generated is refused again
    data = {"kind": "synthetic", "num_samples": 32, "holdout": 0, "seed": 0}
    edits = (calibrate(fitted, tmp_path / "c", data, samples=32), replace_generator(fitted, albedo_run, tmp_path / "d"))
    for edited in edits:
        bundle = load_bundle(edited)
        assert "albedo_latent" not in bundle.manifest.graphs and not (edited / "albedo_latent.onnx").exists()
        assert getattr(bundle.manifest, "albedo_latent", None) is None and not bundle.generated_reconstruct


def test_ridge_recovers_a_linear_map_in_both_forms():
    from training.albedo_latent import ridge

    rng = np.random.default_rng(0)
    for n, d in ((40, 120), (300, 12)):  # fewer samples than features (dual form), then more (primal form)
        x = rng.random((n, d))
        A, b = rng.standard_normal((d, 5)), rng.standard_normal(5)
        t = x @ A + b
        got_A, got_b = ridge(x, t, 1e-8)
        assert np.abs(x @ got_A + got_b - t).max() < 1e-5
        shrunk, _ = ridge(x, t, 1e6)  # a huge penalty: the mean
        assert np.abs(shrunk).max() < 1e-2 * np.abs(got_A).max()


def test_an_albedo_graph_exported_again_draws_the_same_maps_with_less(albedo_run, tiny_bundle, tmp_path, monkeypatch):
    """training.export --re-export-albedo: a bundle whose generator draws nothing at 32² (the top block's torgb
    zeroed, as a grown and untrained block is) but whose graph was exported with that block's convolutions gets a
    graph without them and the same maps; a run that is not the bundle's is refused. --matrix-upsampling makes the
    same graph from the bundle alone (and, for a generator that draws at its top, replaces its skip path's last
    upsampling)."""
    import shutil

    import onnx
    from safetensors.torch import load_file, save_file

    from models.stylegan2.generator import SynthesisNetwork
    from training.export import ExportError, replace_generator

    grown = tmp_path / "grown"
    shutil.copytree(albedo_run, grown)
    ckpt = latest_checkpoint(grown / "checkpoints")
    state = load_file(str(ckpt / "G_ema.safetensors"))
    for key in ("synthesis.b32.torgb.weight", "synthesis.b32.torgb.bias"):
        state[key] = torch.zeros_like(state[key])
    save_file(state, str(ckpt / "G_ema.safetensors"))
    with monkeypatch.context() as m:  # exported as before draw_until: every block computed
        m.setattr(SynthesisNetwork, "last_drawing_resolution", lambda self: self.img_resolution)
        full = replace_generator(tiny_bundle, grown, tmp_path / "full")
    out = tmp_path / "pruned"
    assert export_main(["--re-export-albedo", str(grown), "--bundle", str(full), "--out", str(out),
                        "--version", "9.9.8"]) == 0  # fmt: skip

    def convs(bundle: Path) -> int:
        graph = onnx.load(str(bundle / "albedo.onnx")).graph
        return sum(n.op_type in ("Conv", "ConvTranspose") for n in graph.node)

    # the 32² block: its up, FIR, conv1, torgb; and the image's FIR upsampling (two matrix products now)
    assert convs(out) == convs(full) - 5, (convs(out), convs(full))
    mapping = ort.InferenceSession(str(full / "mapping.onnx"), providers=["CPUExecutionProvider"])
    ws = mapping.run(None, {"z": np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)})[0]
    maps = [ort.InferenceSession(str(b / "albedo.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ws": ws})[0]
            for b in (full, out)]  # fmt: skip
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-5)
    assert load_bundle(out).manifest.version == "9.9.8"
    with pytest.raises(ExportError, match="differs"):  # the untouched run draws at 32²: not this bundle's generator
        export_main(["--re-export-albedo", str(albedo_run), "--bundle", str(full), "--out", str(tmp_path / "x")])
    # without the run: the graph edited (--matrix-upsampling) to the same graph and maps as the re-export
    edited = tmp_path / "edited"
    assert export_main(["--matrix-upsampling", "--bundle", str(full), "--out", str(edited)]) == 0
    assert convs(edited) == convs(out)
    ops = [n.op_type for n in onnx.load(str(edited / "albedo.onnx")).graph.node]
    assert ops.count("MatMul") >= 2 and "ConvTranspose" in ops  # the 16² block's up-convolution stays
    got = ort.InferenceSession(str(edited / "albedo.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ws": ws})
    np.testing.assert_allclose(got[0], maps[0], atol=1e-5)
    with pytest.raises(ExportError, match="already a matrix product"):  # once is enough
        export_main(["--matrix-upsampling", "--bundle", str(edited), "--out", str(tmp_path / "twice")])
    # a generator whose top block draws: the upsampling of its skip path becomes the products, the maps the same
    drawing = tmp_path / "drawing"
    assert export_main(["--matrix-upsampling", "--bundle", str(tiny_bundle), "--out", str(drawing)]) == 0
    assert convs(drawing) == convs(tiny_bundle) - 1
    ws = ort.InferenceSession(str(tiny_bundle / "mapping.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"z": np.random.default_rng(3).standard_normal((3, 32)).astype(np.float32)}
    )[0]
    maps = [ort.InferenceSession(str(b / "albedo.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ws": ws})[0]
            for b in (tiny_bundle, drawing)]  # fmt: skip
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-5)
