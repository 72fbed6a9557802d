"""training.losses: every loss on tiny hand-computed inputs, masks, symmetry, gradients, batch reduction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import models.displacement as displacement
from models.face.model import FaceModel
from models.landmarks import normalised_mean_error
from models.render.texture import sample_texture
from training import losses as L


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def val(x: torch.Tensor) -> float:
    return x.detach().item()


def lowers(fn, x: torch.Tensor, lr: float = 1e-2) -> tuple[float, float]:
    """One gradient step on x: (loss before, loss after); asserts a finite gradient."""
    x = x.clone().requires_grad_(True)
    before = fn(x)
    (g,) = torch.autograd.grad(before, x)
    assert torch.isfinite(g).all()
    with torch.no_grad():
        after = fn(x - lr * g)
    return val(before), val(after)


# ---------------------------------------------------------------------------------------------- reconstruction
def test_reconstruction_hand_values_and_batch_reduction():
    rendered = t([[[[1, 2], [3, 4]]], [[[1, 1], [1, 1]]]])  # (2, 1, 2, 2)
    target = torch.zeros_like(rendered)
    mask = t([[[[1, 0], [1, 0]]], [[[1, 1], [1, 1]]]])
    # sample 0: (1² + 3²) / 2 = 5; sample 1: 1
    assert L.reconstruction_loss(rendered, target, mask, reduction="none").tolist() == pytest.approx([5.0, 1.0])
    assert val(L.reconstruction_loss(rendered, target, mask)) == pytest.approx(3.0)
    assert val(L.reconstruction_loss(rendered, target, mask, reduction="sum")) == pytest.approx(6.0)
    # no mask: sample 0 is (1 + 4 + 9 + 16) / 4 = 7.5
    assert val(L.reconstruction_loss(rendered[:1], target[:1])) == pytest.approx(7.5)
    # soft mask: weights 0.5 and 0.25 on values 1 and 4 → (0.5·1 + 0.25·16) / 0.75 = 6
    soft = t([[[[0.5, 0], [0, 0.25]]]])
    assert val(L.reconstruction_loss(rendered[:1], target[:1], soft)) == pytest.approx(6.0)


def test_reconstruction_mask_shapes_and_channels():
    rendered = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 10
    target = torch.zeros_like(rendered)
    m2 = t([[1, 0], [0, 1]])
    ref = L.reconstruction_loss(rendered, target, m2[None, None].expand(2, 1, 2, 2))
    for m in (m2, m2.expand(2, 2, 2), m2[None, None], m2[None, None].expand(2, 3, 2, 2), m2.bool()):
        assert val(L.reconstruction_loss(rendered, target, m)) == pytest.approx(val(ref))
    # mean over masked pixels AND channels: sample 0 masked values 0,.3 | .4,.7 | .8,1.1
    expected0 = sum(v * v for v in (0.0, 0.3, 0.4, 0.7, 0.8, 1.1)) / 6
    assert val(L.reconstruction_loss(rendered, target, m2, reduction="none")[0]) == pytest.approx(expected0)
    with pytest.raises(ValueError, match="mask"):
        L.reconstruction_loss(rendered, target, torch.ones(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        L.reconstruction_loss(rendered, target[:1])
    with pytest.raises(ValueError, match="reduction"):
        L.reconstruction_loss(rendered, target, reduction="avg")


def test_masked_out_pixels_do_not_matter():
    target = t([[[[1, 1], [1, 1]]]])
    mask = t([[[[1, 1], [0, 0]]]])
    a = t([[[[2, 0], [5, -7]]]]).requires_grad_(True)
    b = t([[[[2, 0], [float("inf"), float("nan")]]]]).requires_grad_(True)
    la, lb = L.reconstruction_loss(a, target, mask), L.reconstruction_loss(b, target, mask)
    assert la.item() == lb.item() == pytest.approx(1.0)  # (1 + 1) / 2
    (ga,) = torch.autograd.grad(la, a)
    (gb,) = torch.autograd.grad(lb, b)
    assert torch.equal(ga, gb) and torch.isfinite(gb).all()
    assert ga[0, 0, 1].tolist() == [0.0, 0.0]  # d/dx of (x − 1)² / 2 = x − 1 → [1, −1] on row 0
    assert ga[0, 0, 0].tolist() == pytest.approx([1.0, -1.0])


def test_empty_mask_is_zero_with_finite_zero_gradient():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    empty = torch.zeros(2, 1, 4, 4)
    loss = L.reconstruction_loss(x, torch.rand(2, 3, 4, 4), empty)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all() and val(g.abs().max()) == 0.0
    # one empty sample: 0 for it, still counted in the batch mean
    mask = torch.ones(2, 1, 4, 4)
    mask[1] = 0
    per = L.reconstruction_loss(x, torch.zeros_like(x), mask, reduction="none")
    assert val(per[1]) == 0.0
    assert val(L.reconstruction_loss(x, torch.zeros_like(x), mask)) == pytest.approx(val(per[0]) / 2)
    # the same for the UV symmetry term and for the target-albedo term
    albedo = torch.rand(2, 3, 4, 6, requires_grad=True)
    out = L.symmetric_reconstruction_loss(
        x, torch.rand(2, 3, 4, 4), empty, albedo, uv_mask=torch.zeros(4, 6), target_albedo_uv=torch.rand(2, 3, 4, 6)
    )
    gx, ga = torch.autograd.grad(out.total, (x, albedo))
    assert out.total.item() == 0.0 and float(gx.abs().max()) == 0.0 and float(ga.abs().max()) == 0.0


def test_reconstruction_gradient_step_lowers():
    target = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    before, after = lowers(lambda x: L.reconstruction_loss(x, target, mask), torch.zeros(2, 3, 5, 5), lr=1.0)
    assert after < before


# ---------------------------------------------------------------------------------------------- symmetric
def test_mirror_uv_matches_the_texture_convention():
    """mirror_uv(T) sampled at (u, v) equals T sampled at (1 − u, v) (renderer's grid_sample convention)."""
    tex = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    uv = torch.rand(1, 5, 7, 2, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    mirrored_uv = torch.stack([1 - uv[..., 0], uv[..., 1]], -1)
    torch.testing.assert_close(sample_texture(L.mirror_uv(tex), uv), sample_texture(tex, mirrored_uv))


def test_albedo_symmetry_zero_for_mirror_symmetric_albedo_and_not_for_a_ramp():
    sym = t([[[[0.1, 0.5, 0.5, 0.1], [0.3, 0.9, 0.9, 0.3]]]])  # (1, 1, 2, 4), symmetric about u = 0.5
    assert val(L.albedo_symmetry_loss(sym)) == 0.0
    ramp = t([[[0, 1, 2, 3], [0, 1, 2, 3]]]).unsqueeze(0)  # u ramp; mirror [3, 2, 1, 0]
    # differences −3, −1, 1, 3 → squares 9, 1, 1, 9 → mean 5
    assert val(L.albedo_symmetry_loss(ramp)) == pytest.approx(5.0)
    # column 0 invalid → its mirror (column 3) drops too: only the ±1 pairs remain → 1
    uv_mask = t([[0, 1, 1, 1], [0, 1, 1, 1]])
    assert val(L.albedo_symmetry_loss(ramp, uv_mask)) == pytest.approx(1.0)
    # empty overlap → 0
    half = t([[1, 1, 0, 0], [1, 1, 0, 0]])
    assert val(L.albedo_symmetry_loss(ramp, half)) == 0.0


def test_albedo_symmetry_gradient_step_symmetrises():
    ramp = torch.linspace(0, 1, 8).expand(2, 3, 4, 8).contiguous()
    before, after = lowers(lambda a: L.albedo_symmetry_loss(a), ramp, lr=1.0)
    assert after < before
    # the gradient of a mirror pair is equal and opposite (both move to the average)
    a = ramp.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(L.albedo_symmetry_loss(a), a)
    torch.testing.assert_close(g, -L.mirror_uv(g))


def test_symmetric_reconstruction_terms_and_total():
    rendered = t([[[[1, 0], [0, 0]]]]).expand(1, 3, 2, 2)
    image = torch.zeros(1, 3, 2, 2)
    mask = t([[1, 1], [0, 0]])  # image term: (3 · 1²) / (3 · 2) = 0.5
    albedo = t([[[0, 1, 2, 3]]]).unsqueeze(0).expand(1, 3, 1, 4)  # symmetry term 5
    target_albedo = albedo + 2.0  # target term: 4 where valid
    target_mask = t([[1, 1, 0, 0]])
    out = L.symmetric_reconstruction_loss(
        rendered,
        image,
        mask,
        albedo,
        target_albedo_uv=target_albedo,
        target_albedo_mask=target_mask,
        symmetry_weight=0.5,
        target_weight=0.25,
    )
    assert val(out.image) == pytest.approx(0.5)
    assert val(out.albedo_symmetry) == pytest.approx(5.0)
    assert val(out.albedo_target) == pytest.approx(4.0)
    assert val(out.total) == pytest.approx(0.5 + 0.5 * 5 + 0.25 * 4)
    assert set(out.terms()) == {"reconstruction", "albedo_symmetry", "albedo_target"}
    # without a target: no target term, not in the total
    plain = L.symmetric_reconstruction_loss(rendered, image, mask, albedo)
    assert plain.albedo_target is None and "albedo_target" not in plain.terms()
    assert val(plain.total) == pytest.approx(5.5)
    with pytest.raises(ValueError, match="target_albedo_mask"):
        L.symmetric_reconstruction_loss(rendered, image, mask, albedo, target_albedo_mask=target_mask)
    per = L.symmetric_reconstruction_loss(rendered.expand(2, 3, 2, 2), image.expand(2, 3, 2, 2), mask,
                                          albedo.expand(2, 3, 1, 4), reduction="none")  # fmt: skip
    assert per.total.shape == (2,) and per.total.tolist() == pytest.approx([5.5, 5.5])


def test_symmetric_reconstruction_gradient_reaches_albedo_and_lowers():
    image = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    target_albedo = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(1))

    def fn(albedo):
        return L.symmetric_reconstruction_loss(albedo[..., :4, :4], image, None, albedo,
                                               target_albedo_uv=target_albedo).total  # fmt: skip

    before, after = lowers(fn, torch.zeros(1, 3, 4, 6), lr=0.5)
    assert after < before


# ---------------------------------------------------------------------------------------------- identity, perceptual
def test_identity_loss_hand_values():
    a = t([[1, 0], [3, 4], [1, 0]])
    b = t([[0, 2], [6, 8], [-5, 0]])  # orthogonal, parallel (different scale), opposite
    assert L.identity_loss(a, b, reduction="none").tolist() == pytest.approx([1.0, 0.0, 2.0])
    assert val(L.identity_loss(a, b)) == pytest.approx(1.0)
    assert val(L.identity_loss(a, b, reduction="sum")) == pytest.approx(3.0)
    # 60° apart: 1 − cos 60° = 0.5
    c = t([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    assert val(L.identity_loss(t([[1, 0]]), c)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        L.identity_loss(a, b[:, :1])


def test_identity_loss_gradient_step_aligns():
    target = t([[0.0, 1.0, 0.0]])
    before, after = lowers(lambda x: L.identity_loss(x, target), t([[1.0, 0.2, 0.0]]), lr=0.5)
    assert after < before
    # a zero embedding: loss 1, finite gradient
    z = torch.zeros(1, 3, requires_grad=True)
    loss = L.identity_loss(z, target)
    (g,) = torch.autograd.grad(loss, z)
    assert val(loss) == 1.0 and torch.isfinite(g).all()


def test_perceptual_loss_hand_values():
    fa = [torch.ones(1, 1, 2, 2), t([[2.0, 0.0]])]
    fb = [torch.zeros(1, 1, 2, 2), t([[0.0, 0.0]])]
    # layer 0: mean of four 1² = 1; layer 1: (4 + 0) / 2 = 2
    assert val(L.perceptual_loss(fa, fb)) == pytest.approx(3.0)
    assert val(L.perceptual_loss(fa, fb, weights=[1.0, 0.5])) == pytest.approx(2.0)
    two_a = [x.expand(2, *x.shape[1:]) * t([1, 2]).view(2, *[1] * (x.dim() - 1)) for x in fa]
    two_b = [x.expand(2, *x.shape[1:]) for x in fb]
    # sample 1 features doubled → each layer ×4 → 12
    assert L.perceptual_loss(two_a, two_b, reduction="none").tolist() == pytest.approx([3.0, 12.0])
    assert val(L.perceptual_loss(two_a, two_b)) == pytest.approx(7.5)
    with pytest.raises(ValueError, match="one length"):
        L.perceptual_loss(fa, fb[:1])
    with pytest.raises(ValueError, match="weights"):
        L.perceptual_loss(fa, fb, weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        L.perceptual_loss(fa, fb, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="layer 1"):
        L.perceptual_loss(fa, [fb[0], torch.zeros(1, 3)])


def test_perceptual_gradient_step_lowers():
    fb = [torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)), torch.rand(2, 8)]
    before, after = lowers(lambda x: L.perceptual_loss([x, x.flatten(1)[:, :8]], fb), torch.zeros(2, 4, 3, 3), 1.0)
    assert after < before


# ---------------------------------------------------------------------------------------------- landmarks
PRED3 = t([[[0, 0], [3, 4], [1, 1]]])
TARGET3 = t([[[0, 0], [0, 0], [1, 2]]])  # distances 0, 5, 1


def test_landmark_loss_hand_values():
    assert val(L.landmark_loss(PRED3, TARGET3)) == pytest.approx(2.0)  # (0 + 5 + 1) / 3
    w = t([1, 1, 2])
    assert val(L.landmark_loss(PRED3, TARGET3, weights=w)) == pytest.approx(7 / 4)  # (0 + 5 + 2) / 4
    vis = t([[1, 0, 1]])
    assert val(L.landmark_loss(PRED3, TARGET3, visibility=vis)) == pytest.approx(0.5)  # (0 + 1) / 2
    assert val(L.landmark_loss(PRED3, TARGET3, w, vis.bool())) == pytest.approx(2 / 3)  # (0 + 2) / 3
    # Euclidean, not squared: doubling the errors doubles the loss
    assert val(L.landmark_loss(2 * PRED3, 2 * TARGET3)) == pytest.approx(4.0)
    # batch: second sample all at distance 1
    pred = torch.cat([PRED3, TARGET3 + t([1, 0])])
    target = torch.cat([TARGET3, TARGET3])
    assert L.landmark_loss(pred, target, reduction="none").tolist() == pytest.approx([2.0, 1.0])
    assert val(L.landmark_loss(pred, target)) == pytest.approx(1.5)
    assert val(L.landmark_loss(pred, target, weights=t([[1, 1, 1], [0, 0, 1]]))) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="visibility"):
        L.landmark_loss(PRED3, TARGET3, visibility=t([1, 0]))


def test_landmark_loss_gradients_safe_at_zero_and_when_invisible():
    x = PRED3.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(L.landmark_loss(x, TARGET3), x)
    assert torch.isfinite(g).all()
    assert g[0, 0].tolist() == [0.0, 0.0]  # point 0 sits on its target
    assert g[0, 1].tolist() == pytest.approx([3 / 5 / 3, 4 / 5 / 3])  # unit direction / N
    none_visible = L.landmark_loss(x, TARGET3, visibility=torch.zeros(3))
    (g0,) = torch.autograd.grad(none_visible, x)
    assert none_visible.item() == 0.0 and val(g0.abs().max()) == 0.0
    before, after = lowers(lambda p: L.landmark_loss(p, TARGET3), PRED3, lr=0.5)
    assert after < before


def test_ibug68_weights_and_normalised_error():
    w = L.ibug68_landmark_weights(jaw=0.25)
    assert w.shape == (68,) and w[:17].tolist() == [0.25] * 17 and w[17:].eq(1).all()
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 100, (2, 68, 2))
    target[:, 36], target[:, 45] = (10.0, 50.0), (50.0, 50.0)  # inter-ocular distance 40
    pred = target + np.array([0.0, 2.0])  # every point 2 off → 2 / 40
    out = L.normalised_landmark_error(t(pred), t(target), reduction="none")
    assert out.tolist() == pytest.approx([0.05, 0.05])
    # same convention as the numpy metric in models.landmarks
    pred2 = target + rng.normal(0, 3, target.shape)
    np.testing.assert_allclose(
        L.normalised_landmark_error(torch.from_numpy(pred2), torch.from_numpy(target), reduction="none").numpy(),
        normalised_mean_error(pred2, target),
        rtol=1e-8,  # the weight-sum epsilon (1e-8 / 68) is the only difference
    )
    degenerate = target.copy()
    degenerate[0, 45] = degenerate[0, 36]
    with pytest.raises(ValueError, match="inter-ocular"):
        L.normalised_landmark_error(t(pred), t(degenerate))


# ---------------------------------------------------------------------------------------------- shape centre
CODES = t([[0, 0], [2, 0], [0, 0], [0, 3], [0, 6], [5, 5]])
IDS = [7, 7, 42, 42, 42, 3]  # group 7: mean (1, 0); group 42: mean (0, 3); 3 is alone


def test_shape_centre_hand_values():
    per = L.shape_centre_loss(CODES, IDS, reduction="none")
    assert per.tolist() == pytest.approx([1, 1, 3, 0, 3, 0])
    assert val(L.shape_centre_loss(CODES, torch.tensor(IDS))) == pytest.approx(8 / 6)
    assert val(L.shape_centre_loss(CODES, IDS, squared=True)) == pytest.approx(20 / 6)
    assert val(L.shape_centre_loss(CODES, IDS, reduction="sum")) == pytest.approx(8.0)
    # order of the batch does not matter
    perm = [5, 2, 0, 4, 1, 3]
    per_perm = L.shape_centre_loss(CODES[perm], [IDS[i] for i in perm], reduction="none")
    assert per_perm.tolist() == pytest.approx(per[perm].tolist())
    # all singletons → 0
    assert val(L.shape_centre_loss(CODES, list(range(6)))) == 0.0
    with pytest.raises(ValueError, match="identity_ids"):
        L.shape_centre_loss(CODES, [0, 1])
    with pytest.raises(ValueError, match="identity_ids"):
        L.shape_centre_loss(CODES, t(IDS))


def test_shape_centre_zero_for_equal_codes_with_finite_gradient():
    codes = t([[1, 2, 3]]).expand(4, 3).clone().requires_grad_(True)
    for squared in (False, True):
        loss = L.shape_centre_loss(codes, [0, 0, 1, 1], squared=squared)
        (g,) = torch.autograd.grad(loss, codes)
        assert loss.item() == 0.0 and torch.isfinite(g).all() and val(g.abs().max()) == 0.0


def test_shape_centre_gradient_step_pulls_codes_together():
    for squared in (False, True):
        before, after = lowers(lambda c, s=squared: L.shape_centre_loss(c, IDS, squared=s), CODES, lr=0.1)
        assert after < before


# ---------------------------------------------------------------------------------------------- priors
def test_l2_prior_hand_values():
    codes = t([[1, 2], [3, 0]])
    assert L.l2_prior(codes, reduction="none").tolist() == pytest.approx([5.0, 9.0])
    assert val(L.l2_prior(codes)) == pytest.approx(7.0)
    assert val(L.l2_prior(codes, prior_mean=t([1, 0]))) == pytest.approx(4.0)  # [0,2], [2,0]
    # maps (B, ...) are summed over every element
    assert val(L.l2_prior(torch.ones(2, 1, 2, 3))) == pytest.approx(6.0)


def test_l2_prior_mahalanobis_with_cholesky():
    chol = t([[2, 0], [1, 1]])  # Σ = L Lᵀ = [[4, 2], [2, 2]], Σ⁻¹ = [[.5, −.5], [−.5, 1]]
    codes = t([[2, 1], [0, 1], [2, 3]])
    # cᵀ Σ⁻¹ c: [2,1] → 2 − 2 + 1 = 1; [0,1] → 1; [2,3] → 2 − 6 + 9 = 5
    assert L.l2_prior(codes, prior_chol=chol, reduction="none").tolist() == pytest.approx([1.0, 1.0, 5.0])
    assert val(L.l2_prior(codes + t([1, 1]), t([1, 1]), chol)) == pytest.approx(7 / 3)
    upper_garbage = chol + t([[0, 99], [0, 0]])  # only the lower triangle is read
    assert val(L.l2_prior(codes, prior_chol=upper_garbage)) == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="prior_chol"):
        L.l2_prior(codes, prior_chol=torch.eye(3))
    with pytest.raises(ValueError, match="prior_mean"):
        L.l2_prior(codes, prior_mean=torch.zeros(3))
    before, after = lowers(lambda c: L.l2_prior(c, t([0.5, 0.5]), chol), codes, lr=0.5)
    assert after < before


