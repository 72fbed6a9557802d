"""Synthetic identity sets for identity-from-features work: who the face is, several views, aligned dlib chips.

* :func:`sample_identity_shapes` draws identity codes from the face model's generation prior (plausible adults,
  ``shape_prior_mean`` + ``shape_prior_chol`` · ε), from the *wide* basis itself (the basis is scaled so that
  the wide build sample — every face change over its full range, all ages and phenotypes — has zero mean and
  unit variance per coefficient, so wide identities are N(0, I)), or from a 50/50 mixture; given the identities'
  albedos, the prior draws follow the sex, age and skin those show (:mod:`training.data.phenotype`).
* :func:`render_identity_chips` renders ``views`` images of every identity (each view its own expression, pose,
  light, framing and background from the synthetic stream; the identity's albedo is the one of its first view,
  so skin, hair, brows and beard stay with the person) and cuts dlib's aligned face chip
  (:func:`models.identity.extract_dlib_chip`, 68 projected ground-truth landmarks) out of each.
* :func:`embed_chips` runs the frozen recogniser over the chips: dlib's raw 128-d descriptor and the 256-d
  penultimate features it is a linear map of.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from facecore.detect import DLIB5_TO_IBUG68, detect_landmarks5
from models.face.model import FaceCodes, FaceModel
from models.identity import DLIB_INPUT_SIZE, FaceEmbedder, extract_dlib_chip
from training.data.phenotype import phenotype_shapes
from training.data.procedural_albedo import AlbedoParams
from training.data.synthetic import SyntheticFaces, head_angles_deg

IDENTITY_SAMPLINGS: tuple[str, ...] = ("prior", "wide", "mixed")
CHIP_ALIGNMENTS: tuple[str, ...] = ("gt68", "gt5", "detect5")


def sample_identity_shapes(
    face_model: FaceModel,
    n: int,
    generator: torch.Generator,
    sampling: str = "prior",
    wide_scale: float = 1.0,
    wide_fraction: float = 0.5,
    prior_scale: float = 1.0,
    albedo: AlbedoParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, K) float32 identity codes and (n,) bool "drawn from the wide basis".

    Args:
        face_model: the face model (its generation prior and the number of components K).
        n: number of identities.
        generator: CPU generator of the draws.
        sampling: ``prior`` (plausible adults), ``wide`` (N(0, wide_scale² I) in basis coordinates: the wide
            build sample's distribution) or ``mixed`` (each identity wide with probability ``wide_fraction``).
        wide_scale: spread of the wide draws (1: the wide build sample's).
        wide_fraction: the mixture weight of ``mixed``.
        prior_scale: multiplies the generation prior's spread (1: plausible adults as built).
        albedo: the identities' albedos: the prior draws follow their sex, age and skin
            (:func:`training.data.phenotype.phenotype_shapes`, ``prior_scale`` scaling what those do not explain);
            None: independent of the albedo.
    """
    if sampling not in IDENTITY_SAMPLINGS:
        raise ValueError(f"sampling: expected one of {IDENTITY_SAMPLINGS}, got {sampling!r}")
    if n < 1 or not wide_scale > 0 or not prior_scale > 0 or not 0.0 <= wide_fraction <= 1.0:
        raise ValueError(f"bad arguments: {n=}, {wide_scale=}, {prior_scale=}, {wide_fraction=}")
    K = face_model.n_shape
    mean = face_model.shape_prior_mean.detach().cpu().double()
    chol = face_model.shape_prior_chol.detach().cpu().double()
    eps = torch.randn(n, K, generator=generator, dtype=torch.float64)
    if sampling == "prior":
        wide = torch.zeros(n, dtype=torch.bool)
    elif sampling == "wide":
        wide = torch.ones(n, dtype=torch.bool)
    else:
        wide = torch.rand(n, generator=generator, dtype=torch.float64) < wide_fraction
    if albedo is None:
        prior = mean + prior_scale * eps @ chol.T
    else:
        if len(albedo) != n:
            raise ValueError(f"albedo: expected {n} parameter sets, got {len(albedo)}")
        prior = phenotype_shapes(face_model, albedo.to("cpu"), generator, prior_scale).double()
    shapes = torch.where(wide[:, None], wide_scale * eps, prior)
    return shapes.float(), wide


@dataclass(frozen=True)
class IdentityChips:
    """Aligned chips of ``views`` renders per identity.

    Attributes:
        shapes: (N, K) float32 true identity codes.
        chips: (N, views, S, S, 3) uint8 RGB dlib chips (S = ``chip_size``, 150 for the recogniser).
        yaw_deg: (N, views) head yaw of each render (degrees).
        male: (N,) the albedo's sex cue (1 male, 0 female) of each identity.
        detected: (N, views) bool, the chip was aligned on detected points (always False unless ``detect5``).
    """

    shapes: np.ndarray
    chips: np.ndarray
    yaw_deg: np.ndarray
    male: np.ndarray
    detected: np.ndarray


