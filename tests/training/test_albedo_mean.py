"""``training.albedo_mean``: a bundle's generator shifted so that its mean map is its training maps' mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facecore.bundle import load_bundle
from models.stylegan2 import Generator
from service.engine.sessions import open_sessions
from training.albedo_mean import calibrate, generated_mean, main, training_mean
from training.export import export_bundle

DEFAULT_FACE_MODEL = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="module")
def mean_image_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    G = Generator(32, 0, 32, 32, 3, {"num_layers": 2}, {"channel_base": 256, "channel_max": 32, "mean_image": True})
    with torch.no_grad():
        G.synthesis.img_bias.fill_(-0.4)  # far from the maps below: a generator whose mean has drifted
    G.mean_w(n_samples=256)
    out = tmp_path_factory.mktemp("bundle") / "mean"
    return export_bundle(out, face_model_path=DEFAULT_FACE_MODEL, generator=G, name="mean-test", version="0.0.1",
                         licence="test", training={"note": "random initialisation"})  # fmt: skip


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> Path:
    """40 maps: a horizontal colour ramp times a random brightness per map."""
    folder = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 200, 32)[None, :, None] * np.array([1.0, 0.7, 0.5])
    for i in range(40):
        img = np.clip(ramp * rng.uniform(0.8, 1.2), 0, 255).repeat(32, 0).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def outputs(bundle: Path, seed: int, n: int = 16) -> np.ndarray:
    b = load_bundle(bundle)
    s = open_sessions(b, ["CPUExecutionProvider"], 0)
    z = np.random.default_rng(seed).standard_normal((n, b.manifest.codes.z_dim)).astype(np.float32)
    return s["albedo"].run({"ws": s["mapping"].run({"z": z})["ws"]})["albedo"].astype(np.float64)


def test_the_calibrated_generator_has_the_training_maps_mean(mean_image_bundle, maps, tmp_path):
    data = {"kind": "folder", "path": str(maps), "holdout": 8, "seed": 0}
    out = calibrate(mean_image_bundle, tmp_path / "cal", data, samples=2048, version="0.0.2")
    manifest = load_bundle(out).manifest
    assert manifest.version == "0.0.2" and manifest.metrics == {}
    assert manifest.albedo_mean["training_maps"] == 32  # the 8 held-out maps are not averaged
    # the target: the 32 training maps' mean (in [-1, 1]); measured on latents the calibration never drew
    target, _ = training_mean(data, 32, 256)
    before = np.abs(generated_mean(load_bundle(mean_image_bundle), 2048, seed=7) - target).mean()
    after = np.abs(generated_mean(load_bundle(out), 2048, seed=7) - target).mean()
    assert before > 0.3 and after < 0.1 * before, (before, after)
    # only the mean moved: every map moved by the same tensor (how maps differ from one another is untouched)
    moved = outputs(out, 3) - outputs(mean_image_bundle, 3)
    assert np.abs(moved - moved[0]).max() < 5e-3  # float16 weights: the bias is stored rounded


def test_a_generator_without_a_mean_image_is_refused(tiny_bundle, maps, tmp_path):
    folder = maps
    with pytest.raises(ValueError, match="no learned mean image"):
        calibrate(tiny_bundle, tmp_path / "x", {"kind": "folder", "path": str(folder), "holdout": 8}, samples=8)
    with pytest.raises(SystemExit, match="no learned mean image"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"albedo:\n  data: {{kind: folder, path: {folder}, holdout: 8}}\n")
        main(["--bundle", str(tiny_bundle), "--out", str(tmp_path / "y"), "--samples", "8", "--config", str(cfg)])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
