"""The face model fitted to a photo (AlbedoGAN seed §1.1, step 1): what texture extraction unwraps with.

:func:`fit_faces` / :func:`fit_face`: Adam on the face model's identity (whitened by the generation
prior: ``β = μ + L·ε``), expression (ARKit weights, projected onto [0, 1]; gaze shapes stay 0), pose (global +
jaw), weak-perspective camera (log scale, translation) and SH light. Three stages over one step budget:
*rigid* (landmarks → pose and camera, from a closed-form affine initialisation), *landmarks* (+ identity,
expression, jaw), *photometric* (+ light and skin colour; landmarks and priors stay on), whose last quarter
renders a texture model instead of the flat colour (*textured*, below).

- landmark loss: weighted mean 2-D distance in NDC units between the model's 68 projected landmarks and the
  detected ones; the jaw contour (iBUG 0–16) is down-weighted because detectors put it on the silhouette,
  which the model's fixed surface points only follow for frontal faces;
- photometric loss: masked L1 between the render and the linearised photo over the *facial skin* only
  (forehead to chin, eyes, brows, lips and nostrils cut out), rendered at ``FitConfig.render_size``. The
  render's albedo is **one mean skin colour per image** (linear RGB, optimised jointly): a flat albedo keeps
  the light identifiable (a spatially free albedo would absorb the shading) and the robust L1 tolerates the
  freckles, make-up and beard the flat colour does not model;
- textured photometric term (``FitConfig.texture = "procedural"``, from ``texture_fraction`` of the steps on): the
  albedo becomes a linear texture model (:func:`procedural_texture_model`: the mean and principal directions of
  procedural albedos in the face model's layout, brows, lids, lips and nostrils at their texels) times a colour
  gain, and the region takes in the brows, eyes' surroundings, lips and nostrils. Their edges pull the mesh onto
  the photo's features (through the differentiable barycentrics) more precisely than a detector's landmarks;
  the light, fitted first under the flat colour, keeps its start. A fit whose landmark distance grows by more
  than ``texture_margin`` inter-ocular distances in this stage (a wrong basin: hair over the brows, a profile's
  far side) returns to its state before it;
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

Colour: photos are sRGB-encoded; the fit runs on linear values (shading multiplies linear albedo).
:mod:`training.texture` turns a fit into a de-lit UV albedo and drives the ``extract`` stage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facecore import texture as uv_texture
from facecore.color import srgb_to_linear
from facecore.config import parse_section
from facecore.geometry import FaceModelArrays, project_points
from models.face.model import FaceCodes, FaceModel
from models.render import MeshRenderer, WeakPerspectiveCamera, rasterize

JAW_CONTOUR = slice(0, 17)
"""iBUG indices of the jaw contour (detectors place it on the silhouette)."""


def image_float(image: np.ndarray, name: str = "image") -> np.ndarray:
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


_REGION_CACHE: dict[tuple[int, int, bool], np.ndarray] = {}


def face_region(arrays: FaceModelArrays, resolution: int = 512, features: bool = False) -> np.ndarray:
    """(F,) float32 weight per triangle: 1 on the facial skin, 0 elsewhere (cached per model).

    The region is drawn in UV from the model's own landmark layout: the polygon of the jaw contour closed by the
    eyebrows lifted by 1.6 brow-to-eye distances (the forehead), minus the eyes (their contour scaled 1.7× about
    its centre), the eyebrows (a band along them), the lips (outer contour scaled 1.2×) and the nostrils; only
    skin triangles (``face_part == 0``) count. A triangle is in when its UV centroid is. ``features``: the eyes'
    surroundings, brows, lips and nostrils stay in (for a textured photometric term, whose albedo has them);
    only the lid openings (contour scaled 1.1×) are cut out.
    """
    key = (id(arrays), resolution, features)
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
        draw.polygon(px(scaled(eye, 1.1 if features else 1.7)), fill=0)
    if not features:
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


@dataclass(frozen=True, eq=False)
class TextureModel:
    """A linear albedo model in the face model's UV layout: ``mean + Σ_k c_k · components[k]``, ``c ~ N(0, I)``.

    Attributes:
        mean: (3, R, R) linear albedo (row 0 is v = 1).
        components: (K, 3, R, R) principal directions, each scaled by its standard deviation.
    """

    mean: torch.Tensor
    components: torch.Tensor

    def __call__(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, K) coefficients → (B, 3, R, R) albedo (clamped to ≥ 0.005)."""
        return (self.mean + torch.einsum("bk,kcij->bcij", coefficients, self.components)).clamp_min(0.005)


TEXTURE_MODEL_SEED = 7919
"""Stream seed of the procedural maps the texture model is built from (no benchmark or training stream uses it)."""

_TEXTURE_CACHE: dict[tuple[int, int, int, int, str], TextureModel] = {}