def render_identity_chips(
    faces: SyntheticFaces,
    shapes: torch.Tensor,
    views: int,
    first_index: int = 0,
    chip_size: int = DLIB_INPUT_SIZE,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    align: str = "gt5",
    cut: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> IdentityChips:
    """Render ``views`` images of each identity and cut their dlib chips.

    Identity ``i`` view ``v`` is synthetic sample ``first_index + i·views + v`` of ``faces`` (its own expression,
    pose, light, framing, background) with the identity code ``shapes[i]`` and the albedo of the identity's
    view 0. Chips are aligned (``align``) on the 68 projected ground-truth landmarks with dlib's 68-point chip
    template (``gt68``), on the five of them dlib's 5-point model marks (:data:`facecore.detect.DLIB5_TO_IBUG68`)
    with its 5-point template, as ``/reconstruct`` aligns photos (``gt5``), or on the points dlib's detector and
    5-point model find in the render (``detect5``; ``gt5`` where no face is found).

    Args:
        faces: the synthetic source (its ``image_size`` is the render size).
        shapes: (N, K) identity codes.
        views: renders per identity (≥ 1).
        first_index: the first synthetic sample index used.
        chip_size: chip side in pixels.
        batch_size: renders per batch.
        progress: called with (done, total) renders after each batch.
        align: ``gt68``, ``gt5`` or ``detect5`` (see above).
        cut: ``(image, points) → (chip_size, chip_size, 3) uint8 chip``; None: :func:`extract_dlib_chip`
            (dlib's chip bit for bit). ``training.identity`` passes the service's own
            :meth:`facecore.identity.FaceRecogniser.chip`.
    """
    if align not in CHIP_ALIGNMENTS:
        raise ValueError(f"align: expected one of {CHIP_ALIGNMENTS}, got {align!r}")
    shapes = torch.as_tensor(shapes, dtype=torch.float32).cpu()
    if shapes.ndim != 2 or shapes.shape[1] != faces.face_model.n_shape or views < 1 or first_index < 0:
        raise ValueError(f"bad arguments: shapes {tuple(shapes.shape)}, {views=}, {first_index=}")
    N = len(shapes)
    total = N * views
    chips = np.zeros((total, chip_size, chip_size, 3), np.uint8)
    yaw = np.zeros(total, np.float32)
    male = np.zeros(total, np.float32)
    detected = np.zeros(total, bool)
    for start in range(0, total, batch_size):
        members = list(range(start, min(total, start + batch_size)))
        indices = [first_index + m for m in members]
        albedo, scene = faces.sample_params(indices)
        anchor_indices = [first_index + (m // views) * views for m in members]
        anchor_albedo, _ = faces.sample_params(sorted(set(anchor_indices)))
        row = {a: r for r, a in enumerate(sorted(set(anchor_indices)))}
        albedo = AlbedoParams.select(anchor_albedo, torch.tensor([row[a] for a in anchor_indices]))
        ident = shapes[torch.tensor([m // views for m in members])]
        codes = FaceCodes(ident, scene.codes.expression, scene.codes.pose)
        scene = dataclasses.replace(scene, codes=codes)
        out = faces.render(torch.tensor(indices), albedo.to(faces.device), scene.to(faces.device))
        images = (out.image_srgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        points = out.landmarks_px.double().cpu().numpy()
        for k, m in enumerate(members):
            pts = points[k] if align == "gt68" else points[k][list(DLIB5_TO_IBUG68)]
            if align == "detect5":
                found = detect_landmarks5(images[k])
                if found:
                    pts, detected[m] = found[0].points, True
            chips[m] = extract_dlib_chip(images[k], pts, size=chip_size) if cut is None else cut(images[k], pts)
        yaw[members] = head_angles_deg(out.codes.pose.cpu())[:, 0].numpy()
        male[members] = albedo.male.cpu().numpy()
        if progress is not None:
            progress(members[-1] + 1, total)
    return IdentityChips(
        shapes=shapes.numpy(),
        chips=chips.reshape(N, views, chip_size, chip_size, 3),
        yaw_deg=yaw.reshape(N, views),
        male=male.reshape(N, views)[:, 0],
        detected=detected.reshape(N, views),
    )


@torch.no_grad()
def embed_chips(embedder: FaceEmbedder, chips: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """dlib's raw descriptors (…, 128) and penultimate features (…, 256) of (…, S, S, 3) uint8 chips (float32)."""
    chips = np.asarray(chips)
    if chips.dtype != np.uint8 or chips.ndim < 4 or chips.shape[-1] != 3:
        raise ValueError(f"chips: expected (..., S, S, 3) uint8, got {chips.shape} {chips.dtype}")
    lead = chips.shape[:-3]
    flat = chips.reshape(-1, *chips.shape[-3:])
    desc, pooled = [], []
    for start in range(0, len(flat), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(flat[start : start + batch_size])).permute(0, 3, 1, 2).float() / 255.0
        p = embedder.pooled(x)
        pooled.append(p.numpy())
        desc.append(embedder.fc(p).numpy())
    return (
        np.concatenate(desc).reshape(*lead, -1).astype(np.float32),
        np.concatenate(pooled).reshape(*lead, -1).astype(np.float32),
    )
