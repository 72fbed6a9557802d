"""The offline albedo metric: unbiased polynomial MMD², KID behaviour on hand-checkable cases, features, generators."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import Generator
from training.evaluation import (
    AlbedoFeatures,
    ReferenceSet,
    evaluate_generator,
    kid,
    polynomial_mmd2_unbiased,
    skin_mask,
)


def albedo_like(n: int, seed: int, size: int = 32, red_shift: float = 0.0) -> torch.Tensor:
    """(n, 3, size, size) sRGB maps: a random skin tone, smooth blotches, fine noise, dark eyes, red lips."""
    g = torch.Generator().manual_seed(seed)
    tone = torch.tensor([0.72, 0.52, 0.42]).view(1, 3, 1, 1) * (0.7 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    blotch = F.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)
    x = tone + 0.04 * blotch + 0.02 * torch.randn(n, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    for cx in (0.4, 0.6):
        x = torch.where(((xx - cx) ** 2 + (yy - 0.45) ** 2 < 0.002)[None, None], torch.tensor(0.1), x)
    lips = ((xx - 0.5).abs() < 0.07) & ((yy - 0.7).abs() < 0.02)
    x = torch.where(lips[None, None], torch.tensor([0.7, 0.3, 0.3]).view(1, 3, 1, 1), x)
    x[:, 0] += red_shift
    return x.clamp(0.0, 1.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def extractor() -> AlbedoFeatures:
    return AlbedoFeatures(resolution=32)


@pytest.fixture(scope="module")
def reference(extractor) -> ReferenceSet:
    return ReferenceSet.from_images(extractor, albedo_like(160, seed=0))


def test_unbiased_mmd_matches_the_formula_by_hand():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(5), 2)) / 20
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(4), 2)) / 12
    xy = sum(k(a, b) for a in x for b in y) / 20
    got = polynomial_mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y))
    assert float(got) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    one = torch.ones(1, 3, dtype=torch.float64)
    # two copies of one point set: the x–y mean includes the diagonal, so MMD² = 2/n · (mean off-diag − mean diag)
    pts = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    k_pts = (pts @ pts.T / 3 + 1) ** 3
    expected = (k_pts.sum() - k_pts.trace()) / 2 * 2 - 2 * k_pts.mean()
    assert float(polynomial_mmd2_unbiased(pts, pts)) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="at least 2"):
        polynomial_mmd2_unbiased(one, one)


def test_kid_of_gaussians_is_zero_for_one_distribution_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g, dtype=torch.float64)
    b = torch.randn(400, 8, generator=g, dtype=torch.float64)
    same = kid(a, b, num_subsets=50, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 0.01
    values = [kid(a, b + s, num_subsets=50, subset_size=200).mean for s in (0.25, 0.5, 1.0)]
    assert values[0] > 3 * same.std and values == sorted(values)
    assert kid(a, b, num_subsets=5, subset_size=100, seed=1) == kid(a, b, num_subsets=5, subset_size=100, seed=1)


def test_kid_on_albedo_features_identical_same_distribution_and_colour_shift(reference):
    identical = reference.kid_images(albedo_like(160, seed=0), num_subsets=30, subset_size=80)
    same = reference.kid_images(albedo_like(160, seed=1), num_subsets=30, subset_size=80)
    shifted = [
        reference.kid_images(albedo_like(160, seed=1, red_shift=s), num_subsets=30, subset_size=80).mean
        for s in (0.05, 0.1, 0.2)
    ]
    # identical and same-distribution sets: ≈ 0 (identical sets sit at −O(1/n), from the points both subsets share)
    null = max(abs(identical.mean), abs(same.mean))
    assert null < 0.3
    assert shifted[0] > 3 * null and shifted == sorted(shifted) and shifted[-1] > 10 * shifted[0]
    noise = reference.kid_images(torch.rand(80, 3, 32, 32), num_subsets=10, subset_size=40).mean
    assert noise > shifted[-1]


def test_features_are_fixed_and_ignore_texels_off_the_skin(extractor):
    x = albedo_like(4, seed=3)
    f = extractor(x)
    assert f.shape == (4, extractor.dim) and torch.isfinite(f).all()
    assert sum(s.stop - s.start for s in extractor.group_slices.values()) == extractor.dim
    assert torch.equal(AlbedoFeatures(resolution=32)(x), f)  # seeded random conv: same weights every time
    assert not torch.equal(AlbedoFeatures(resolution=32, seed=1)(x), f)
    mask = skin_mask(32)
    assert 0.7 < float(mask.mean()) < 0.95  # the default face model's skin covers ~82 % of the UV square
    off_skin = x.clone()
    off_skin[:, :, mask == 0] = torch.rand(int((mask == 0).sum()))
    assert torch.allclose(extractor(off_skin), f, atol=1e-5)
    # any input size is resized to the working resolution
    big = extractor(F.interpolate(x, size=64, mode="nearest"))
    assert big.shape == f.shape and float((big - f).norm() / f.norm()) < 0.05
    with pytest.raises(ValueError, match="power of two"):
        AlbedoFeatures(resolution=48)


def test_reference_set_validation(extractor):
    with pytest.raises(ValueError, match="at least 2"):
        ReferenceSet(extractor, torch.zeros(1, extractor.dim))
    with pytest.raises(ValueError, match="features must be"):
        ReferenceSet(extractor, torch.zeros(4, 3))


def test_evaluate_generator_is_deterministic(reference):
    torch.manual_seed(0)
    G = Generator(16, 0, 16, 16, 3, {"num_layers": 2}, {"channel_base": 128, "channel_max": 16})
    a = evaluate_generator(G, reference, 24, batch_size=8, num_subsets=5, subset_size=12)
    b = evaluate_generator(G, reference, 24, batch_size=12, num_subsets=5, subset_size=12)
    assert a == b and np.isfinite(a.mean) and a.mean > 0  # an untrained G is far from the albedos
    assert a.to_dict()["kid"] == a.mean and G.training


# ---------------------------------------------------------------------------------------------- identity metrics
def test_identity_stability_metric_on_known_meshes():
    from facecore.geometry import FaceModelArrays
    from models.face.model import DEFAULT_FACE_MODEL
    from training.evaluation import (
        identity_distance_mm,
        identity_region,
        identity_stability,
        mirror_vertex_index,
        mirror_vertices,
        neutral_vertices,
    )

    model = FaceModelArrays.load(DEFAULT_FACE_MODEL)
    region = identity_region(model)
    mean = np.asarray(model.mean, np.float64)
    assert 1000 < region.sum() < 0.8 * len(mean)  # the face, not the whole head
    nose = mean[region][:, 2].max()
    assert mean[region][:, 2].min() > nose - 0.1  # nothing from the back of the head

    index = mirror_vertex_index(model)
    assert (index[index] == np.arange(len(index))).mean() > 0.95  # mirroring twice is (nearly) the identity
    base = neutral_vertices(model, np.zeros(model.n_shape))
    assert identity_distance_mm(mirror_vertices(base, index), base, region)[0] < 0.5  # the mean head is symmetric

    rng = np.random.default_rng(0)
    codes = rng.standard_normal((3, model.n_shape)) * 2.0
    people = neutral_vertices(model, codes)
    shifted = people + np.array([0.0, 0.002, 0.0])  # every vertex 2 mm up
    changes, between = identity_stability(people, {"same": people.copy(), "up_2mm": shifted}, region)
    assert changes["same"] == 0.0 and abs(changes["up_2mm"] - 2.0) < 1e-9
    pairs = [identity_distance_mm(people[i], people[j], region) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert abs(between - float(np.mean(pairs))) < 1e-12 and between > 1.0  # different codes, different heads
