"""facecore.identity: dlib's recogniser on 5-point chips (the service's feature path) and the identity head file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecore import detect
from facecore.identity import CHIP_SIZE, DESCRIPTOR_DIM, FEATURES, IdentityHead, get_recogniser

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
needs_models = pytest.mark.skipif(
    importlib.util.find_spec("face_recognition_models") is None, reason="face-recognition-models not installed"
)


def _head(rng: np.random.Generator, d: int = DESCRIPTOR_DIM, k: int = 6) -> IdentityHead:
    return IdentityHead(rng.normal(size=d), rng.uniform(0.5, 2, d), rng.normal(size=(d, k)), rng.normal(size=k))


def test_head_round_trip_and_map(tmp_path):
    rng = np.random.default_rng(0)
    head = _head(rng)
    x = rng.normal(size=(3, DESCRIPTOR_DIM))
    np.testing.assert_allclose(head(x), ((x - head.x_mean) / head.x_std) @ head.weight + head.y_mean)
    loaded = IdentityHead.load(head.save(tmp_path / "head.npz"))
    assert loaded.features == FEATURES and (loaded.n_features, loaded.n_shape) == (DESCRIPTOR_DIM, 6)
    np.testing.assert_allclose(loaded(x), head(x), rtol=1e-5, atol=1e-5)  # stored as float32


def test_head_refuses_malformed_arrays(tmp_path):
    rng = np.random.default_rng(1)
    good = _head(rng)
    with pytest.raises(ValueError, match="y_mean"):
        IdentityHead(good.x_mean, good.x_std, good.weight, good.y_mean[:-1])
    with pytest.raises(ValueError, match="weight"):
        IdentityHead(good.x_mean, good.x_std, np.full_like(good.weight, np.nan), good.y_mean)
    with pytest.raises(ValueError, match="x_std"):
        IdentityHead(good.x_mean, -good.x_std, good.weight, good.y_mean)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz: not an identity head"):
        IdentityHead.load(tmp_path / "bad.npz")


@needs_models
def test_recogniser_tells_people_apart_and_is_stable_under_rescaling():
    recogniser = get_recogniser()
    desc, rescaled = [], []
    for name in ("001", "006", "013"):  # frontal fixtures (002, strongly pitched, moves 0.57 under this rescale)
        image = Image.open(PHOTOS / f"cc0-interfaces-{name}.jpg").convert("RGB")
        for target, im in ((desc, image), (rescaled, image.resize((image.width * 9 // 10, image.height * 9 // 10)))):
            pixels = np.asarray(im)
            face = detect.largest_face(detect.detect_landmarks5(pixels), pixels.shape)
            target.append(recogniser.describe(pixels, face.points))
    desc, rescaled = np.array(desc), np.array(rescaled)
    assert desc.shape == (3, DESCRIPTOR_DIM) and np.all(np.isfinite(desc))
    same = np.linalg.norm(desc - rescaled, axis=1)
    between = [np.linalg.norm(desc[i] - desc[j]) for i in range(3) for j in range(i)]
    assert same.max() < 0.3 < 0.6 < min(between)  # dlib's "same person" radius is 0.6


@needs_models
def test_chip_and_describe_validate_inputs():
    recogniser = get_recogniser()
    image = np.zeros((200, 200, 3), np.uint8)
    with pytest.raises(ValueError, match="points5"):
        recogniser.chip(image, np.zeros((68, 2)))
    with pytest.raises(ValueError, match="chips"):
        recogniser.describe_chips(np.zeros((1, 64, 64, 3), np.uint8))
    points = np.array([[130.0, 80], [110, 82], [70, 80], [90, 82], [100, 120]])
    assert recogniser.chip(image, points).shape == (CHIP_SIZE, CHIP_SIZE, 3)