def procedural_texture_model(
    face_model: FaceModel, components: int, resolution: int = 128, maps: int = 1024
) -> TextureModel:
    """PCA of ``maps`` procedural albedos (``training.data.procedural_albedo``: skin tones, blotches, brows, lips,
    stubble, lids, hair at the scalp, all at the layout's texels), ``components`` directions kept; cached per
    face model. A few seconds on a CPU."""
    from training.data.procedural_albedo import ProceduralAlbedo, sample_albedo_params

    device = face_model.mean.device
    key = (id(face_model.arrays), components, resolution, maps, str(device))
    if key not in _TEXTURE_CACHE:
        procedural = ProceduralAlbedo(face_model)
        g = torch.Generator().manual_seed(TEXTURE_MODEL_SEED)
        size = max(resolution, 64)
        chunks = []
        with torch.no_grad():
            for start in range(0, maps, 128):
                a = procedural(sample_albedo_params(min(128, maps - start), g), size)
                if size != resolution:
                    a = F.interpolate(a, size=(resolution, resolution), mode="area")
                chunks.append(a.reshape(len(a), -1).double())
        x = torch.cat(chunks)
        mean = x.mean(0)
        xc = x - mean
        # principal directions from the (maps × maps) Gram matrix: an SVD of the (maps × 3R²) data is ~20× slower;
        # direction k scaled by its standard deviation is xcᵀ u_k / √(maps − 1)
        _, u = torch.linalg.eigh(xc @ xc.T)
        k = min(components, maps - 1)
        comps = (xc.T @ u[:, -k:].flip(1)).T / math.sqrt(max(maps - 1, 1)) if k else xc[:0]
        shape = (3, resolution, resolution)
        _TEXTURE_CACHE[key] = TextureModel(
            mean.reshape(shape).float().to(device), comps.reshape(k, *shape).float().to(device)
        )
    return _TEXTURE_CACHE[key]


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
        texture: ``"procedural"`` (the textured stage) or ``"flat"`` (one skin colour to the end).
        texture_components, texture_resolution: the texture model's principal directions and texels per side.
        w_texture, lr_texture: prior weight on the texture model's (whitened) coefficients; their learning rate.
        texture_fraction: the textured stage starts after this fraction of the steps (≥ ``landmark_fraction``).
        texture_margin: a textured stage that moves the landmarks away from their targets by more than this many
            inter-ocular distances (mean, weighted as the landmark loss) is undone.

    The textured stage's settings were chosen on the same 24 renders (``benchmarks/texture_extraction.py --seed
    1000``): facial-skin PSNR of the clean extraction 30.8 → 32.3 dB, lips 25.6 → 26.6, worst face 20.5 → 22.8 dB;
    starting it at half the steps instead of three quarters was worse at large yaw, and a weaker prior (1e-3 vs
    1e-2) slightly better.
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
    texture: str = "procedural"
    texture_components: int = 24
    texture_resolution: int = 128
    w_texture: float = 1e-3
    lr_texture: float = 0.05
    texture_fraction: float = 0.75
    texture_margin: float = 0.03

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
        if self.texture not in ("flat", "procedural"):
            raise ValueError(f"texture: expected 'flat' or 'procedural', got {self.texture!r}")
        if not 0 <= self.texture_components <= 256:
            raise ValueError(f"texture_components: expected 0–256, got {self.texture_components}")
        if not 32 <= self.texture_resolution <= 512:
            raise ValueError(f"texture_resolution: expected 32–512 texels, got {self.texture_resolution}")
        if not self.landmark_fraction <= self.texture_fraction <= 1.0:
            raise ValueError(f"texture_fraction: expected landmark_fraction–1, got {self.texture_fraction}")
        if self.w_texture < 0:
            raise ValueError(f"w_texture: expected >= 0, got {self.w_texture}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FitConfig:
        """From a config section (typed, unknown keys refused; :func:`facecore.config.parse_section`)."""
        return parse_section(cls, values, "extract.fit")


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
        skin_colour: (3,) linear RGB flat albedo of the photometric term, or the fitted texture's mean over the
            facial skin (same scale convention).
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
        return project_points(points, self.camera, self.image_size[1])  # fitted images are square

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
    lin = [srgb_to_linear(image_float(im, f"images[{i}]")) for i, im in enumerate(images)]
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
    textured = config.texture == "procedural"
    tex_model = (
        procedural_texture_model(face_model, config.texture_components, config.texture_resolution) if textured else None
    )
    photo_region = torch.tensor(face_region(arrays, features=True), device=device) if textured else region
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
    p_tex = torch.zeros(B, tex_model.components.shape[0] if textured else 0, device=device, requires_grad=True)
    groups = {
        "rigid": [p_rot, p_logs, p_trans],
        "nonrigid": [p_eps, p_psi, p_jaw],
        "photo": [p_sh, p_logc, p_tex],
    }
    opt = torch.optim.Adam(
        [
            {"params": [p_rot, p_jaw], "lr": config.lr_pose},
            {"params": [p_logs, p_trans], "lr": config.lr_camera},
            {"params": [p_eps], "lr": config.lr_shape},
            {"params": [p_psi], "lr": config.lr_expression},
            {"params": [p_sh], "lr": config.lr_sh},
            {"params": [p_logc], "lr": config.lr_colour},
            {"params": [p_tex], "lr": config.lr_texture},
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
    n_tex = max(n_lmk, int(round(config.texture_fraction * n_steps))) if textured else n_steps + 1
    leaves = [p for g in groups.values() for p in g]
    snapshot: list[torch.Tensor] = []
    lmk_ref = torch.zeros(B, device=device)
    iod = (target[:, 45] - target[:, 36]).norm(dim=-1).clamp_min(1e-6) if have_lm else None
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
            use_tex = step >= n_tex
            if step == n_tex:  # the textured term takes over: remember the fit, restart the gain from the mean map
                snapshot = [p.detach().clone() for p in leaves]
                lmk_ref = l_lmk.detach().clone()
                colour_ready = False
            base = tex_model(p_tex) if use_tex else torch.ones(B, 3, 1, 1, device=device)
            if not colour_ready:  # closed-form start for the colour gain: photo / (shading · albedo) over the region
                with torch.no_grad():
                    out = renderer(verts, camera, base, sh)
                    w = _pixel_weight(out, photo_region if use_tex else region)
                    num = (photo * out.image * w).sum((-1, -2))
                    den = (out.image * out.image * w).sum((-1, -2)).clamp_min(1e-8)
                    p_logc.copy_((num / den).clamp(0.01, 100.0 if use_tex else 1.0).log())
                colour_ready = True
            albedo = base * p_logc.exp()[:, :, None, None]
            if config.photo_geometry:
                out = renderer(verts, camera, albedo, sh)
            else:  # the light and colour only: no gradient through the rasterised geometry (cheaper)
                cam_fixed = WeakPerspectiveCamera(scale.detach(), p_trans.detach())
                out = renderer(verts.detach(), cam_fixed, albedo, sh)
            w = _pixel_weight(out, photo_region if use_tex else region)
            l_photo = ((out.image - photo).abs().mean(1, keepdim=True) * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp_min(
                1.0
            )
            total = total + config.w_photo * l_photo + config.w_sh * l_sh
            if use_tex:
                total = total + config.w_texture * (p_tex * p_tex).sum(-1)
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        for p in leaves:
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

    # ---- the textured term may refine the registration within the landmarks' noise, not leave them: a fit whose
    # landmark distance grew by more than texture_margin × the inter-ocular distance returns to where it started
    reverted = torch.zeros(B, dtype=torch.bool, device=device)
    if snapshot and have_lm:
        with torch.no_grad():
            shape, psi, pose = decode()
            lm = WeakPerspectiveCamera(p_logs.exp(), p_trans).project(
                face_model.landmarks(face_model(shape, psi, pose))
            )
            l_end = ((lm[..., :2] - target).norm(dim=-1) * lm_weight).sum(-1)
            reverted = (l_end - lmk_ref) / iod > config.texture_margin
            for p, p0 in zip(leaves, snapshot, strict=True):
                p[reverted] = p0[reverted]
    # ---- results
    with torch.no_grad():
        shape, psi, pose = decode()
        verts = face_model(shape, psi, pose)
        camera = WeakPerspectiveCamera(p_logs.exp(), p_trans)
        frags = rasterize(camera.project(verts), face_model.faces, (H, W))
        masks = (frags.face_id >= 0).cpu().numpy()
        lm_fit = camera.project(face_model.landmarks(verts))[..., :2].double().cpu().numpy()
        colour = p_logc.exp() if colour_ready else None
        if colour is not None and snapshot:  # the skin colour of the fitted texture: its mean over the facial skin
            colour = torch.where(reverted[:, None], colour, colour * _skin_mean(tex_model(p_tex), face_model, region))
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


def _skin_mean(texture: torch.Tensor, face_model: FaceModel, region: torch.Tensor) -> torch.Tensor:
    """(B, 3) mean of (B, 3, R, R) albedo maps over the UV centroids of the ``region``'s triangles."""
    from models.render.texture import uv_to_grid

    arrays = face_model.arrays
    centroid = arrays.uv[arrays.uv_faces[region.cpu().numpy() > 0]].astype(np.float64).mean(1)
    grid = uv_to_grid(torch.as_tensor(centroid, dtype=texture.dtype, device=texture.device))
    grid = grid[None, None].expand(texture.shape[0], -1, -1, -1)
    return F.grid_sample(texture, grid, mode="bilinear", align_corners=False)[:, :, 0].mean(-1)


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