def test_l2_prior_matches_the_face_model_generation_prior():
    """Codes drawn as mean + L·ε (FaceModel.sample_shape) have Mahalanobis distance exactly ‖ε‖²."""
    fm = FaceModel.from_file()
    eps = torch.randn(3, fm.n_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    chol = fm.shape_prior_chol.double()
    codes = fm.shape_prior_mean.double() + eps @ chol.T
    got = L.l2_prior(codes, fm.shape_prior_mean, fm.shape_prior_chol, reduction="none")
    torch.testing.assert_close(got, eps.square().sum(1), rtol=1e-4, atol=1e-6)
    assert val(L.l2_prior(fm.shape_prior_mean[None], fm.shape_prior_mean, fm.shape_prior_chol)) == 0.0


# ---------------------------------------------------------------------------------------------- weights, combine
def test_loss_weights_defaults_and_validation():
    w = L.LossWeights()
    assert w.identity == 0.2 and w.landmark == 1.0 and w.shape_prior == 1e-4
    with pytest.raises(dataclasses_frozen_error()):
        w.identity = 1.0  # type: ignore[misc]
    assert L.LossWeights.from_dict({"identity": 0.5}).identity == 0.5
    with pytest.raises(ValueError, match="unknown"):
        L.LossWeights.from_dict({"idnetity": 0.5})
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="identity"):
            L.LossWeights(identity=bad)  # type: ignore[arg-type]
    assert set(w.as_dict()) >= {"reconstruction", "albedo_symmetry", "albedo_target", "shape_centre"}


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_combine_weights_logs_and_errors():
    x = torch.tensor(2.0, requires_grad=True)
    terms = {"landmark": x * 1.0, "identity": x / 4, "shape_centre": torch.tensor(float("nan"))}
    weights = L.LossWeights(shape_centre=0.0)
    total, log = L.combine(terms, weights)
    assert val(total) == pytest.approx(1.0 * 2.0 + 0.2 * 0.5)  # the NaN term has weight 0: skipped
    assert log["landmark"] == 2.0 and log["identity"] == 0.5 and math.isnan(log["shape_centre"])
    assert log["total"] == pytest.approx(2.1)
    assert all(type(v) is float for v in log.values())
    (g,) = torch.autograd.grad(total, x)
    assert val(g) == pytest.approx(1.0 + 0.2 / 4)
    total2, _ = L.combine({"a": x}, {"a": 3.0})
    assert val(total2) == 6.0
    with pytest.raises(ValueError, match="no weight"):
        L.combine({"nonsense": x}, weights)
    with pytest.raises(ValueError, match="scalar"):
        L.combine({"landmark": torch.ones(2)}, weights)
    with pytest.raises(ValueError, match="nothing"):
        L.combine({}, weights)


def test_symmetric_terms_feed_combine():
    out = L.symmetric_reconstruction_loss(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), None,
                                          t([[[[0, 1]]]]).expand(1, 3, 1, 2))  # fmt: skip
    total, log = L.combine(out.terms(), L.LossWeights(reconstruction=1.0, albedo_symmetry=2.0))
    assert log["reconstruction"] == 1.0 and log["albedo_symmetry"] == 1.0 and val(total) == 3.0


def test_displacement_regularisers_are_reused_not_duplicated():
    assert L.displacement_smoothness is displacement.displacement_smoothness
    assert L.displacement_magnitude is displacement.displacement_magnitude
