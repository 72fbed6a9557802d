"""Texture extraction and correction (AlbedoGAN seed §1.1): fit the face model to a photo, unwrap, de-light.

The recipe, step by step:

1. **Fit** (:func:`fit_faces` / :func:`fit_face`): Adam on the face model's identity (whitened by the generation
   prior: ``β = μ + L·ε``), expression (ARKit weights, projected onto [0, 1]; gaze shapes stay 0), pose (global +
   jaw), weak-perspective camera (log scale, translation) and SH light. Three stages over one step budget:
   *rigid* (landmarks → pose and camera, from a closed-form affine initialisation), *landmarks* (+ identity,
   expression, jaw), *photometric* (+ light and skin colour; landmarks and priors stay on).

   - landmark loss: weighted mean 2-D distance in NDC units between the model's 68 projected landmarks and the
     detected ones; the jaw contour (iBUG 0–16) is down-weighted because detectors put it on the silhouette,
     which the model's fixed surface points only follow for frontal faces;
   - photometric loss: masked L1 between the render and the linearised photo over the *facial skin* only
     (forehead to chin, eyes, brows, lips and nostrils cut out), rendered at ``FitConfig.render_size``. The
     render's albedo is **one mean skin colour per image** (linear RGB, optimised jointly): a flat albedo keeps
     the light identifiable (a spatially free albedo would absorb the shading) and the robust L1 tolerates the
     freckles, make-up and beard the flat colour does not model;
   - priors: ``‖ε‖²`` (Mahalanobis distance under the generation prior, via its Cholesky factor), ``‖ψ‖²`` for
     the expression, ``‖sh₁…₈‖²`` towards a purely ambient light, a small jaw-rotation L2.

   Albedo and light are only known up to a common scale (``albedo·k`` under ``light/k`` renders the same image).
   During the fit the light's constant term is held at ``FitConfig.ambient`` (white); the result is then
   rescaled (render unchanged) to the convention **the brightest facial skin receives irradiance 1** (98th
   percentile of the fitted shading over the facial-skin pixels): a white surface there would render white.
   When that would make the skin colour exceed ``FitConfig.max_skin_albedo`` (an over-exposed photo) the light
   takes the excess instead. Camera exposure and the light's strength are not separable from the albedo, so
   the de-lit albedo's absolute level follows this convention while its spatial and chromatic structure
   follows the photo; accuracy is reported both as it is and after one least-squares gain per channel (see
   ``benchmarks/texture_extraction.py``).

2. **Extract** (:func:`extract_texture`): :func:`facecore.texture.unwrap` with the fitted posed mesh, camera and
   light. It colours each texel that is visible from the camera (z-buffer), i.e. per-vertex colours mapped to the
   cylindrical UV and filled by 2-D barycentric interpolation inside each triangle; texels on the hidden side take
   the colour of their mirror texel (u → 1 − u: the flipped image projected onto the same mesh; which side is
   hidden follows from the pose), the rest the mean; dividing by the fitted SH shading de-lights into albedo.
   "Hidden" includes texels seen at a grazing angle (normal·view < ``min_facing`` = 0.35): near the silhouette
   they are blurred and pick up background or hair when the fit is a few pixels off, and their mirror, seen
   frontally, is the better estimate (measured: +0.9 dB on the facial skin vs the renderer's 0.05).
   Correction of what division cannot fix: a seen texel whose shading is below ``min_shading`` (attached
   shadow: the division would amplify noise and the model's unmodelled cast shadows) or whose photo colour is
   clipped (≥ ``clip_level`` in a channel: the true radiance is unknown) is **not valid**; it takes the albedo of
   its mirror texel when that one is valid, else a local average of the valid albedo around it (normalised
   Gaussian convolution). ``valid`` marks the texels whose albedo is a direct, trustworthy measurement.

3. **CLI stage** (:func:`run`, ``python -m training.run extract``): a folder of photos (dlib 68 landmarks → aligned
   crop → fit → extraction from the full-resolution photo) or renders of the synthetic source; writes the
   AlbedoGAN training set ``albedo/NNNNNN.png`` (8-bit sRGB UV maps), ``shading/`` and ``mask/`` PNGs,
   ``fits.jsonl`` (codes and errors per image) and ``summary.json``; resumable.

Colour: photos are sRGB-encoded; fitting and de-lighting run on linear values (shading multiplies linear
albedo); albedo maps are written sRGB-encoded like every albedo image of the project.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facecore import texture as uv_texture
from facecore.color import linear_to_srgb, srgb_to_linear, to_uint8
from facecore.geometry import FaceModelArrays
from models.face.model import FaceCodes, FaceModel
from models.render import MeshRenderer, WeakPerspectiveCamera, rasterize

logger = logging.getLogger(__name__)

JAW_CONTOUR = slice(0, 17)
"""iBUG indices of the jaw contour (detectors place it on the silhouette)."""
SHADING_PNG_SCALE = 2.0
"""``shading/*.png`` stores linear shading / SHADING_PNG_SCALE in 8 bits (shading can exceed 1)."""
MASK_PNG_VALUES = {"outside": 0, "mean_filled": 64, "mirrored": 128, "seen_invalid": 192, "seen_valid": 255}
"""``mask/*.png`` (8-bit grey) per texel: outside the skin, mean-filled, mirrored, seen but not valid (shadow or
clipping, corrected), seen and valid (:attr:`ExtractedTexture.valid`)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _image_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 or float [0, 1] → float64 [0, 1]."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected (H, W, 3) RGB, got {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if not np.issubdtype(img.dtype, np.floating) or not np.all(np.isfinite(img)):
        raise ValueError(f"{name}: expected uint8 or finite floats in [0, 1], got {img.dtype}")
    return np.clip(img.astype(np.float64), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Facial-skin region of the face model (where the flat-albedo photometric term applies)
# ---------------------------------------------------------------------------------------------------------------


def landmark_uv(arrays: FaceModelArrays) -> np.ndarray:
    """(68, 2) UV position (v up) of each landmark of the face model's embedding."""
    corners = arrays.uv[arrays.uv_faces[arrays.landmark_faces]].astype(np.float64)  # (68, 3, 2)
    return np.einsum("lk,lkc->lc", arrays.landmark_bary.astype(np.float64), corners)


_REGION_CACHE: dict[int, np.ndarray] = {}


def face_region(arrays: FaceModelArrays, resolution: int = 512) -> np.ndarray:
    """(F,) float32 weight per triangle: 1 on the facial skin, 0 elsewhere (cached per model).

    The region is drawn in UV from the model's own landmark layout: the polygon of the jaw contour closed by the
    eyebrows lifted by 1.6 brow-to-eye distances (the forehead), minus the eyes (their contour scaled 1.7× about
    its centre), the eyebrows (a band along them), the lips (outer contour scaled 1.2×) and the nostrils; only
    skin triangles (``face_part == 0``) count. A triangle is in when its UV centroid is.
    """
    key = id(arrays)
    if key in _REGION_CACHE:
        return _REGION_CACHE[key]
    from PIL import Image, ImageDraw

    lm = landmark_uv(arrays)
    R = resolution

    def px(points: np.ndarray) -> list[tuple[float, float]]:
        return [(float(u * R), float((1.0 - v) * R)) for u, v in points]

    def scaled(idx: Sequence[int], factor: float) -> np.ndarray:
        p = lm[list(idx)]
        c = p.mean(0)
        return c + (p - c) * factor

    brow_to_eye = float(lm[17:27, 1].mean() - lm[36:48, 1].mean())
    forehead = lm[26:16:-1].copy()
    forehead[:, 1] += 1.6 * brow_to_eye
    mask = Image.new("L", (R, R), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(px(np.concatenate([lm[0:17], forehead])), fill=255)
    for eye in (range(36, 42), range(42, 48)):
        draw.polygon(px(scaled(eye, 1.7)), fill=0)
    width = max(1, int(round(0.45 * brow_to_eye * R)))
    for brow in (range(17, 22), range(22, 27)):
        draw.line(px(lm[list(brow)]), fill=0, width=width, joint="curve")
    draw.polygon(px(scaled(range(48, 60), 1.2)), fill=0)
    draw.polygon(px(scaled([31, 32, 33, 34, 35], 1.4)), fill=0)
    grid = np.asarray(mask) > 0
    centroid = arrays.uv[arrays.uv_faces].astype(np.float64).mean(1)
    col = np.clip((centroid[:, 0] * R).astype(np.int64), 0, R - 1)
    row = np.clip(((1.0 - centroid[:, 1]) * R).astype(np.int64), 0, R - 1)
    weight = (grid[row, col] & (arrays.face_part == 0)).astype(np.float32)
    weight.setflags(write=False)
    _REGION_CACHE[key] = weight
    return weight


# ---------------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of :func:`fit_faces`.

    The defaults were chosen on 24 synthetic renders (``SyntheticConfig(seed=1000)``, dlib landmarks), disjoint
    from the benchmark's faces: a strong photometric weight (10) improved the landmark error and the albedo
    (the shading normals pull the pose), 400 steps did no better than 200, and a weaker shape prior
    (1e-3 … 2e-5) let dlib's landmark noise into the identity (worse than the prior mean).

    Attributes:
        steps: Adam steps in all.
        rigid_fraction: the first ``rigid_fraction · steps`` steps move only the global pose and the camera.
        landmark_fraction: until ``landmark_fraction · steps`` only landmarks and priors drive the fit; the
            photometric term, the light and the skin colour join afterwards.
        render_size: side of the photometric render (the photo is resized to it, antialiased).
        jaw_weight: weight of each jaw-contour landmark relative to the inner ones.
        w_landmark, w_photo, w_shape, w_expression, w_sh, w_jaw: loss weights (landmarks in NDC units, the
            photo term in linear intensity, priors as sums of squares).
        lr_pose, lr_camera, lr_shape, lr_expression, lr_sh, lr_colour: Adam learning rates.
        ambient: the light's constant SH term (white) held during the fit (the result is rescaled to the
            peak-irradiance convention afterwards).
        max_skin_albedo: the largest linear skin colour channel the scale convention may produce (the lightest
            skin of the synthetic source's optical model is ≈ 0.70 in red); brighter means an over-exposed photo,
            and the light takes the excess.
        photo_geometry: let the photometric term move the geometry (shape, expression, pose, camera) through
            the shading normals; False fits only the light and skin colour to the photo (cheaper).
    """

    steps: int = 200
    rigid_fraction: float = 0.15
    landmark_fraction: float = 0.5
    render_size: int = 112
    jaw_weight: float = 0.1
    w_landmark: float = 1.0
    w_photo: float = 10.0
    w_shape: float = 3e-3
    w_expression: float = 1e-2
    w_sh: float = 1e-3
    w_jaw: float = 1e-3
    lr_pose: float = 0.02
    lr_camera: float = 0.01
    lr_shape: float = 0.05
    lr_expression: float = 0.02
    lr_sh: float = 0.03
    lr_colour: float = 0.03
    ambient: float = 2.5
    photo_geometry: bool = True
    max_skin_albedo: float = 0.75

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected at least 1, got {self.steps}")
        if not 0.0 <= self.rigid_fraction <= self.landmark_fraction <= 1.0:
            raise ValueError(
                f"expected 0 <= rigid_fraction <= landmark_fraction <= 1, got {self.rigid_fraction}, "
                f"{self.landmark_fraction}"
            )
        if not 16 <= self.render_size <= 1024:
            raise ValueError(f"render_size: expected 16–1024 pixels, got {self.render_size}")
        if self.ambient <= 0:
            raise ValueError(f"ambient: expected > 0, got {self.ambient}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FitConfig:
        """From a config section; unknown keys raise ValueError naming the known ones."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"fit: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class FitResult:
    """The face model fitted to one image.

    Attributes:
        shape: (K,) identity coefficients.
        expression: (E,) expression weights in [0, 1].
        pose: (J, 3) axis-angle per joint (only the global and jaw joints are fitted).
        camera: (3,) weak-perspective ``(s, tx, ty)``: ``x_ndc = s·x + tx`` (NDC spans the fitted image).
        sh: (9, 3) SH light (``models.render.shading`` convention), scaled so that the brightest facial skin
            receives irradiance 1 (see the module docstring).
        skin_colour: (3,) linear RGB flat albedo of the photometric term (same scale convention).
        losses: per loss term (``total``, ``landmark``, ``photo``, ``shape``, ``expression``, ``sh``), the
            value at each step, (steps,); NaN where a term was not active (e.g. ``photo`` in the first stages).
        landmark_error: final mean landmark distance / inter-ocular distance of the targets (NaN without
            landmarks).
        mask: (H, W) bool, pixels of the fitted image covered by the fitted head.
        image_size: (H, W) of the fitted image.
    """

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    camera: np.ndarray
    sh: np.ndarray
    skin_colour: np.ndarray
    losses: Mapping[str, np.ndarray]
    landmark_error: float
    mask: np.ndarray
    image_size: tuple[int, int]

    def codes(self, device: torch.device | str = "cpu") -> FaceCodes:
        """Batch-of-one :class:`FaceCodes` tensors."""
        return FaceCodes(
            torch.as_tensor(self.shape, dtype=torch.float32, device=device)[None],
            torch.as_tensor(self.expression, dtype=torch.float32, device=device)[None],
            torch.as_tensor(self.pose, dtype=torch.float32, device=device)[None],
        )

    def posed_vertices(self, face_model: FaceModel) -> np.ndarray:
        """(V, 3) posed vertices (metres, camera-aligned: +z towards the camera)."""
        codes = self.codes(face_model.mean.device)
        with torch.no_grad():
            return face_model(codes.shape, codes.expression, codes.pose)[0].double().cpu().numpy()

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) posed points → (N, 2) pixels of the fitted image (x right, y down, centres at integers)."""
        s, tx, ty = (float(v) for v in self.camera)
        H, W = self.image_size
        x_ndc, y_ndc = s * points[:, 0] + tx, s * points[:, 1] + ty
        return np.stack([(x_ndc + 1.0) * 0.5 * W - 0.5, (1.0 - y_ndc) * 0.5 * H - 0.5], 1)

    def landmarks_px(self, face_model: FaceModel) -> np.ndarray:
        """(68, 2) fitted landmarks in pixels of the fitted image."""
        verts = torch.as_tensor(self.posed_vertices(face_model), dtype=torch.float32, device=face_model.mean.device)
        with torch.no_grad():
            return self.to_pixels(face_model.landmarks(verts[None])[0].double().cpu().numpy())

    def to_json(self, face_model: FaceModel | None = None) -> dict[str, Any]:
        """JSON-ready codes and errors (rounded); expressions and joints by name when a face model is given."""

        def r(x: np.ndarray, nd: int = 5) -> Any:
            return np.round(np.asarray(x, np.float64), nd).tolist()

        out: dict[str, Any] = {"shape": r(self.shape)}
        if face_model is not None:
            named = zip(face_model.expr_names, self.expression, strict=True)
            out["expression"] = {n: round(float(w), 5) for n, w in named if w}
            out["pose"] = {n: r(p) for n, p in zip(face_model.joint_names, self.pose, strict=True)}
        else:
            out["expression"], out["pose"] = r(self.expression), r(self.pose)
        out.update(
            camera=r(self.camera, 6),
            sh=r(self.sh),
            skin_colour=r(self.skin_colour),
            landmark_error=None if math.isnan(self.landmark_error) else round(self.landmark_error, 5),
            final_losses={k: (None if math.isnan(v[-1]) else round(float(v[-1]), 6)) for k, v in self.losses.items()},
            image_size=list(self.image_size),
        )
        return out


def _rotation_to_axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _affine_init(model_lm: np.ndarray, target: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Closed-form weak-perspective rotation and scale taking (68, 3) model points onto (68, 2) NDC targets.

    Weighted least-squares affine camera ``x = M·X + b`` (M: 2×3), its rows orthonormalised by SVD: ``M ≈ s·R[:2]``.
    Returns the axis-angle of R (3,) and s.
    """
    X = np.concatenate([model_lm, np.ones((len(model_lm), 1))], 1)
    sw = np.sqrt(weight)[:, None]
    A, *_ = np.linalg.lstsq(X * sw, target * sw, rcond=None)
    M = A[:3].T  # (2, 3)
    u, sig, vt = np.linalg.svd(M, full_matrices=False)
    rows = u @ vt  # (2, 3), orthonormal rows
    R = np.stack([rows[0], rows[1], np.cross(rows[0], rows[1])])
    return _rotation_to_axis_angle(R), float(sig.mean())


def _hemisphere(n: int = 512) -> np.ndarray:
    """(n, 3) Fibonacci-spiral unit directions with z >= 0 (facing the camera)."""
    i = np.arange(n) + 0.5
    z = i / n
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


_HEMISPHERE = _hemisphere()


def peak_irradiance(sh: np.ndarray) -> float:
    """Largest luminance-like irradiance (mean of R, G, B) of (9, 3) SH light over the directions facing the
    camera (z >= 0): the light-scale convention of the fits sets it to 1."""
    return float(max((uv_texture.sh_basis(_HEMISPHERE) @ np.asarray(sh, np.float64)).mean(-1).max(), 1e-6))


def _photo_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Sequence of (H, W, 3) sRGB images → (B, 3, H, W) linear float32."""
    lin = [srgb_to_linear(_image_float(im, f"images[{i}]")) for i, im in enumerate(images)]
    return torch.as_tensor(np.stack(lin), dtype=torch.float32).permute(0, 3, 1, 2).contiguous()


def fit_faces(
    images: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray] | np.ndarray | None,
    face_model: FaceModel,
    renderer: MeshRenderer | None = None,
    *,
    steps: int | None = None,
    config: FitConfig = FitConfig(),
    init_camera: tuple[float, float, float] | None = None,
) -> list[FitResult]:
    """Fit the face model to a batch of images (independent fits run together; same size images).

    Args:
        images: B images (H, W, 3), sRGB-encoded, uint8 or float in [0, 1]; square (the camera's NDC spans the
            image on both axes).
        landmarks: (B, 68, 2) iBUG landmarks in pixels (x right, y down, centres at integers), or None: then the
            image must be an aligned crop (``facecore.detect.align_face`` framing) and the fit starts from
            ``init_camera`` and a frontal pose, driven by the photometric term alone (weak on pose).
        face_model: the face model (CPU or CUDA; everything runs on its device).
        renderer: a :class:`MeshRenderer` for the face model at the photometric resolution, or None to build one
            at ``config.render_size``.
        steps: overrides ``config.steps``.
        config: hyperparameters.
        init_camera: ``(s, tx, ty)`` for fits without landmarks (default: the mean face framed like an aligned
            crop at scale 1, ``models.encoder.alignment_camera``).

    Returns:
        One :class:`FitResult` per image. Deterministic for the same inputs on the same device.
    """
    if steps is not None:
        config = dataclasses.replace(config, steps=int(steps))
    if len(images) == 0:
        raise ValueError("images: expected at least one image")
    shapes = {np.asarray(im).shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images: expected images of one size, got {sorted(shapes)}")
    H, W = next(iter(shapes))[:2]
    if H != W:
        raise ValueError(f"images: expected square images (crop them, e.g. facecore.detect.align_face), got {W}×{H}")
    B = len(images)
    device = face_model.mean.device
    if renderer is None:
        renderer = MeshRenderer.from_face_model(face_model, config.render_size).to(device)
    rh, rw = renderer.image_size
    photo_full = _photo_tensor(images).to(device)
    photo = F.interpolate(photo_full, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)

    have_lm = landmarks is not None
    target = None
    if have_lm:
        lm_px = np.asarray(landmarks, np.float64)
        if lm_px.shape != (B, 68, 2) or not np.all(np.isfinite(lm_px)):
            raise ValueError(f"landmarks: expected finite ({B}, 68, 2) pixels, got {lm_px.shape}")
        lm_ndc = np.stack([(lm_px[..., 0] + 0.5) * 2.0 / W - 1.0, 1.0 - (lm_px[..., 1] + 0.5) * 2.0 / H], -1)
        target = torch.as_tensor(lm_ndc, dtype=torch.float32, device=device)
    lm_weight = torch.ones(68, device=device)
    lm_weight[JAW_CONTOUR] = config.jaw_weight
    lm_weight = lm_weight / lm_weight.sum()

    arrays = face_model.arrays
    K, E, J = face_model.n_shape, face_model.n_expr, len(face_model.joint_names)
    joint = {n: i for i, n in enumerate(face_model.joint_names)}
    g_idx, jaw_idx = joint["global"], joint.get("jaw")
    expr_free = torch.tensor([not n.startswith("eyeLook") for n in face_model.expr_names], device=device)
    region = torch.tensor(face_region(arrays), device=device)
    chol = face_model.shape_prior_chol
    mu = face_model.shape_prior_mean

    # ---- initialisation: prior-mean identity, neutral expression, closed-form rigid pose from the landmarks
    if have_lm:
        rot0, scale0, trans0 = _rigid_init(face_model, lm_ndc, lm_weight.double().cpu().numpy())
    else:
        if init_camera is None:
            from models.encoder import alignment_camera

            init_camera = alignment_camera(arrays)
        rot0, scale0, trans0 = np.zeros((B, 3)), np.full(B, init_camera[0]), np.tile(init_camera[1:], (B, 1))

    def leaf(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=device).requires_grad_()

    p_rot, p_logs, p_trans = leaf(rot0), leaf(np.log(scale0)), leaf(trans0)
    p_eps = torch.zeros(B, K, device=device, requires_grad=True)
    p_psi = torch.zeros(B, E, device=device, requires_grad=True)
    p_jaw = torch.zeros(B, 3, device=device, requires_grad=True)
    p_sh = torch.zeros(B, 8, 3, device=device, requires_grad=True)
    p_logc = torch.zeros(B, 3, device=device, requires_grad=True)
    groups = {
        "rigid": [p_rot, p_logs, p_trans],
        "nonrigid": [p_eps, p_psi, p_jaw],
        "photo": [p_sh, p_logc],
    }
    opt = torch.optim.Adam(
        [
            {"params": [p_rot, p_jaw], "lr": config.lr_pose},
            {"params": [p_logs, p_trans], "lr": config.lr_camera},
            {"params": [p_eps], "lr": config.lr_shape},
            {"params": [p_psi], "lr": config.lr_expression},
            {"params": [p_sh], "lr": config.lr_sh},
            {"params": [p_logc], "lr": config.lr_colour},
        ]
    )
    jaw_lo = face_model.joint_limits[jaw_idx, :, 0] if jaw_idx is not None else None
    jaw_hi = face_model.joint_limits[jaw_idx, :, 1] if jaw_idx is not None else None
    ambient = torch.zeros(B, 1, 3, device=device) + config.ambient

    def decode() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = mu + p_eps @ chol.T
        psi = p_psi * expr_free
        cols = [torch.zeros(B, 3, device=device)] * J
        cols[g_idx] = p_rot
        if jaw_idx is not None:
            cols[jaw_idx] = p_jaw
        pose = torch.stack(cols, 1)
        return shape, psi, pose

    n_steps = config.steps
    n_rigid = int(round(config.rigid_fraction * n_steps)) if have_lm else 0
    n_lmk = int(round(config.landmark_fraction * n_steps)) if have_lm else 0
    names = ("total", "landmark", "photo", "shape", "expression", "sh")
    history = np.full((n_steps, B, len(names)), np.nan)
    colour_ready = False

    for step in range(n_steps):
        stage = "rigid" if step < n_rigid else ("landmarks" if step < n_lmk else "photo")
        active = groups["rigid"] + (groups["nonrigid"] if stage != "rigid" else [])
        active = active + (groups["photo"] if stage == "photo" else [])
        shape, psi, pose = decode()
        verts = face_model(shape, psi, pose)
        scale = p_logs.exp()
        camera = WeakPerspectiveCamera(scale, p_trans)
        zero = torch.zeros(B, device=device)
        l_lmk = zero
        if have_lm:
            lm = camera.project(face_model.landmarks(verts))[..., :2]
            l_lmk = ((lm - target).norm(dim=-1) * lm_weight).sum(-1)
        l_shape = (p_eps * p_eps).sum(-1)
        l_expr = (psi * psi).sum(-1)
        l_sh = (p_sh * p_sh).sum((-1, -2))
        l_jaw = (p_jaw * p_jaw).sum(-1)
        l_photo = torch.full((B,), float("nan"), device=device)
        total = config.w_landmark * l_lmk
        if stage != "rigid":
            total = total + config.w_shape * l_shape + config.w_expression * l_expr + config.w_jaw * l_jaw
        if stage == "photo":
            sh = torch.cat([ambient, p_sh], 1)
            if not colour_ready:  # closed-form start for the skin colour: photo / shading over the region
                with torch.no_grad():
                    out = renderer(verts, camera, torch.ones(B, 3, 1, 1, device=device), sh)
                    w = _pixel_weight(out, region)
                    num = (photo * out.shading * w).sum((-1, -2))
                    den = (out.shading * out.shading * w).sum((-1, -2)).clamp_min(1e-8)
                    p_logc.copy_((num / den).clamp(0.01, 1.0).log())
                colour_ready = True
            colour = p_logc.exp()
            if config.photo_geometry:
                out = renderer(verts, camera, colour[:, :, None, None], sh)
            else:  # the light and colour only: no gradient through the rasterised geometry (cheaper)
                cam_fixed = WeakPerspectiveCamera(scale.detach(), p_trans.detach())
                out = renderer(verts.detach(), cam_fixed, colour[:, :, None, None], sh)
            w = _pixel_weight(out, region)
            l_photo = ((out.image - photo).abs().mean(1, keepdim=True) * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp_min(
                1.0
            )
            total = total + config.w_photo * l_photo + config.w_sh * l_sh
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        for p in (p for g in groups.values() for p in g):
            if not any(p is a for a in active):
                p.grad = None
        opt.step()
        with torch.no_grad():
            p_psi.clamp_(0.0, 1.0)
            if jaw_lo is not None:
                p_jaw.copy_(torch.maximum(torch.minimum(p_jaw, jaw_hi), jaw_lo))
        history[step] = torch.stack([total, l_lmk, l_photo, l_shape, l_expr, l_sh], -1).detach().cpu().numpy()
        if stage != "photo":
            history[step, :, 2] = np.nan
        if stage == "rigid":
            history[step, :, 3:] = np.nan
        elif stage == "landmarks":
            history[step, :, 5] = np.nan
        if not have_lm:
            history[step, :, 1] = np.nan

    # ---- results
    with torch.no_grad():
        shape, psi, pose = decode()
        verts = face_model(shape, psi, pose)
        camera = WeakPerspectiveCamera(p_logs.exp(), p_trans)
        frags = rasterize(camera.project(verts), face_model.faces, (H, W))
        masks = (frags.face_id >= 0).cpu().numpy()
        lm_fit = camera.project(face_model.landmarks(verts))[..., :2].double().cpu().numpy()
        colour = p_logc.exp() if colour_ready else None
        sh_all, colour = _light_convention(
            renderer, verts, camera, torch.cat([ambient, p_sh], 1), colour, region, config
        )
        cam_all = torch.cat([p_logs.exp()[:, None], p_trans], 1).double().cpu().numpy()
    results = []
    for b in range(B):
        err = float("nan")
        if have_lm:
            fit_px = np.stack([(lm_fit[b, :, 0] + 1) * 0.5 * W - 0.5, (1 - lm_fit[b, :, 1]) * 0.5 * H - 0.5], -1)
            err = normalised_landmark_error(fit_px, lm_px[b])
        results.append(
            FitResult(
                shape=shape[b].double().cpu().numpy(),
                expression=psi[b].double().cpu().numpy(),
                pose=pose[b].double().cpu().numpy(),
                camera=cam_all[b],
                sh=sh_all[b],
                skin_colour=colour[b],
                losses={n: history[:, b, i].copy() for i, n in enumerate(names)},
                landmark_error=err,
                mask=masks[b],
                image_size=(int(H), int(W)),
            )
        )
    return results


def _rigid_init(
    face_model: FaceModel, lm_ndc: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global rotation (B, 3), camera scale (B,) and translation (B, 2) of the prior-mean face from (B, 68, 2)
    NDC landmarks: :func:`_affine_init` per image, then the weighted least-squares translation of the posed
    landmarks (the global joint rotates about its own centre, not the origin)."""
    B = len(lm_ndc)
    mu = face_model.shape_prior_mean
    with torch.no_grad():
        mean_lm = face_model.landmarks(face_model(mu[None]))[0].double().cpu().numpy()
    rot, scale = np.zeros((B, 3)), np.zeros(B)
    for b in range(B):
        rot[b], scale[b] = _affine_init(mean_lm, lm_ndc[b], weight)
    with torch.no_grad():
        pose = torch.zeros(B, len(face_model.joint_names), 3, device=mu.device)
        pose[:, face_model.joint_names.index("global")] = torch.as_tensor(rot, dtype=torch.float32, device=mu.device)
        lm3 = face_model.landmarks(face_model(mu[None].expand(B, -1), None, pose)).double().cpu().numpy()
    trans = ((lm_ndc - scale[:, None, None] * lm3[..., :2]) * weight[None, :, None]).sum(1) / weight.sum()
    return rot, scale, trans


def _light_convention(
    renderer: MeshRenderer,
    verts: torch.Tensor,
    camera: WeakPerspectiveCamera,
    sh: torch.Tensor,
    colour: torch.Tensor | None,
    region: torch.Tensor,
    config: FitConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale (B, 9, 3) light and (B, 3) skin colour (render unchanged) to the convention of the module
    docstring: the 98th percentile of the shading over the facial-skin pixels is 1, unless the skin colour
    would then exceed ``config.max_skin_albedo``. Returns numpy (B, 9, 3) and (B, 3) (NaN without a colour)."""
    B = verts.shape[0]
    out = renderer(verts, camera, torch.ones(B, 3, 1, 1, device=verts.device), sh)
    covered = _pixel_weight(out, region)[:, 0] > 0
    lum = out.shading.mean(1)
    sh_np = sh.double().cpu().numpy()
    col = colour.double().cpu().numpy() if colour is not None else np.full((B, 3), np.nan)
    k = np.empty(B)
    for b in range(B):
        vals = lum[b][covered[b]]
        k[b] = max(float(torch.quantile(vals, 0.98)) if vals.numel() >= 16 else peak_irradiance(sh_np[b]), 1e-3)
        if colour is not None and col[b].max() * k[b] > config.max_skin_albedo:
            k[b] = config.max_skin_albedo / col[b].max()
    return sh_np / k[:, None, None], col * k[:, None]


def _pixel_weight(out: Any, region: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) photometric weight: covered pixels whose visible triangle is facial skin."""
    face = out.face_id
    w = region[face.clamp_min(0)] * (face >= 0)
    return w[:, None].to(out.image.dtype)


def fit_face(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    face_model: FaceModel,
    renderer: MeshRenderer | None = None,
    *,
    steps: int | None = None,
    config: FitConfig = FitConfig(),
    init_camera: tuple[float, float, float] | None = None,
) -> FitResult:
    """:func:`fit_faces` for one image (H, W, 3) and its (68, 2) landmarks (or None)."""
    lms = None if landmarks is None else np.asarray(landmarks, np.float64)[None]
    return fit_faces([image], lms, face_model, renderer, steps=steps, config=config, init_camera=init_camera)[0]


def normalised_landmark_error(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean point distance of (68, 2) ``pred`` vs ``target`` / the target's outer-eye-corner distance."""
    iod = float(np.linalg.norm(target[36] - target[45]))
    return float(np.linalg.norm(pred - target, axis=-1).mean() / max(iod, 1e-9))


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractedTexture:
    """A UV texture extracted from a photo (row 0 is v = 1; linear values).

    Attributes:
        albedo: (R, R, 3) de-lit linear albedo in [0, 1], corrected (see the module docstring).
        colour: (R, R, 3) linear colours as seen in the photo (seen, mirrored or mean-filled).
        source: (R, R) uint8: 0 outside the skin, 1 seen, 2 mirrored, 3 mean-filled.
        shading: (R, R, 3) the fitted SH shading each texel's colour was divided by.
        valid: (R, R) bool, seen texels whose albedo is a trustworthy measurement (lit enough, not clipped).
    """

    albedo: np.ndarray
    colour: np.ndarray
    source: np.ndarray
    shading: np.ndarray
    valid: np.ndarray


def extract_texture(
    image: np.ndarray,
    fit: FitResult,
    face_model: FaceModel,
    resolution: int = 256,
    *,
    matrix: np.ndarray | None = None,
    min_shading: float = 0.15,
    clip_level: float = 0.995,
    min_facing: float = 0.35,
) -> ExtractedTexture:
    """Unwrap ``image`` with the fitted mesh and light into a de-lit UV albedo.

    Args:
        image: (H, W, 3) sRGB photo, uint8 or float [0, 1]; the fitted image itself, or (with ``matrix``)
            the photo it was cropped from.
        fit: the :class:`FitResult`.
        face_model: the face model of the fit.
        resolution: R of the UV maps.
        matrix: (2, 3) affine taking pixels of the fitted image to pixels of ``image`` (e.g.
            ``AlignedFace.crop_to_image``'s matrix), or None when ``image`` is the fitted image. A photo much
            larger than the fitted crop is first reduced by an integer factor (no aliasing).
        min_shading: texels lit less than this (linear irradiance) are not valid (attached shadows).
        clip_level: texels whose photo colour reaches this in a channel are not valid (clipped highlights).
        min_facing: texels whose normal makes a cosine below this with the viewing direction count as hidden
            (``facecore.texture.unwrap``); the mirror fill takes them over.

    Returns:
        :class:`ExtractedTexture`.
    """
    img = _image_float(image)
    verts = fit.posed_vertices(face_model)
    px = fit.to_pixels(verts)
    if matrix is not None:
        from facecore.detect import transform_points

        matrix = np.asarray(matrix, np.float64)
        if matrix.shape != (2, 3):
            raise ValueError(f"matrix: expected (2, 3), got {matrix.shape}")
        px = transform_points(px, matrix)
        zoom = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))  # photo pixels per fitted pixel
        factor = int(zoom / 1.5)
        if factor >= 2:
            from PIL import Image

            h, w = img.shape[0] // factor, img.shape[1] // factor
            img = np.asarray(Image.fromarray(to_uint8(img)).reduce(factor), np.float64)[:h, :w] / 255.0
            px = (px - (factor - 1) / 2.0) / factor
    lin = srgb_to_linear(img)
    un = uv_texture.unwrap(face_model.arrays, verts, px, lin, resolution, sh=fit.sh, min_facing=min_facing)
    return _correct(un, min_shading, clip_level)


def _correct(un: uv_texture.Unwrapped, min_shading: float, clip_level: float) -> ExtractedTexture:
    """Validity (lit enough, not clipped) and replacement of the invalid texels (valid mirror, else the mean)."""
    shading = un.shading
    if shading is None:
        raise ValueError("unwrap returned no shading (no light given)")
    albedo = un.albedo.copy()
    direct, mirrored = un.source == 1, un.source == 2
    ok = (shading.min(-1) >= min_shading) & (un.colour.max(-1) < clip_level)
    valid = direct & ok
    bad = (direct | mirrored) & ~ok  # a mirrored texel is judged by its origin's light and colour
    take = bad & direct & valid[:, ::-1]
    albedo[take] = un.albedo[:, ::-1][take]
    rest = bad & ~take
    if rest.any() and valid.any():
        albedo[rest] = _local_fill(albedo, valid | take, rest)
    return ExtractedTexture(albedo=albedo, colour=un.colour, source=un.source, shading=shading, valid=valid)


def _local_fill(image: np.ndarray, known: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Values for the ``holes`` of an (R, R, 3) map from the ``known`` texels around them: normalised Gaussian
    convolution at growing scales (σ = 2, 6, 18 texels), the smallest scale that reaches a hole wins; the mean
    of the known texels where none does."""
    from scipy.ndimage import gaussian_filter

    out = np.empty((int(holes.sum()), 3))
    todo = np.ones(len(out), bool)
    weight = known.astype(np.float64)
    for sigma in (2.0, 6.0, 18.0):
        den = gaussian_filter(weight, sigma, mode="wrap")[holes]
        num = np.stack([gaussian_filter(image[..., c] * weight, sigma, mode="wrap")[holes] for c in range(3)], -1)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok, None]
        todo &= ~ok
        if not todo.any():
            break
    out[todo] = image[known].mean(0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Accuracy on ground truth
# ---------------------------------------------------------------------------------------------------------------


def rigid_rms_mm(pred: np.ndarray, truth: np.ndarray) -> float:
    """RMS distance in mm of (N, 3) ``pred`` to ``truth`` (metres) after the best rotation + translation."""
    p, t = pred - pred.mean(0), truth - truth.mean(0)
    u, _, vt = np.linalg.svd(p.T @ t)
    d = np.sign(np.linalg.det(u @ vt))
    R = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((p @ R - t) ** 2).sum(-1).mean()) * 1000.0)


_FACE_VERTS_CACHE: dict[int, np.ndarray] = {}


def face_vertices(arrays: FaceModelArrays) -> np.ndarray:
    """Indices of the vertices of the facial-skin region (:func:`face_region`), the observable geometry."""
    key = id(arrays)
    if key not in _FACE_VERTS_CACHE:
        _FACE_VERTS_CACHE[key] = np.unique(arrays.faces[face_region(arrays) > 0])
    return _FACE_VERTS_CACHE[key]


def face_texels(arrays: FaceModelArrays, resolution: int) -> np.ndarray:
    """(R, R) bool: the texels of the facial-skin region (:func:`face_region`), a fixed set for comparisons."""
    texel, face, _ = uv_texture.geo.texel_sampling(arrays, resolution)
    out = np.zeros(resolution * resolution, bool)
    out[texel] = face_region(arrays)[face] > 0
    return out.reshape(resolution, resolution)


def albedo_errors(tex: ExtractedTexture, truth: np.ndarray, face: np.ndarray | None = None) -> dict[str, float]:
    """Errors (linear [0, 1] units) of the extracted maps vs the true (R, R, 3) linear albedo.

    On the texels seen in the photo: ``raw`` (seen colours, no de-lighting), ``delit`` (the albedo) and
    ``delit_gain`` (the albedo after one least-squares gain per channel: the albedo/light scale is a convention,
    not a measurement), as mean absolute errors. On the fixed facial-skin texels ``face`` (:func:`face_texels`;
    seen, mirrored or mean-filled, whatever the pose): ``face_mae`` / ``face_psnr`` of the gain-corrected
    albedo, ``face_psnr_noflip`` with the mirrored texels mean-filled instead (the flip-fill ablation),
    ``face_psnr_raw`` of the gain-corrected seen colours (the de-lighting ablation), and ``face_seen`` /
    ``face_mirrored``: the fractions of those texels seen and mirrored.
    """
    seen = tex.source == 1
    keys = ("raw", "delit", "delit_gain", "face_mae", "face_psnr", "face_psnr_abs", "face_psnr_noflip", "face_psnr_raw")
    if not seen.any():
        return {k: float("nan") for k in keys}
    t = truth[seen]

    def gain_of(x: np.ndarray) -> np.ndarray:
        return (x[seen] * t).sum(0) / np.maximum((x[seen] ** 2).sum(0), 1e-12)

    def psnr(x: np.ndarray, mask: np.ndarray) -> float:
        mse = float(((x[mask] - truth[mask]) ** 2).mean())
        return 10.0 * math.log10(1.0 / max(mse, 1e-12))

    out = {
        "raw": float(np.abs(tex.colour[seen] - t).mean()),
        "delit": float(np.abs(tex.albedo[seen] - t).mean()),
    }
    albedo_g = np.clip(tex.albedo * gain_of(tex.albedo), 0, 1)
    out["delit_gain"] = float(np.abs(albedo_g[seen] - t).mean())
    if face is not None and face.any():
        noflip = tex.albedo.copy()
        mir = tex.source == 2
        noflip[mir] = tex.albedo[tex.valid].mean(0) if tex.valid.any() else tex.albedo[seen].mean(0)
        raw = tex.colour.copy()
        raw[mir] = noflip[mir]  # the raw ablation keeps the same fill as the no-flip one
        raw[tex.source == 3] = tex.colour[seen].mean(0)
        out["face_mae"] = float(np.abs(albedo_g[face] - truth[face]).mean())
        out["face_psnr"] = psnr(albedo_g, face)
        out["face_psnr_abs"] = psnr(tex.albedo, face)
        out["face_psnr_noflip"] = psnr(np.clip(noflip * gain_of(noflip), 0, 1), face)
        out["face_psnr_raw"] = psnr(np.clip(raw * gain_of(raw), 0, 1), face)
        out["face_seen"] = float(seen[face].mean())
        out["face_mirrored"] = float(mir[face].mean())
    return out


# ---------------------------------------------------------------------------------------------------------------
# The CLI stage
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedFace:
    """A face ready to fit: the aligned crop, its landmarks, and the crop → photo transform."""

    image: np.ndarray
    crop: np.ndarray
    landmarks: np.ndarray
    crop_to_image: np.ndarray
    detector: str


def prepare_face(
    image: np.ndarray,
    landmarks: np.ndarray | None = None,
    *,
    crop_size: int = 224,
    crop_scale: float = 1.3,
    detector: str = "auto",
) -> PreparedFace:
    """Detect 68 landmarks (dlib, ``models.landmarks.landmarks68``) unless given, align and crop the face.

    Raises:
        models.landmarks.NoFaceError: no face was found.
    """
    from facecore.detect import align_face, invert_affine

    detected = "given"
    if landmarks is None:
        from facecore.detect import check_image
        from models.landmarks import detect_landmarks, largest_face

        image = check_image(image)
        face = largest_face(detect_landmarks(image, detector=detector), image.shape)  # type: ignore[arg-type]
        landmarks, detected = face.points, face.detector
    aligned = align_face(image, landmarks, output_size=crop_size, scale=crop_scale)
    return PreparedFace(
        image=image,
        crop=aligned.crop,
        landmarks=aligned.image_to_crop(landmarks),
        crop_to_image=invert_affine(aligned.matrix),
        detector=detected,
    )


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 image atomically (temporary file + rename)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def mask_png(tex: ExtractedTexture) -> np.ndarray:
    """(R, R) uint8 texel source and validity in the :data:`MASK_PNG_VALUES` encoding."""
    v = MASK_PNG_VALUES
    lut = np.array([v["outside"], v["seen_invalid"], v["mirrored"], v["mean_filled"]], np.uint8)
    out = lut[tex.source]
    out[tex.valid] = v["seen_valid"]
    return out


def save_texture(tex: ExtractedTexture, out: Path, name: str) -> None:
    """``albedo/NAME.png`` (sRGB 8-bit), ``shading/NAME.png`` (linear / SHADING_PNG_SCALE), ``mask/NAME.png``
    (:data:`MASK_PNG_VALUES`); the albedo is written last, so its presence marks a finished face."""
    _save_png(to_uint8(tex.shading / SHADING_PNG_SCALE), out / "shading" / f"{name}.png")
    _save_png(mask_png(tex), out / "mask" / f"{name}.png")
    _save_png(to_uint8(linear_to_srgb(tex.albedo)), out / "albedo" / f"{name}.png")


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _list_images(folder: Path) -> list[Path]:
    if not folder.exists():
        raise FileNotFoundError(f"extract.images: folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"extract.images: not a folder: {folder}")
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise ValueError(f"extract.images: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _read_done(path: Path, out: Path) -> dict[int, dict]:
    """Records of ``fits.jsonl`` whose work is complete (an ok record needs its albedo PNG)."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if rec.get("status") == "ok" and not (out / "albedo" / f"{rec['name']}.png").exists():
            continue
        done[int(rec["index"])] = rec
    return done


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """``python -m training.run extract``: photos or synthetic renders → UV albedo dataset.

    Config section ``extract`` (defaults in brackets):

    - ``images: DIR`` — a folder of face photos (searched recursively), or
      ``synthetic: {count: N, seed: [0], resolution: [224], landmarks: [detect] | truth}`` — renders of
      ``training.data.synthetic`` (``truth``: the renders' own landmarks instead of dlib's);
    - ``resolution`` [256]: UV map size; ``crop_size`` [224], ``crop_scale`` [1.3]: the aligned crop the fit runs
      on; ``detector`` [auto]; ``batch_size`` [4]: faces fitted together; ``device`` [cpu];
    - ``fit``: :class:`FitConfig` overrides; ``min_shading`` [0.15], ``clip_level`` [0.995], ``min_facing``
      [0.35]: see :func:`extract_texture`;
    - ``max_landmark_error`` [0.25]: a fit whose landmarks end further than this (mean distance / inter-ocular
      distance) from the detected ones is rejected (measured: ≤ 0.18 on synthetic renders, 0.36 on a fixture
      photo where dlib's points are wrong);
    - ``threads`` [1]: torch threads for the stage (the fit's tensors are small: on the shared 2-core machine one
      thread was 2–10× faster than two), null to leave torch's setting.

    Writes into ``out``: ``albedo/NNNNNN.png``, ``shading/``, ``mask/``, ``fits.jsonl``, ``summary.json``.
    Index ``i`` is the i-th photo (sorted by path) or synthetic sample ``i``. Faces that fail (unreadable file,
    no face) are logged, recorded in ``fits.jsonl`` with their reason and skipped; a rerun skips every index
    already recorded.
    """
    ecfg = dict(cfg.get("extract") or {})
    known = {
        "images", "synthetic", "resolution", "crop_size", "crop_scale", "detector", "batch_size", "device", "fit",
        "min_shading", "clip_level", "min_facing", "max_landmark_error", "threads",
    }  # fmt: skip
    unknown = sorted(set(ecfg) - known)
    if unknown:
        raise ValueError(f"extract: unknown keys {unknown}; known: {sorted(known)}")
    if ("images" in ecfg) == ("synthetic" in ecfg):
        raise ValueError("extract: give exactly one of `images: DIR` or `synthetic: {count: N, ...}`")
    fit_cfg = FitConfig.from_dict(ecfg.get("fit"))
    resolution = int(ecfg.get("resolution", 256))
    crop_size = int(ecfg.get("crop_size", 224))
    crop_scale = float(ecfg.get("crop_scale", 1.3))
    detector = str(ecfg.get("detector", "auto"))
    if detector not in ("auto", "hog", "cnn"):
        raise ValueError(f"extract.detector: expected auto, hog or cnn, got {detector!r}")
    if not 16 <= resolution <= 4096:
        raise ValueError(f"extract.resolution: expected 16–4096 texels, got {resolution}")
    batch_size = max(1, int(ecfg.get("batch_size", 4)))
    device = torch.device(ecfg.get("device", "cpu"))
    min_shading = float(ecfg.get("min_shading", 0.15))
    clip_level = float(ecfg.get("clip_level", 0.995))
    min_facing = float(ecfg.get("min_facing", 0.35))
    max_lmk = float(ecfg.get("max_landmark_error", 0.25))
    threads = ecfg.get("threads", 1)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        _run(ecfg, Path(out), fit_cfg, resolution, crop_size, crop_scale, detector, batch_size, device,
             dict(min_shading=min_shading, clip_level=clip_level, min_facing=min_facing), max_lmk)  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    ecfg: dict,
    out: Path,
    fit_cfg: FitConfig,
    resolution: int,
    crop_size: int,
    crop_scale: float,
    detector: str,
    batch_size: int,
    device: torch.device,
    extract_kw: dict[str, float],
    max_lmk: float,
) -> None:
    from PIL.Image import DecompressionBombError
    from tqdm import tqdm

    face_model = FaceModel.from_file().to(device)
    synthetic = None
    if "images" in ecfg:
        files = _list_images(Path(ecfg["images"]))
        names = [str(p) for p in files]
        source_desc = {"images": str(Path(ecfg["images"]))}
    else:
        from training.data.synthetic import SyntheticConfig, SyntheticFaces

        scfg = dict(ecfg["synthetic"] or {})
        bad = sorted(set(scfg) - {"count", "seed", "resolution", "landmarks"})
        if bad or "count" not in scfg:
            raise ValueError(f"extract.synthetic: expected keys count, seed, resolution, landmarks; got {sorted(scfg)}")
        count = int(scfg["count"])
        if count < 1:
            raise ValueError(f"extract.synthetic.count: expected at least 1, got {count}")
        mode = str(scfg.get("landmarks", "detect"))
        if mode not in ("detect", "truth"):
            raise ValueError(f"extract.synthetic.landmarks: expected 'detect' or 'truth', got {mode!r}")
        synthetic = (
            SyntheticFaces(
                SyntheticConfig(
                    image_size=int(scfg.get("resolution", 224)), albedo_size=resolution, seed=int(scfg.get("seed", 0))
                ),
                face_model=FaceModel(face_model.arrays),
            ),
            mode,
        )
        names = [f"synthetic:{scfg.get('seed', 0)}:{i}" for i in range(count)]
        source_desc = {"synthetic": scfg}
    renderer = MeshRenderer.from_face_model(face_model, fit_cfg.render_size).to(device)

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "fits.jsonl"
    done = _read_done(log_path, out)
    todo = [i for i in range(len(names)) if i not in done]
    logger.info("extract: %d inputs, %d already done, %d to do → %s", len(names), len(done), len(todo), out)
    fit_seconds = 0.0
    n_fitted = 0
    with log_path.open("a") as log, tqdm(total=len(todo), desc="extract", unit="face") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            prepared: list[tuple[int, PreparedFace, Any]] = []
            for i in chunk:
                try:
                    if synthetic is None:
                        face = prepare_face(
                            _load_image(files[i]), crop_size=crop_size, crop_scale=crop_scale, detector=detector
                        )
                        truth = None
                    else:
                        ds, mode = synthetic
                        item = ds.batch([i])
                        image = to_uint8(item.image_srgb[0].permute(1, 2, 0).cpu().numpy())
                        given = item.landmarks_px[0].double().cpu().numpy() if mode == "truth" else None
                        face = prepare_face(image, given, crop_size=crop_size, crop_scale=crop_scale, detector=detector)
                        truth = item
                    prepared.append((i, face, truth))
                except (OSError, ValueError, DecompressionBombError) as exc:  # unreadable, no face: record, go on
                    reason = f"{type(exc).__name__}: {exc}"
                    logger.warning("extract: skipping %s (%s)", names[i], reason)
                    _append(log, {"index": i, "name": f"{i:06d}", "source": names[i], "status": "skipped",
                                  "reason": reason})  # fmt: skip
                    bar.update(1)
            if not prepared:
                continue
            t0 = time.perf_counter()
            fits = fit_faces(
                [p.crop for _, p, _ in prepared],
                np.stack([p.landmarks for _, p, _ in prepared]),
                face_model,
                renderer,
                config=fit_cfg,
            )
            fit_seconds += time.perf_counter() - t0
            n_fitted += len(prepared)
            for (i, face, truth), fit in zip(prepared, fits, strict=True):
                name = f"{i:06d}"
                if not fit.landmark_error <= max_lmk:
                    reason = f"fit rejected: landmark error {fit.landmark_error:.3f} > max_landmark_error {max_lmk}"
                    logger.warning("extract: skipping %s (%s)", names[i], reason)
                    _append(log, {"index": i, "name": name, "source": names[i], "status": "skipped",
                                  "reason": reason, **fit.to_json(face_model)})  # fmt: skip
                    bar.update(1)
                    continue
                tex = extract_texture(face.image, fit, face_model, resolution, matrix=face.crop_to_image, **extract_kw)
                save_texture(tex, out, name)
                rec = {
                    "index": i,
                    "name": name,
                    "source": names[i],
                    "status": "ok",
                    "detector": face.detector,
                    **fit.to_json(face_model),
                    "coverage": {
                        "seen": round(float((tex.source == 1).mean()), 5),
                        "mirrored": round(float((tex.source == 2).mean()), 5),
                        "valid": round(float(tex.valid.mean()), 5),
                    },
                }
                if truth is not None:
                    rec["truth"] = synthetic_accuracy(fit, tex, face, truth, face_model)
                _append(log, rec)
                bar.update(1)
                bar.set_postfix(lmk=f"{fit.landmark_error:.3f}")

    done = _read_done(log_path, out)
    ok = [r for r in done.values() if r["status"] == "ok"]
    summary: dict[str, Any] = {
        "source": source_desc,
        "count": len(names),
        "ok": len(ok),
        "skipped": len(done) - len(ok),
        "skipped_reasons": sorted({r["reason"] for r in done.values() if r["status"] != "ok"}),
        "mean_landmark_error": _nanmean([r.get("landmark_error") for r in ok]),
        "seconds_per_fit_this_run": round(fit_seconds / n_fitted, 3) if n_fitted else None,
        "resolution": resolution,
        "fit": dataclasses.asdict(fit_cfg),
    }
    truths = [r["truth"] for r in ok if "truth" in r]
    if truths:
        summary["truth_mean"] = {k: _nanmean([t[k] for t in truths]) for k in truths[0]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("extract: %d ok, %d skipped; summary in %s", summary["ok"], summary["skipped"], out / "summary.json")


def _append(log: Any, rec: dict) -> None:
    log.write(json.dumps(rec) + "\n")
    log.flush()


def _nanmean(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(float(np.mean(vals)), 5) if vals else None


def synthetic_accuracy(
    fit: FitResult, tex: ExtractedTexture, face: PreparedFace, truth: Any, face_model: FaceModel
) -> dict[str, float]:
    """Errors of a fit + extraction against a synthetic sample's ground truth (never seen by the fit).

    ``landmark_nme``: fitted vs true landmarks / true inter-ocular distance (in the crop; similarity-invariant);
    ``detector_nme``: the landmarks the fit used vs the truth; ``shape_rms_mm`` / ``mean_shape_rms_mm``: the
    fitted / the prior-mean neutral identity vs the true one, per-vertex RMS over the facial-skin vertices after
    the best rigid alignment; albedo errors from :func:`albedo_errors` (``R`` of the extraction).
    """
    from facecore.detect import transform_points

    to_crop = np.asarray(truth.landmarks_px[0].double().cpu().numpy())
    matrix = _invert(face.crop_to_image)
    lm_true = transform_points(to_crop, matrix)
    out = {
        "landmark_nme": normalised_landmark_error(fit.landmarks_px(face_model), lm_true),
        "detector_nme": normalised_landmark_error(face.landmarks, lm_true),
    }
    idx = face_vertices(face_model.arrays)
    with torch.no_grad():
        true_shape = truth.codes.shape[:1].to(face_model.mean)
        neutral_true = face_model(true_shape)[0, idx].double().cpu().numpy()
        fit_shape = torch.as_tensor(fit.shape, dtype=torch.float32, device=face_model.mean.device)
        neutral_fit = face_model(fit_shape[None])[0, idx].double().cpu().numpy()
        neutral_mean = face_model(face_model.shape_prior_mean[None])[0, idx].double().cpu().numpy()
    out["shape_rms_mm"] = rigid_rms_mm(neutral_fit, neutral_true)
    out["mean_shape_rms_mm"] = rigid_rms_mm(neutral_mean, neutral_true)
    R = tex.albedo.shape[0]
    albedo_true = truth.albedo_uv[:1].float()
    if albedo_true.shape[-1] != R:
        albedo_true = F.interpolate(albedo_true, size=(R, R), mode="bilinear", antialias=True, align_corners=False)
    albedo_true = albedo_true[0].permute(1, 2, 0).double().cpu().numpy()
    out.update(albedo_errors(tex, albedo_true, face_texels(face_model.arrays, R)))
    return {k: round(float(v), 5) for k, v in out.items()}


def _invert(matrix: np.ndarray) -> np.ndarray:
    from facecore.detect import invert_affine

    return invert_affine(matrix)
