"""Identity sets (training.data.identity_set) and feature → identity regressions (training.identity_regression)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from models.face.model import FaceModel
from training.data.identity_set import embed_chips, render_identity_chips, sample_identity_shapes
from training.data.synthetic import SyntheticConfig, SyntheticFaces
from training.evaluation import identity_distance_mm, identity_region, neutral_vertices
from training.identity_regression import RegionMetric, fit_mlp, fit_ridge, mean_vertex_distance

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAS_MODELS = importlib.util.find_spec("face_recognition_models") is not None


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.from_file()


def test_sample_identity_shapes_prior_wide_mixed(face_model):
    g = torch.Generator().manual_seed(0)
    prior, wide_flag = sample_identity_shapes(face_model, 4000, g, "prior")
    assert prior.shape == (4000, face_model.n_shape) and not wide_flag.any()
    mean = face_model.shape_prior_mean.double()
    cov = face_model.shape_prior_chol.double() @ face_model.shape_prior_chol.double().T
    assert torch.allclose(prior.double().mean(0), mean, atol=4 * float(cov.diagonal().max().sqrt()) / 4000**0.5)
    wide, flag = sample_identity_shapes(face_model, 4000, g, "wide", wide_scale=0.5)
    assert flag.all()
    assert abs(float(wide.std()) - 0.5) < 0.01 and abs(float(wide.mean())) < 0.01
    doubled, _ = sample_identity_shapes(face_model, 4000, g, "prior", prior_scale=2.0)
    assert 1.9 < float((doubled.double() - mean).std() / (prior.double() - mean).std()) < 2.1
    mixed, flag = sample_identity_shapes(face_model, 4000, g, "mixed", wide_fraction=0.25)
    assert 0.22 < float(flag.float().mean()) < 0.28
    assert torch.cdist(mixed[:50], mixed[:50]).add(torch.eye(50) * 1e9).min() > 1.0  # distinct identities
    with pytest.raises(ValueError, match="sampling"):
        sample_identity_shapes(face_model, 2, g, "adults")


def test_render_identity_chips_sizes_alignment_and_views(face_model):
    faces = SyntheticFaces(SyntheticConfig(image_size=64, albedo_size=64, seed=3), face_model)
    shapes, _ = sample_identity_shapes(face_model, 3, torch.Generator().manual_seed(1), "prior")
    out = render_identity_chips(faces, shapes, views=2, chip_size=48)
    assert out.chips.shape == (3, 2, 48, 48, 3) and out.chips.dtype == np.uint8
    np.testing.assert_array_equal(out.shapes, shapes.numpy())
    assert out.yaw_deg.shape == (3, 2) and np.abs(out.yaw_deg).max() <= 60.0 + 1e-3
    assert not out.detected.any()
    centre = out.chips[:, :, 16:32, 16:32].astype(float)  # the face fills the chip's middle: lit skin, no black
    assert centre.mean() > 40 and (centre.max(-1) > 10).mean() > 0.95  # pupils, lips can be dark
    assert np.abs(out.chips[:, 0].astype(int) - out.chips[:, 1].astype(int)).mean() > 5  # two different views
    gt68 = render_identity_chips(faces, shapes[:1], views=1, chip_size=48, align="gt68")
    assert gt68.chips.shape == (1, 1, 48, 48, 3)
    with pytest.raises(ValueError, match="align"):
        render_identity_chips(faces, shapes, views=1, align="eyes")


@pytest.mark.skipif(not HAS_MODELS, reason="face-recognition-models (the dlib .dat files) not installed")
def test_embed_chips_pooled_is_the_descriptors_input(face_model):
    from models.identity import FaceEmbedder

    embedder = FaceEmbedder.from_dlib_dat()
    chips = np.random.default_rng(0).integers(0, 256, (2, 3, 150, 150, 3), dtype=np.uint8)
    desc, pooled = embed_chips(embedder, chips, batch_size=4)
    assert desc.shape == (2, 3, 128) and pooled.shape == (2, 3, 256)
    x = torch.from_numpy(chips[1, 2]).permute(2, 0, 1)[None].float() / 255.0
    np.testing.assert_allclose(desc[1, 2], embedder.descriptor(x)[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(desc, pooled @ embedder.fc.weight.T.numpy(), atol=1e-5)


def test_region_metric_matches_identity_distance(face_model):
    arrays = face_model.arrays
    region = identity_region(arrays)
    metric = RegionMetric(arrays, region)
    g = torch.Generator().manual_seed(2)
    a, _ = sample_identity_shapes(face_model, 4, g, "prior")
    b, _ = sample_identity_shapes(face_model, 4, g, "prior")
    va, vb = neutral_vertices(arrays, a.numpy()), neutral_vertices(arrays, b.numpy())
    va = va - va[:, region].mean(1, keepdims=True)
    vb = vb - vb[:, region].mean(1, keepdims=True)
    want = identity_distance_mm(va, vb, region)
    za, zb = metric.to_z(a.numpy()), metric.to_z(b.numpy())
    np.testing.assert_allclose(metric.error_mm(za, zb), want, rtol=1e-3)
    assert 1.0 < want.mean() < 15.0  # different people: millimetres apart
    rms = 1000 * np.sqrt(((va - vb)[:, region] ** 2).sum((1, 2)))
    np.testing.assert_allclose(np.linalg.norm(za - zb, axis=1), rms, rtol=1e-3)  # z distance = region RMS·√R
    rigid = metric.error_mm(za, zb, rigid=True)
    assert (rigid <= metric.error_mm(za, zb) + 1e-9).all()
    # a rotated, shifted copy of the same shape is 0 apart after rigid alignment, not before
    c, s = np.cos(0.2), np.sin(0.2)
    verts = metric.vertices(za[:2])
    moved = verts @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T + np.array([5.0, -3.0, 1.0])
    assert (mean_vertex_distance(moved, verts) > 1.0).all()
    np.testing.assert_allclose(mean_vertex_distance(moved, verts, rigid=True), 0.0, atol=1e-9)
    np.testing.assert_allclose(mean_vertex_distance(verts + 7.0, verts), 0.0, atol=1e-9)
    # a similarity alignment also removes a scale (and only then: the rigid one keeps it)
    bigger = 1.08 * moved
    assert (mean_vertex_distance(bigger, verts, rigid=True) > 0.5).all()
    np.testing.assert_allclose(mean_vertex_distance(bigger, verts, rigid=True, scale=True), 0.0, atol=1e-9)
    similar = metric.error_mm(za, zb, rigid=True, scale=True)
    assert (similar <= rigid + 1e-9).all() and (similar < rigid).any()
    with pytest.raises(ValueError, match="scale: needs rigid"):
        mean_vertex_distance(verts, verts, scale=True)


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(12, 5))
    x = rng.normal(size=(600, 12)) * rng.uniform(0.5, 3.0, 12) + 4.0
    y = x @ W + 1.5 + 0.01 * rng.normal(size=(600, 5))
    model = fit_ridge(x[:500], y[:500], x[500:550], y[500:550])
    assert model.alpha <= 1e-2
    pred = model(x[550:])
    assert np.abs(pred - (x[550:] @ W + 1.5)).max() < 0.05
    noise = fit_ridge(x[:500], rng.normal(size=(500, 5)), x[500:550], rng.normal(size=(50, 5)))
    assert noise.alpha >= 1.0  # pure noise: the validation picks a strong penalty, predictions stay near the mean
    assert noise(x[550:]).std(0).max() < 0.3


def test_mlp_learns_a_nonlinear_map():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1200, 8))
    y = np.stack([np.sin(x[:, 0]) + x[:, 1] * x[:, 2], np.abs(x[:, 3])], 1)
    model, stats = fit_mlp(x[:1000], y[:1000], x[1000:1100], y[1000:1100], hidden=64, max_epochs=150, patience=30)
    mse = np.mean((model.predict(x[1100:]) - y[1100:]) ** 2)
    baseline = np.mean((y[1100:] - y[:1000].mean(0)) ** 2)
    linear = fit_ridge(x[:1000], y[:1000], x[1000:1100], y[1000:1100])
    assert mse < 0.15 * baseline and mse < 0.5 * np.mean((linear(x[1100:]) - y[1100:]) ** 2)
    assert stats["best_epoch"] >= 1 and stats["seconds"] < 60
