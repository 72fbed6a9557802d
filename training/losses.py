"""The losses of AlbedoGAN's shape and albedo steps, as pure functions on tensors.

Every function takes tensors (renders, embeddings, feature lists, codes) and returns a scalar (or, with
``reduction="none"``, one value per sample); none owns a network. Conventions shared by all of them:

* **Batch reduction.** Each loss is first computed per sample, (B,); ``reduction="mean"`` (default) is the
  mean of those B values, ``"sum"`` their sum, ``"none"`` returns them. An empty batch reduces to 0.
* **Masks** are nonnegative weights (bool or float, soft edges allowed). A masked mean is
  ``Σ m·e / (Σ m + eps)`` per sample, with ``eps`` = :data:`EPS` by default. Masked-out elements are replaced
  by zeros *before* the arithmetic, so whatever they hold (even inf/NaN background) changes neither the value
  nor the gradient. **Empty mask**: the sample's value is exactly 0 and its gradient exactly 0 (finite); it
  still counts in the batch mean.
* **Distances** (landmarks, shape codes) use a norm whose gradient at a zero vector is 0, not NaN.

Weights live in :class:`LossWeights`; :func:`combine` sums weighted terms and returns floats for logging.
The displacement regularisers are :func:`models.displacement.displacement_smoothness` and
:func:`~models.displacement.displacement_magnitude` (re-exported here, not duplicated).

Reading of the paper (Rai et al., "Towards Realistic Generative 3D Face Models", WACV 2024, arXiv 2304.12483)
---------------------------------------------------------------------------------------------------------
The stored copies of the paper available to us (arxiv-vanity, the project page, the CMU MSCV team page)
expose the abstract, the introduction and the albedo-pretraining sections, but not the loss equations.
What they do say: the texture is extracted by fitting the face model and unwrapping to cylindrical UV, and
"texture correction fills in the parts that are hidden ... by projecting the flipped input image onto the
same mesh", i.e. the albedo target is made left–right consistent by mirroring, by an amount set by the pose.
The authors' released code (github.com/aashishrai3799/Towards-Realistic-Generative-3D-Face-Models, a DECA
fork: ``decalib/trainer.py``, ``decalib/utils/config.py``) shows the albedo fine-tuning step comparing
AlbedoGAN's UV output with that flip-corrected extracted albedo (L1 + ID-MRF), and gives the loss weights
used in :class:`LossWeights`. From this, our reading of the **symmetric reconstruction** loss
(:func:`symmetric_reconstruction_loss`): reconstruct the image through the renderer (masked MSE) *and* the
albedo in UV, the UV term being (a) consistency of the predicted albedo with its own mirror image
``u → 1 − u`` where both texels are valid (what flip-filling enforces on the data side) and/or (b) the masked
MSE to a target albedo (the flip-corrected extracted texture, or a synthetic ground truth) when one exists.

The **shape-centre** term follows the issue's definition: StyleGAN2 w-space edits give 11 images of one
identity with different pose and expression; each image's shape code is pulled to the mean code of its
identity group. The released code's ``shape_consistency`` flag is instead DECA's shape swap (render image i
with the shape code of another image of the same identity); the paper's equation (squared or not) could not be
read from the stored text, so :func:`shape_centre_loss` defaults to the plain Euclidean distance (the issue's
"distance") and offers ``squared=True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from facecore.config import parse_section
from models.displacement import displacement_magnitude, displacement_smoothness

__all__ = [
    "EPS",
    "IBUG68_JAW",
    "LossWeights",
    "SymmetricReconstruction",
    "albedo_symmetry_loss",
    "combine",
    "displacement_magnitude",
    "displacement_smoothness",
    "ibug68_landmark_weights",
    "identity_loss",
    "l2_prior",
    "landmark_loss",
    "mirror_uv",
    "normalised_landmark_error",
    "perceptual_loss",
    "reconstruction_loss",
    "shape_centre_loss",
    "symmetric_reconstruction_loss",
]

Reduction = Literal["mean", "sum", "none"]

EPS = 1e-8
"""Default epsilon added to mask / weight sums (a mask sums to ≥ 1 when it is not empty, so it is negligible)."""

IBUG68_JAW = tuple(range(17))
"""iBUG 300-W indices of the jaw contour (0–16), whose ground truth is the least reliable (it slides along the
cheek with pose)."""


# ---------------------------------------------------------------------------------------------- helpers
def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum" or per_sample.numel() == 0:
        return per_sample.sum()
    return per_sample.mean()


def _safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm over ``dim`` whose value and gradient are exactly 0 at a zero vector (plain sqrt gives NaN)."""
    sq = x.square().sum(dim)
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def _image_mask(mask: torch.Tensor | None, like: torch.Tensor, name: str) -> torch.Tensor:
    """mask of shape (H, W), (B, H, W) or (1 | B, 1 | C, H, W) → float weights expanded to ``like`` (B, C, H, W)."""
    if mask is None:
        return torch.ones_like(like)
    m = mask.to(dtype=like.dtype)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    B, C = like.shape[:2]
    if m.dim() != 4 or m.shape[-2:] != like.shape[-2:] or m.shape[0] not in (1, B) or m.shape[1] not in (1, C):
        raise ValueError(
            f"{name}: expected (H, W), (B, H, W) or (1 | B, 1 | C, H, W) matching {tuple(like.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return m.expand_as(like)


def _check_images(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.dim() != 4:
        raise ValueError(f"{names[0]}: expected shape (B, C, H, W), got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")


def _masked_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) per-sample ``Σ w·(a − b)² / (Σ w + eps)``; a, b, weight: (B, ...) of one shape."""
    valid = weight > 0
    zero = a.new_zeros(())
    diff = torch.where(valid, a, zero) - torch.where(valid, b, zero)
    num = (diff.square() * weight).flatten(1).sum(1)
    return num / (weight.flatten(1).sum(1) + eps)


def _per_point_weights(
    weights: torch.Tensor | None, visibility: torch.Tensor | None, B: int, N: int, like: torch.Tensor
) -> torch.Tensor:
    """(B, N) product of optional per-landmark weights and visibilities, each (N,) or (B, N)."""
    out = like.new_ones(B, N)
    for name, value in (("weights", weights), ("visibility", visibility)):
        if value is None:
            continue
        v = value.to(dtype=like.dtype)
        if v.shape not in ((N,), (B, N), (1, N)):
            raise ValueError(f"{name}: expected (N,) or (B, N) with B={B}, N={N}, got {tuple(value.shape)}")
        out = out * v
    return out


# ---------------------------------------------------------------------------------------------- reconstruction
def reconstruction_loss(
    rendered: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
    eps: float = EPS,
) -> torch.Tensor:
    r"""Masked mean squared error between a render and its target image (the photometric term).

    Per sample b:
    :math:`L_b = \sum_{c,p} m_{b,c,p}\,(\hat I_{b,c,p} - I_{b,c,p})^2 / (\sum_{c,p} m_{b,c,p} + \epsilon)`,
    i.e. the mean over the masked pixels and channels. Paper role: the reconstruction term of both the shape
    step (encoder + displacement decoder, AlbedoGAN frozen) and the albedo step, computed where the rendered
    face covers the image (``RenderOutputs.mask``, optionally times a skin segmentation).

    Args:
        rendered: (B, C, H, W) render, e.g. ``RenderOutputs.image``.
        target: (B, C, H, W) image, same value range.
        mask: (H, W), (B, H, W) or (1 | B, 1 | C, H, W) nonnegative weights; None = every pixel.
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).
        eps: added to the per-sample mask sum. An empty mask gives 0 with a zero gradient.

    Returns:
        A scalar, or (B,) with ``reduction="none"``.
    """
    _check_reduction(reduction)
    _check_images(rendered, target, ("rendered", "target"))
    weight = _image_mask(mask, rendered, "mask")
    return _reduce(_masked_mse(rendered, target, weight, eps), reduction)


def mirror_uv(texture_uv: torch.Tensor) -> torch.Tensor:
    """The UV map of the left–right mirrored face: ``u → 1 − u``, i.e. the columns reversed.

    The cylindrical layout puts the face centre at u = 0.5 and texel column c at ``u = (c + 0.5) / Wt``, so
    ``1 − u`` is exactly column ``Wt − 1 − c`` (no resampling). Rows (v) are unchanged.

    Args:
        texture_uv: (..., Ht, Wt).

    Returns:
        (..., Ht, Wt).
    """
    return torch.flip(texture_uv, dims=[-1])


def albedo_symmetry_loss(
    albedo_uv: torch.Tensor,
    uv_mask: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
    eps: float = EPS,
) -> torch.Tensor:
    r"""Masked MSE between a UV albedo and its own mirror image (``u → 1 − u``).

    Per sample:
    :math:`L_b = \sum m\,m^{\leftrightarrow}\,(A - A^{\leftrightarrow})^2 / (\sum m\,m^{\leftrightarrow} + \epsilon)`
    with :math:`X^{\leftrightarrow}` = :func:`mirror_uv` (X), summed over channels and texels; a texel counts
    only where it *and* its mirror are valid. Each mirror pair appears twice (once from each side), and no side
    is detached, so the gradient pulls both texels to their average. A mirror-symmetric albedo scores 0.

    Paper role: the UV half of the symmetric reconstruction (see the module docstring); pass as ``uv_mask``
    the UV validity mask, optionally times a "not visible in the image" mask to constrain only hidden texels.

    Args:
        albedo_uv: (B, C, Ht, Wt) predicted albedo, row 0 is v = 1.
        uv_mask: (Ht, Wt), (B, Ht, Wt) or (1 | B, 1 | C, Ht, Wt) nonnegative weights; None = all texels.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` → (B,).
        eps: added to the per-sample mask sum; an empty mask gives 0 with a zero gradient.
    """
    _check_reduction(reduction)
    if albedo_uv.dim() != 4:
        raise ValueError(f"albedo_uv: expected shape (B, C, Ht, Wt), got {tuple(albedo_uv.shape)}")
    m = _image_mask(uv_mask, albedo_uv, "uv_mask")
    weight = m * mirror_uv(m)
    return _reduce(_masked_mse(albedo_uv, mirror_uv(albedo_uv), weight, eps), reduction)


@dataclass(frozen=True)
class SymmetricReconstruction:
    """The terms of :func:`symmetric_reconstruction_loss` (scalars, or (B,) with ``reduction="none"``).

    Attributes:
        image: masked image MSE (:func:`reconstruction_loss`).
        albedo_symmetry: UV albedo vs its mirror (:func:`albedo_symmetry_loss`).
        albedo_target: UV albedo vs the target albedo, None when no target was given.
        total: ``image + symmetry_weight · albedo_symmetry + target_weight · albedo_target``.
    """

    image: torch.Tensor
    albedo_symmetry: torch.Tensor
    albedo_target: torch.Tensor | None
    total: torch.Tensor

    def terms(self) -> dict[str, torch.Tensor]:
        """Unweighted terms keyed by :class:`LossWeights` field names, for :func:`combine`."""
        out = {"reconstruction": self.image, "albedo_symmetry": self.albedo_symmetry}
        if self.albedo_target is not None:
            out["albedo_target"] = self.albedo_target
        return out


def symmetric_reconstruction_loss(
    rendered: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    albedo_uv: torch.Tensor,
    *,
    uv_mask: torch.Tensor | None = None,
    target_albedo_uv: torch.Tensor | None = None,
    target_albedo_mask: torch.Tensor | None = None,
    symmetry_weight: float = 1.0,
    target_weight: float = 1.0,
    reduction: Reduction = "mean",
    eps: float = EPS,
) -> SymmetricReconstruction:
    r"""AlbedoGAN's symmetric reconstruction: the image *and* the UV albedo are reconstructed.

    :math:`L = L_{img} + \lambda_{sym} L_{sym} + \lambda_{tgt} L_{tgt}` with

    * :math:`L_{img}` = :func:`reconstruction_loss` (rendered, target, mask): masked image MSE;
    * :math:`L_{sym}` = :func:`albedo_symmetry_loss` (albedo_uv, uv_mask): the albedo against its mirror
      ``u → 1 − u`` (face centre u = 0.5) where both texels are valid;
    * :math:`L_{tgt}` = masked MSE of albedo_uv against ``target_albedo_uv`` over
      ``uv_mask · target_albedo_mask`` — only when a target albedo is given (the flip-corrected extracted
      texture of the data pipeline, or synthetic ground truth); otherwise None and left out of the total.

    See the module docstring for how this reads the paper. Set ``symmetry_weight=0`` to use only the target
    (the symmetry term is still computed and reported). For training with :class:`LossWeights`, feed
    :meth:`SymmetricReconstruction.terms` to :func:`combine` instead of ``total``.

    Args:
        rendered: (B, 3, H, W) render (``RenderOutputs.image``).
        target: (B, 3, H, W) image.
        mask: image-space weights, as in :func:`reconstruction_loss` (e.g. ``RenderOutputs.mask``); None = all.
        albedo_uv: (B, 3, Ht, Wt) predicted UV albedo (AlbedoGAN output), row 0 is v = 1.
        uv_mask: UV validity weights (Ht, Wt), (B, Ht, Wt) or (1 | B, 1 | 3, Ht, Wt); None = all texels.
        target_albedo_uv: optional (B, 3, Ht, Wt) target albedo.
        target_albedo_mask: optional weights of the target's valid texels (same shapes as ``uv_mask``).
        symmetry_weight, target_weight: the λ above (≥ 0).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (every term (B,)).
        eps: added to every mask sum; an empty mask makes its term 0 with a zero gradient.

    Returns:
        :class:`SymmetricReconstruction` with the terms and the weighted total.
    """
    if not (symmetry_weight >= 0 and target_weight >= 0):
        raise ValueError(f"weights must be >= 0, got symmetry {symmetry_weight}, target {target_weight}")
    if target_albedo_uv is None and target_albedo_mask is not None:
        raise ValueError("target_albedo_mask given without target_albedo_uv")
    image = reconstruction_loss(rendered, target, mask, reduction=reduction, eps=eps)
    sym = albedo_symmetry_loss(albedo_uv, uv_mask, reduction=reduction, eps=eps)
    total = image + symmetry_weight * sym
    tgt = None
    if target_albedo_uv is not None:
        _check_images(albedo_uv, target_albedo_uv, ("albedo_uv", "target_albedo_uv"))
        weight = _image_mask(uv_mask, albedo_uv, "uv_mask") * _image_mask(
            target_albedo_mask, albedo_uv, "target_albedo_mask"
        )
        tgt = _reduce(_masked_mse(albedo_uv, target_albedo_uv, weight, eps), reduction)
        total = total + target_weight * tgt
    return SymmetricReconstruction(image=image, albedo_symmetry=sym, albedo_target=tgt, total=total)


# ---------------------------------------------------------------------------------------------- identity, perceptual
def identity_loss(
    emb_a: torch.Tensor, emb_b: torch.Tensor, *, reduction: Reduction = "mean", eps: float = EPS
) -> torch.Tensor:
    r"""Cosine distance between face embeddings: :math:`L_b = 1 - \langle a_b/\|a_b\|, e_b/\|e_b\| \rangle`.

    Both inputs are L2-normalised here (``F.normalize`` with ``eps``), so raw or already-normalised
    embeddings (``FaceEmbedder.forward``) both work. Range [0, 2]: 0 for the same direction. Paper role: the
    identity term between the render and the input image in the shape and albedo steps.

    Args:
        emb_a, emb_b: (B, D) embeddings (e.g. of the render and of the image).
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).
        eps: norm floor of the normalisation (a zero embedding counts as orthogonal to everything).
    """
    _check_reduction(reduction)
    if emb_a.dim() != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"emb_a, emb_b: expected two (B, D) of one shape, got {tuple(emb_a.shape)}, {tuple(emb_b.shape)}"
        )
    a = F.normalize(emb_a, dim=-1, eps=eps)
    b = F.normalize(emb_b, dim=-1, eps=eps)
    return _reduce(1.0 - (a * b).sum(-1), reduction)


def perceptual_loss(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Weighted sum over layers of the mean squared feature difference.

    :math:`L_b = \sum_l w_l \cdot \operatorname{mean}_{c,h,w}\,(\phi_l(a)_b - \phi_l(b)_b)^2` — the squared
    L2 distance of each layer's activations, normalised by the layer's size so deep (small) and shallow
    (large) layers are comparable; ``w_l`` = 1 by default. Paper role: the perceptual term between render
    and image, on the face-embedding network's intermediate activations (``FaceEmbedder.features``).

    Args:
        feats_a, feats_b: equally long lists of (B, ...) activations, pairwise of one shape.
        weights: one nonnegative weight per layer; None = all 1.
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).
    """
    _check_reduction(reduction)
    if len(feats_a) == 0 or len(feats_a) != len(feats_b):
        raise ValueError(
            f"feats_a, feats_b: expected two non-empty lists of one length, got {len(feats_a)}, {len(feats_b)}"
        )
    if weights is None:
        weights = [1.0] * len(feats_a)
    if len(weights) != len(feats_a) or not all(float(w) >= 0 for w in weights):
        raise ValueError(f"weights: expected {len(feats_a)} values >= 0 (one per layer), got {list(weights)}")
    per_layer = []
    for layer, (fa, fb, w) in enumerate(zip(feats_a, feats_b, weights, strict=True)):
        if fa.shape != fb.shape or fa.dim() < 2:
            raise ValueError(
                f"layer {layer}: expected two (B, ...) of one shape, got {tuple(fa.shape)}, {tuple(fb.shape)}"
            )
        per_layer.append(float(w) * (fa - fb).square().flatten(1).mean(1))
    return _reduce(torch.stack(per_layer).sum(0), reduction)


# ---------------------------------------------------------------------------------------------- landmarks
def ibug68_landmark_weights(
    jaw: float = 0.5, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """(68,) per-landmark weights: 1 everywhere, ``jaw`` on the jaw contour (iBUG 0–16). Ours, not the paper's."""
    w = torch.ones(68, dtype=dtype, device=device)
    w[list(IBUG68_JAW)] = jaw
    return w


def landmark_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    visibility: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
    eps: float = EPS,
) -> torch.Tensor:
    r"""Weighted mean per-landmark Euclidean distance (not squared).

    Per sample: :math:`L_b = \sum_n c_{b,n} \|\hat x_{b,n} - x_{b,n}\|_2 / (\sum_n c_{b,n} + \epsilon)` with
    :math:`c = w_n \cdot v_{b,n}` (weights × visibility, both default 1). The distance is in the units of the
    inputs (pixels, or NDC: pick the weight accordingly). A sample with no visible landmark gives 0 with a zero
    gradient; a landmark exactly on target has gradient 0 (not NaN). Paper role: the 68-landmark term of the
    shape step (model landmarks ``FaceModel.landmarks`` projected by the camera vs detected ones).

    Args:
        pred: (B, N, D) predicted points (D = 2 for image landmarks; N = 68 for iBUG).
        target: (B, N, D) ground truth.
        weights: (N,) or (B, N) nonnegative per-landmark weights, e.g. :func:`ibug68_landmark_weights`.
        visibility: (N,) or (B, N) in [0, 1] (bool allowed).
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).
        eps: added to the per-sample weight sum.
    """
    _check_reduction(reduction)
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            f"pred, target: expected two (B, N, D) of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    B, N = pred.shape[:2]
    c = _per_point_weights(weights, visibility, B, N, pred)
    valid = c > 0
    zero = pred.new_zeros(())
    diff = torch.where(valid[..., None], pred, zero) - torch.where(valid[..., None], target, zero)
    dist = _safe_norm(diff, -1)  # (B, N)
    per_sample = (c * dist).sum(1) / (c.sum(1) + eps)
    return _reduce(per_sample, reduction)


def normalised_landmark_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    visibility: torch.Tensor | None = None,
    *,
    eye_indices: tuple[int, int] = (36, 45),
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Mean point-to-point error over the inter-ocular distance (the 300-W NME), for metrics.

    :math:`E_b = \operatorname{mean}_n \|\hat x_{b,n} - x_{b,n}\| / \|x_{b,36} - x_{b,45}\|` (outer eye
    corners of the *target*, the same normaliser as :func:`models.landmarks.normalised_mean_error`).
    Unweighted; ``visibility`` restricts the mean to visible points.

    Args:
        pred, target: (B, N, D) with N > max(eye_indices) (iBUG 68 by default).
        visibility: optional (N,) or (B, N).
        eye_indices: the two target points whose distance normalises the error.
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).

    Raises:
        ValueError: a target's two eye points coincide (the check synchronises with the device).
    """
    _check_reduction(reduction)
    if pred.dim() != 3 or pred.shape != target.shape or pred.shape[1] <= max(eye_indices):
        raise ValueError(
            f"pred, target: expected two (B, N, D) of one shape with N > {max(eye_indices)}, "
            f"got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    iod = _safe_norm(target[:, eye_indices[0]] - target[:, eye_indices[1]], -1)
    if bool((iod <= 0).any()):
        raise ValueError(f"target: eye points {eye_indices} coincide (inter-ocular distance 0)")
    err = landmark_loss(pred, target, visibility=visibility, reduction="none") / iod
    return _reduce(err, reduction)


# ---------------------------------------------------------------------------------------------- codes
def shape_centre_loss(
    shape_codes: torch.Tensor,
    identity_ids: torch.Tensor | Sequence[int],
    *,
    squared: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Distance of each image's shape code to the mean shape code of its identity group in the batch.

    For image i of identity g with group :math:`G_g` (the images of the batch sharing ``identity_ids[i]``):
    :math:`L_i = \|\beta_i - \bar\beta_g\|_2` (``squared=True``: :math:`\|\cdot\|_2^2`) with
    :math:`\bar\beta_g = \frac{1}{|G_g|}\sum_{j \in G_g} \beta_j`; images alone in their group give 0. The
    gradient also flows through the mean (for the squared form this equals detaching it). Equal codes within
    every group give exactly 0 with a zero gradient.

    Paper role: AlbedoGAN's shape-consistency across the 11 w-space edits (pose, expression) of one
    StyleGAN2 identity — the identity shape must not depend on pose or expression. See the module docstring
    for squared vs not. ``reduction="mean"`` averages over all B images, singletons included (as zeros): build
    batches of whole identity groups (the data source's 11 images per identity).

    Args:
        shape_codes: (B, K) identity shape codes (``EncoderOutputs.shape``).
        identity_ids: (B,) integer identity labels (any values; only equality matters).
        squared: use the squared distance.
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).
    """
    _check_reduction(reduction)
    if shape_codes.dim() != 2:
        raise ValueError(f"shape_codes: expected shape (B, K), got {tuple(shape_codes.shape)}")
    ids = torch.as_tensor(identity_ids, device=shape_codes.device)
    if ids.shape != shape_codes.shape[:1] or ids.is_floating_point() or ids.is_complex():
        raise ValueError(
            f"identity_ids: expected ({shape_codes.shape[0]},) integer labels, got {tuple(ids.shape)} {ids.dtype}"
        )
    if shape_codes.shape[0] == 0:
        return _reduce(shape_codes.sum(1), reduction)
    _, group = torch.unique(ids, return_inverse=True)
    n_groups = int(group.max()) + 1
    counts = torch.bincount(group, minlength=n_groups)
    sums = shape_codes.new_zeros(n_groups, shape_codes.shape[1]).index_add(0, group, shape_codes)
    centre = (sums / counts.to(shape_codes.dtype)[:, None]).index_select(0, group)
    diff = shape_codes - centre
    dist = diff.square().sum(1) if squared else _safe_norm(diff, -1)
    dist = torch.where(counts.index_select(0, group) > 1, dist, torch.zeros_like(dist))
    return _reduce(dist, reduction)


def l2_prior(
    codes: torch.Tensor,
    prior_mean: torch.Tensor | None = None,
    prior_chol: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Squared L2 norm of codes, optionally the squared Mahalanobis distance under a Gaussian prior.

    Per sample: :math:`L_b = \|c_b - \mu\|_2^2` (μ = 0 by default), or with ``prior_chol`` = L
    (:math:`\Sigma = L L^\top`, lower triangular, as ``FaceModel.shape_prior_chol``):
    :math:`L_b = (c_b-\mu)^\top \Sigma^{-1} (c_b-\mu) = \|L^{-1}(c_b - \mu)\|_2^2`, computed with a triangular
    solve (never an inverse). Summed over the code dimension, then reduced over the batch. Paper role: the
    regularisers on shape, expression and detail (displacement) codes; for shape, the Mahalanobis form under
    the face model's generation prior keeps fitted heads plausible without shrinking them to the mean.

    Note the authors' DECA-derived code uses ``Σ_batch Σ_k c² / 2`` (a batch *sum*, halved); ours is a batch
    mean, so its weight is ``λ_theirs · B / 2`` for the same strength at batch size B.

    Args:
        codes: (B, K); with neither prior argument any (B, ...) (all non-batch elements are summed).
        prior_mean: optional (K,) mean.
        prior_chol: optional (K, K) lower Cholesky factor of the prior covariance (only its lower triangle
            is read).
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` → (B,).
    """
    _check_reduction(reduction)
    if codes.dim() < 1:
        raise ValueError("codes: expected shape (B, ...), got a scalar")
    if prior_mean is None and prior_chol is None:
        return _reduce(codes.flatten(1).square().sum(1) if codes.dim() > 1 else codes.square(), reduction)
    if codes.dim() != 2:
        raise ValueError(f"codes: expected shape (B, K) with a prior, got {tuple(codes.shape)}")
    K = codes.shape[1]
    diff = codes
    if prior_mean is not None:
        if prior_mean.shape != (K,):
            raise ValueError(f"prior_mean: expected shape ({K},), got {tuple(prior_mean.shape)}")
        diff = codes - prior_mean.to(dtype=codes.dtype)
    if prior_chol is not None:
        if prior_chol.shape != (K, K):
            raise ValueError(f"prior_chol: expected shape ({K}, {K}), got {tuple(prior_chol.shape)}")
        L = prior_chol.to(dtype=codes.dtype)
        diff = torch.linalg.solve_triangular(L, diff.T, upper=False).T
    return _reduce(diff.square().sum(1), reduction)


# ---------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; field names are the term names :func:`combine` accepts.

    Sources. "code": the authors' released configuration (``decalib/utils/config.py`` of
    aashishrai3799/Towards-Realistic-Generative-3D-Face-Models, inherited from DECA); the term there is not
    always the same formula as ours, so treat those as starting points. "ours": no published value.

    Attributes:
        reconstruction: 2.0 — code ``loss.photo`` (theirs is a masked L1, ours MSE).
        albedo_symmetry: 1.0 — ours.
        albedo_target: 2.0 — code ``loss.photo_D``, the weight of the UV-albedo L1 in their albedo step.
        identity: 0.2 — code ``loss.id``.
        perceptual: 0.1 — code ``photo_D · mrf`` = 2 · 0.05 (their perceptual term is ID-MRF on VGG19).
        landmark: 1.0 — code ``loss.lmk`` (theirs is L1 on [-1, 1] image coordinates; use NDC landmarks).
        shape_centre: 1.0 — ours (the code's ``shape_consistency`` is an on/off shape swap).
        shape_prior: 1e-4 — code ``loss.reg_shape`` (batch-sum convention, see :func:`l2_prior`).
        expression_prior: 1e-4 — code ``loss.reg_exp`` (same caveat).
        detail_prior: 1e-4 — ours (the code does not regularise the detail code).
        displacement_smoothness: 0.005 — code ``loss.reg_diff`` (theirs smooths the detail shading; ours is
            :func:`displacement_smoothness` — pass displacement in mm).
        displacement_magnitude: 0.005 — code ``loss.reg_z`` (theirs mean |d|; ours mean d², mm²).
    """

    reconstruction: float = 2.0
    albedo_symmetry: float = 1.0
    albedo_target: float = 2.0
    identity: float = 0.2
    perceptual: float = 0.1
    landmark: float = 1.0
    shape_centre: float = 1.0
    shape_prior: float = 1e-4
    expression_prior: float = 1e-4
    detail_prior: float = 1e-4
    displacement_smoothness: float = 0.005
    displacement_magnitude: float = 0.005

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"LossWeights.{f.name}: expected a finite number >= 0, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        """``{term name: weight}``."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> LossWeights:
        """Defaults overridden by ``data`` (e.g. a YAML ``weights:`` section); unknown names raise ValueError."""
        return parse_section(cls, data, "weights")


