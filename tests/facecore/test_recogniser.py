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


def _head(rng: np.random.Generator, k: int = 6, offset: bool = True, radius: float = 1e9) -> IdentityHead:
    mirror = np.eye(k)[[1, 0, 3, 2, *range(4, k)]]  # an involution (swaps 0 ↔ 1, 2 ↔ 3) stands in for the mirror map
    d = DESCRIPTOR_DIM
    return IdentityHead(
        rng.normal(size=d), rng.uniform(0.5, 2, d), rng.normal(size=(d, k)), rng.normal(size=k), mirror,
        rng.normal(size=k) if offset else np.zeros(k), np.zeros(k), np.diag(rng.uniform(0.5, 2, k)), np.array(radius),
    )  # fmt: skip


def test_head_averages_the_chip_and_the_mirrored_estimate(tmp_path):
    rng = np.random.default_rng(0)
    head = _head(rng)
    x = rng.normal(size=(3, 2, DESCRIPTOR_DIM))
    single = ((x - head.x_mean) / head.x_std) @ head.weight + head.y_mean
    np.testing.assert_allclose(head.single(x[:, 0]), single[:, 0])
    np.testing.assert_allclose(head(x), (single[:, 0] + single[:, 1] @ head.mirror + head.mirror_offset) / 2)
    with pytest.raises(ValueError, match="expected"):
        head(x[:, 0])
    loaded = IdentityHead.load(head.save(tmp_path / "head.npz"))
    assert loaded.features == FEATURES and (loaded.n_features, loaded.n_shape) == (DESCRIPTOR_DIM, 6)
    np.testing.assert_allclose(loaded(x), head(x), rtol=1e-5, atol=1e-5)  # stored as float32


def test_head_keeps_predictions_within_the_prior_radius():
    head = _head(np.random.default_rng(3), radius=2.0)
    x = np.random.default_rng(4).normal(size=(50, 2, DESCRIPTOR_DIM))
    free = (head.single(x[:, 0]) + head.single(x[:, 1]) @ head.mirror + head.mirror_offset) / 2
    limited = head(x)
    radius = lambda c: np.linalg.norm(np.linalg.solve(head.prior_chol, (c - head.prior_mean).T), axis=0)  # noqa: E731
    assert radius(free).max() > 2.0 and radius(limited).max() == pytest.approx(2.0)
    inside = radius(free) <= 2.0
    np.testing.assert_allclose(limited[inside], free[inside])
    outside = ~inside  # pulled straight back toward the prior mean
    cos = (limited[outside] * free[outside]).sum(1) / np.linalg.norm(limited[outside], axis=1)
    np.testing.assert_allclose(cos, np.linalg.norm(free[outside], axis=1))


def test_a_mirror_photo_gets_the_mirrored_head():
    head = _head(np.random.default_rng(1), offset=False)
    x = np.random.default_rng(2).normal(size=(4, 2, DESCRIPTOR_DIM))
    # the mirror photo's chip is the photo's chip mirrored: the two descriptors swap places
    np.testing.assert_allclose(head(x[:, ::-1]) @ head.mirror, head(x), atol=1e-9)


def test_head_refuses_malformed_arrays(tmp_path):
    rng = np.random.default_rng(1)
    good = _head(rng)
    mirror = (good.mirror, good.mirror_offset, good.prior_mean, good.prior_chol, good.max_prior_radius)
    with pytest.raises(ValueError, match="y_mean"):
        IdentityHead(good.x_mean, good.x_std, good.weight, good.y_mean[:-1], *mirror)
    with pytest.raises(ValueError, match="weight"):
        IdentityHead(good.x_mean, good.x_std, np.full_like(good.weight, np.nan), good.y_mean, *mirror)
    with pytest.raises(ValueError, match="x_std"):
        IdentityHead(good.x_mean, -good.x_std, good.weight, good.y_mean, *mirror)
    with pytest.raises(ValueError, match="mirror"):
        IdentityHead(good.x_mean, good.x_std, good.weight, good.y_mean, good.mirror[:2], *mirror[1:])
    with pytest.raises(ValueError, match="max_prior_radius"):
        IdentityHead(good.x_mean, good.x_std, good.weight, good.y_mean, *mirror[:4], np.array(0.0))
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
            target.append(recogniser.describe(pixels, face.points)[0])
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


@needs_models
def test_describe_gives_the_chip_and_its_mirror_image():
    recogniser = get_recogniser()
    image = np.asarray(Image.open(PHOTOS / "cc0-interfaces-001.jpg").convert("RGB"))
    points = detect.largest_face(detect.detect_landmarks5(image), image.shape).points
    chip = recogniser.chip(image, points)
    both = recogniser.describe(image, points)
    np.testing.assert_allclose(both, recogniser.describe_chips(np.stack([chip, chip[:, ::-1]])), atol=1e-6)
    # the mirror photo's own chip is (nearly) the mirrored chip: its descriptors swap places
    flipped = np.ascontiguousarray(image[:, ::-1])
    flipped_points = detect.largest_face(detect.detect_landmarks5(flipped), flipped.shape).points
    swapped = recogniser.describe(flipped, flipped_points)
    assert np.linalg.norm(swapped[::-1] - both, axis=1).max() < 0.15 < np.linalg.norm(both[0] - both[1])
