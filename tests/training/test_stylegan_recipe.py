"""The paper's StyleGAN2 data recipe: attributes from landmarks, edit directions, sharded dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facecore import geometry as geo
from models.stylegan2 import Generator
from training.data.stylegan_recipe import (
    RecipeConfig,
    ShardDataset,
    build_dataset,
    fit_directions,
    landmark_attributes,
)

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="module")
def model():
    return geo.FaceModelArrays.load(DEFAULT)


def project(model, yaw_deg=0.0, pitch_deg=0.0, expression=None, size=224):
    pose = np.zeros((model.n_joints, 3))
    pose[0] = [np.radians(pitch_deg), np.radians(yaw_deg), 0.0]
    v = geo.decode_vertices(model, None, None if expression is None else expression[None], pose[None])
    lmk = geo.landmarks_3d(model, v)[0]
    return np.stack([size / 2 + 900 * lmk[:, 0], size / 2 - 900 * lmk[:, 1]], 1)  # image y down


def test_paper_defaults():
    cfg = RecipeConfig()
    assert (cfg.n_samples, cfg.n_identities, cfg.psi, cfg.truncation_samples, cfg.images_per_identity) == (
        100_000, 30_000, 0.7, 4096, 11,
    )  # fmt: skip
    with pytest.raises(ValueError, match="edits"):
        RecipeConfig(images_per_identity=5)
    with pytest.raises(ValueError, match="unknown keys"):
        RecipeConfig.from_dict({"n_sample": 3})


@pytest.mark.parametrize(("yaw", "pitch"), [(0, 0), (25, 0), (-30, 0), (0, 12), (20, -10)])
def test_landmark_attributes_recover_pose(model, yaw, pitch):
    got = landmark_attributes(project(model, yaw, pitch), model)
    assert abs(got[0] - yaw) < 3 and abs(got[1] - pitch) < 3


def test_expression_attributes_move_the_right_way(model):
    rest = landmark_attributes(project(model), model)
    smile = landmark_attributes(
        project(model, expression=model.expression_vector({"mouthSmileLeft": 1, "mouthSmileRight": 1})), model
    )
    opened = landmark_attributes(project(model, expression=model.expression_vector({"jawOpen": 1})), model)
    assert smile[2] > rest[2] + 0.02
    assert opened[3] > rest[3] + 0.1


def test_fit_directions_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    ws = rng.normal(size=(500, 16))
    true = rng.normal(size=16)
    attr = ws @ true + 0.01 * rng.normal(size=500)
    d = fit_directions(ws, attr[:, None], ridge=1e-4)[0]
    cos = d @ true / np.linalg.norm(d) / np.linalg.norm(true)
    assert cos > 0.999
    assert abs((ws[0] + 2.0 * d) @ true - ws[0] @ true - 2.0) < 0.01  # a step of 2 changes the attribute by 2


def test_build_dataset_with_a_tiny_generator(model, tmp_path):
    torch.manual_seed(0)
    G = Generator(16, 0, 16, 32, 3, {"num_layers": 2}, {"channel_base": 256, "channel_max": 16})

    def fake_landmarks(img):
        # A stand-in detector: the "yaw" of the face is read off the image's mean red (a smooth function of w).
        yaw = 120 * (img[..., 0].mean() / 255 - 0.5)
        return project(model, yaw)

    cfg = RecipeConfig(n_samples=20, n_identities=5, truncation_samples=64, direction_samples=64,
                       image_size=32, shard_size=22, batch_size=16)  # fmt: skip
    out = build_dataset(G, tmp_path / "recipe", cfg, model, fake_landmarks)
    ds = ShardDataset(out)
    assert len(ds) == 5 * 11
    item = ds[12]
    assert item["image"].shape == (32, 32, 3) and item["landmarks"].shape == (68, 2)
    assert item["identity"] == 1 and item["edit"] == 1 and item["w"].shape == (16,)
    ids = [int(ds[i]["identity"]) for i in range(len(ds))]
    assert ids == sorted(ids) and set(ids) == set(range(5))
    # the yaw direction moves the measured yaw
    yaw_edit = [fake_landmarks(ds[i]["image"]) for i in (0, 4)]  # edit 0 (identity) and edit 4 (+30°)
    yaws = [landmark_attributes(p, model)[0] for p in yaw_edit]
    assert yaws[1] - yaws[0] > 5
    # resuming does not redo shards; a changed config is refused
    mtime = (out / "shards" / "shard_00000.npz").stat().st_mtime
    build_dataset(G, out, cfg, model, fake_landmarks)
    assert (out / "shards" / "shard_00000.npz").stat().st_mtime == mtime
    with pytest.raises(ValueError, match="different configuration"):
        build_dataset(G, out, RecipeConfig(**{**cfg.__dict__, "psi": 0.5}), model, fake_landmarks)


def test_recipe_stage_builds_from_the_pickle_and_exports_identity_images(model, tmp_path, monkeypatch):
    import models.landmarks
    import models.stylegan2.nvlabs_load
    from training.data import stylegan_recipe

    torch.manual_seed(0)
    G = Generator(16, 0, 16, 32, 3, {"num_layers": 2}, {"channel_base": 256, "channel_max": 16})
    pkl = tmp_path / "ffhq.pkl"
    pkl.write_bytes(b"stand-in")
    seen = {}

    def fake_load(path, *, which, device):
        seen.update(path=Path(path), which=which, device=device)
        return G, None

    monkeypatch.setattr(models.stylegan2.nvlabs_load, "load_stylegan2_pickle", fake_load)
    yaw_from_red = lambda img: project(model, 120 * (img[..., 0].mean() / 255 - 0.5))  # noqa: E731
    monkeypatch.setattr(models.landmarks, "landmarks68", yaw_from_red)
    recipe = {"stylegan2": str(pkl), "n_samples": 8, "n_identities": 3, "truncation_samples": 32,
              "direction_samples": 32, "image_size": 32, "shard_size": 22, "device": "cpu"}  # fmt: skip
    stylegan_recipe.run({"recipe": dict(recipe)}, tmp_path / "recipe")
    assert seen == {"path": pkl, "which": "G_ema", "device": "cpu"}
    assert len(ShardDataset(tmp_path / "recipe")) == 3 * 11
    images = sorted((tmp_path / "recipe" / "images").glob("*.png"))
    assert [p.name for p in images] == ["000000.png", "000001.png", "000002.png"]
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(images[1])), ShardDataset(tmp_path / "recipe")[11]["image"])
    stylegan_recipe.run({}, tmp_path / "nothing")  # no recipe section: nothing to do
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(ValueError, match="recipe.stylegan2"):
        stylegan_recipe.run({"recipe": {"n_identities": 3}}, tmp_path / "x")