def combine(
    terms: Mapping[str, torch.Tensor], weights: LossWeights | Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Weighted sum of scalar loss terms, plus plain floats for logging.

    :math:`L = \sum_k \lambda_k L_k` over the given terms. Terms whose weight is 0 are left out of the sum
    (so a disabled term can never inject NaN) but still logged.

    Args:
        terms: ``{name: scalar tensor}``; every name must have a weight.
        weights: :class:`LossWeights` or a ``{name: weight}`` mapping.

    Returns:
        ``(total, log)``: total is a scalar tensor (differentiable); log maps each term name to its unweighted
        value and ``"total"`` to the total, as floats (one device sync).

    Raises:
        ValueError: no terms, a term without a weight, or a term that is not a scalar.
    """
    w = weights.as_dict() if isinstance(weights, LossWeights) else {k: float(v) for k, v in weights.items()}
    if not terms:
        raise ValueError("terms: nothing to combine")
    missing = sorted(set(terms) - set(w))
    if missing:
        raise ValueError(f"terms {missing} have no weight; known: {sorted(w)}")
    if "total" in terms:
        raise ValueError("'total' is reserved for the combined loss")
    for name, value in terms.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise ValueError(f"term {name!r}: expected a scalar tensor, got {getattr(value, 'shape', type(value))}")
    first = next(iter(terms.values()))
    total = first.new_zeros(())
    for name, value in terms.items():
        if w[name] != 0:
            total = total + w[name] * value
    values = torch.stack([v.detach().to(total.dtype) for v in terms.values()] + [total.detach()]).tolist()
    log = dict(zip([*terms, "total"], values, strict=True))
    return total, log
