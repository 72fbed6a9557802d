"""Synthetic faces with full ground truth: random scenes rendered with procedural albedo, and their landmarks.

Two layers over the procedural albedo (:mod:`training.data.procedural_albedo`):

1. **Scene codes** (:func:`sample_face_codes`, :func:`sample_sh`, :func:`frame_camera`,
   :func:`render_background`): identity from the face model's generation prior (or, ``identity: phenotype``,
   given the sex, age and skin the albedo shows), sparse expressions, head pose, SH light, a weak-perspective
   camera framing the face, and a smooth random background.
2. **Rendered samples** (:class:`SyntheticFaces`): every index has its own random stream (seeded from
   ``(seed, index)``), so a sample is the same whatever batch it is drawn in, training resumes exactly, and
   DDP ranks shard by index. Each batch is a frozen :class:`SyntheticBatch` with the sRGB image, the linear
   albedo, codes, SH, camera, posed vertices, 68 landmarks in pixels with visibility, and the mask.

Randomness only enters through explicit ``torch.Generator`` arguments (drawn on CPU so that a seed gives the
same sample on every device); everything after the draws is a deterministic batched computation on the
target device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from facecore.texture import light_visibility
from models.face.model import FaceCodes, FaceModel, axis_angle_to_matrix
from models.render import SH_CONSTANTS, MeshRenderer, WeakPerspectiveCamera, sh_basis
from training.data.phenotype import phenotype_shapes
from training.data.procedural_albedo import AlbedoParams, ProceduralAlbedo, sample_albedo_params
from training.data.sampling import Batched, bernoulli, log_uniform, uniform
from training.data.skin import iris_linear_rgb, linear_to_srgb


def _index_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of stream ``seed`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(index) & 0xFFFFFFFF, int(index) >> 32])
    lo, hi = state.generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


# ---------------------------------------------------------------------------------------------------------------
# Scene: face codes, light, camera, background
# ---------------------------------------------------------------------------------------------------------------


def euler_to_axis_angle(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Head rotation ``R = Ry(yaw) · Rx(pitch) · Rz(roll)`` (radians) as an axis-angle vector. (...) → (..., 3).

    Yaw turns the face (+z) towards +x (the subject's left), pitch about +x, roll about +z.
    """

    def quat(axis: int, angle: torch.Tensor) -> torch.Tensor:
        q = torch.zeros(*angle.shape, 4, dtype=angle.dtype, device=angle.device)
        q[..., 0] = torch.cos(angle / 2)
        q[..., 1 + axis] = torch.sin(angle / 2)
        return q

    def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w1, x1, y1, z1 = a.unbind(-1)
        w2, x2, y2, z2 = b.unbind(-1)
        return torch.stack(
            [
                w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            ],
            -1,
        )

    q = mul(mul(quat(1, yaw), quat(0, pitch)), quat(2, roll))
    q = torch.where(q[..., :1] < 0, -q, q)
    vec = q[..., 1:]
    s = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    return torch.where(s > 1e-12, vec * angle / s.clamp_min(1e-12), 2 * vec)


def head_angles_deg(pose: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) pose → (B, 3) yaw, pitch, roll in degrees of the root joint (inverse of
    :func:`euler_to_axis_angle`)."""
    R = axis_angle_to_matrix(pose[:, 0].double())
    yaw = torch.atan2(R[:, 0, 2], R[:, 2, 2])
    pitch = torch.asin((-R[:, 1, 2]).clamp(-1, 1))
    roll = torch.atan2(R[:, 1, 0], R[:, 1, 1])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], -1)).float()


@dataclass(frozen=True)
class PoseRanges:
    """Head pose limits in degrees (the sampler never exceeds them)."""

    yaw_max_deg: float = 60.0
    pitch_max_deg: float = 20.0
    roll_max_deg: float = 10.0

    def __post_init__(self) -> None:
        for name in ("yaw_max_deg", "pitch_max_deg", "roll_max_deg"):
            value = getattr(self, name)
            if not 0.0 <= value <= 90.0:
                raise ValueError(f"{name}: expected 0–90 degrees, got {value}")


def _expression_units(names: Sequence[str]) -> list[tuple[int, ...]]:
    """Expression indices grouped into mirrored Left/Right pairs and singles; eye-gaze shapes are left out."""
    index = {n: i for i, n in enumerate(names)}
    units: list[tuple[int, ...]] = []
    for n, i in index.items():
        if n.startswith("eyeLook"):
            continue  # gaze comes from the eye joints
        if n.endswith("Right") and n[: -len("Right")] + "Left" in index:
            continue
        if n.endswith("Left") and n[: -len("Left")] + "Right" in index:
            units.append((i, index[n[: -len("Left")] + "Right"]))
        else:
            units.append((i,))
    return units


_EXPRESSION_EVENTS: tuple[tuple[float, float, float, tuple[str, ...]], ...] = (
    (0.25, 0.35, 1.0, ("mouthSmileLeft", "mouthSmileRight")),  # (probability, weight range, ARKit names)
    (0.2, 0.2, 0.8, ("jawOpen",)),
    (0.05, 0.5, 1.0, ("eyeBlinkLeft", "eyeBlinkRight")),
)


def sample_face_codes(
    face_model: FaceModel, n: int, generator: torch.Generator, ranges: PoseRanges = PoseRanges()
) -> FaceCodes:
    """Random identity, expression and pose codes (float32 on the generator's device).

    - identity: the face model's generation prior (``shape_prior_mean`` + ``shape_prior_chol`` · ε);
    - expression: sparse and mostly small (each ARKit action, mirrored pairs together, is active with
      probability 0.06 at weight U(0,1)²·0.6), plus occasional strong events: a smile (p 0.25), an open jaw
      (p 0.2), a blink (p 0.05); weights in [0, 1];
    - pose: root joint yaw (half uniform in ±yaw_max, half N(0, yaw_max/3) clipped), pitch and roll
      (N(0, max/2.5) clipped); jaw mostly nearly closed, sometimes open; a small common eye gaze; every joint
      within the model's ``joint_limits``.
    """
    if n < 1:
        raise ValueError(f"n: expected at least 1, got {n}")
    dev = generator.device
    K, E = face_model.n_shape, face_model.n_expr
    names = list(face_model.expr_names)
    index = {name: i for i, name in enumerate(names)}
    units = _expression_units(names)
    joints = {name: j for j, name in enumerate(face_model.joint_names)}
    limits = face_model.joint_limits.detach().to(dev, torch.float64)
    prior_mean = face_model.shape_prior_mean.detach().to(dev, torch.float64)
    prior_chol = face_model.shape_prior_chol.detach().to(dev, torch.float64)

    def r(lo: float = 0.0, hi: float = 1.0) -> float:
        return float(uniform(generator, lo, hi))

    def normal(std: float, bound: float) -> float:  # N(0, std) clipped to ±bound
        return min(
            max(float(torch.randn((), generator=generator, device=dev, dtype=torch.float64)) * std, -bound), bound
        )

    shapes, exprs, poses = [], [], []
    for _ in range(n):
        eps = torch.randn(K, generator=generator, device=dev, dtype=torch.float64)
        shapes.append(prior_mean + prior_chol @ eps)
        psi = torch.zeros(E, dtype=torch.float64, device=dev)
        for unit in units:
            if bernoulli(generator, 0.06):
                w = r() ** 2 * 0.6
                for i in unit:
                    psi[i] = w * r(0.75, 1.0)

        for p, lo, hi, keys in _EXPRESSION_EVENTS:
            if bernoulli(generator, p):
                w = r(lo, hi)
                for key in keys:
                    if key in index:
                        psi[index[key]] = w * r(0.85, 1.0)
        exprs.append(psi.clamp(0.0, 1.0))

        pose = torch.zeros(len(joints), 3, dtype=torch.float64, device=dev)
        ymax, pmax, rmax = (math.radians(x) for x in (ranges.yaw_max_deg, ranges.pitch_max_deg, ranges.roll_max_deg))
        yaw = r(-ymax, ymax) if bernoulli(generator, 0.5) else normal(ymax / 3, ymax)
        pitch, roll = normal(pmax / 2.5, pmax), normal(rmax / 2.5, rmax)
        yaw, pitch, roll = (torch.tensor(x, dtype=torch.float64, device=dev) for x in (yaw, pitch, roll))
        pose[0] = euler_to_axis_angle(yaw, pitch, roll)
        if "jaw" in joints:
            opening = r(0.0, 0.2) if bernoulli(generator, 0.2) else r(0.0, 0.03)
            pose[joints["jaw"]] = torch.tensor([opening, normal(0.02, 0.06), normal(0.01, 0.03)], dtype=torch.float64)
        gaze = torch.tensor([normal(0.06, 0.15), normal(0.08, 0.2), 0.0], dtype=torch.float64)
        for eye in ("eye_left", "eye_right"):
            if eye in joints:
                pose[joints[eye]] = gaze
        pose[1:] = torch.minimum(torch.maximum(pose[1:], limits[1:, :, 0]), limits[1:, :, 1])
        poses.append(pose)
    return FaceCodes(
        shape=torch.stack(shapes).float(), expression=torch.stack(exprs).float(), pose=torch.stack(poses).float()
    )


_SH_FIT_POINTS = 512


@lru_cache(maxsize=4)
def _sh_fit(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fibonacci-sphere normals (N, 3) and the least-squares map (9, N) from irradiance samples to SH."""
    i = torch.arange(_SH_FIT_POINTS, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / _SH_FIT_POINTS
    phi = math.pi * (1 + 5**0.5) * i
    rxy = torch.sqrt(1 - z * z)
    normals = torch.stack([rxy * torch.cos(phi), rxy * torch.sin(phi), z], -1)
    basis = sh_basis(normals)
    return normals.to(device), torch.linalg.pinv(basis).to(device)


def sh_from_lights(ambient: torch.Tensor, direction: torch.Tensor, directional: torch.Tensor) -> torch.Tensor:
    """Order-2 SH (the renderer's convention) of an ambient plus one directional light.

    The irradiance ``E(n) = ambient + directional · max(0, n · direction)`` is projected by least squares on
    the renderer's basis (:func:`models.render.sh_basis`) over a dense set of normals, i.e. its order-2
    truncation; the constant term is then raised where needed so that the shading stays ≥ 5 % of the ambient
    everywhere (the truncated clamped cosine dips slightly below zero behind the light).

    Args:
        ambient: (B, 3) RGB ambient irradiance.
        direction: (B, 3) unit direction towards the light (world frame; +z towards the camera).
        directional: (B, 3) RGB irradiance of the light at normal incidence.

    Returns:
        (B, 9, 3) SH coefficients.
    """
    normals, _ = _sh_fit(str(ambient.device))
    sh = directional_sh(direction, directional)
    sh[:, 0] += ambient / SH_CONSTANTS[0]  # a constant irradiance is the constant term's alone
    shading = sh_basis(normals.to(sh.dtype)) @ sh
    floor = 0.05 * ambient
    lift = (floor - shading.amin(1)).clamp_min(0.0)  # (B, 3)
    sh = sh.clone()
    sh[:, 0] += lift / SH_CONSTANTS[0]
    return sh


def directional_sh(direction: torch.Tensor, irradiance: torch.Tensor) -> torch.Tensor:
    """(B, 9, 3) the order-2 SH (least squares over a dense set of normals) of distant lights from unit
    ``direction`` (B, 3) with RGB ``irradiance`` (B, 3) at normal incidence: ``E(n) = irradiance · max(0, n · d)``."""
    normals, fit = _sh_fit(str(irradiance.device))
    normals, fit = normals.to(irradiance.dtype), fit.to(irradiance.dtype)
    cos = (direction.to(irradiance.dtype) @ normals.T).clamp_min(0.0)  # (B, N)
    return fit @ (irradiance[:, None, :] * cos[..., None])


def sample_sh(n: int, generator: torch.Generator, key_tint: float = 0.12) -> torch.Tensor:
    """Plausible random SH light, (n, 9, 3) float32 on the generator's device: :func:`sample_light`'s."""
    return sample_light(n, generator, key_tint)[0]


def sample_light(
    n: int, generator: torch.Generator, key_tint: float = 0.12
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plausible random light: its SH (n, 9, 3) float32 on the generator's device, and the key light's unit
    direction (n, 3) and RGB irradiance (n, 3) (float64, CPU) that it holds (for a highlight: :func:`sample_specular`).

    A light from the front half (azimuth ±75° about +z, elevation −20…+60°) with a fraction U(0.2, 0.7) of
    the irradiance ``E0 ~ U(0.8, 1.3)`` seen by a normal facing it, the rest ambient; the key light is tinted
    warm or cool by up to ±``key_tint`` (12 %), the ambient by a few %. See :func:`sh_from_lights`.
    """
    dev = generator.device
    amb, dirs, key = [], [], []
    for _ in range(n):
        e0, frac = float(uniform(generator, 0.8, 1.3)), float(uniform(generator, 0.2, 0.7))
        az, el = math.radians(float(uniform(generator, -75, 75))), math.radians(float(uniform(generator, -20, 60)))
        tau = float(uniform(generator, -key_tint, key_tint))
        tint_key = torch.tensor([1 + tau, 1.0, 1 - tau], dtype=torch.float64, device=dev)
        tint_key = tint_key * (1 + 0.02 * torch.randn(3, generator=generator, device=dev, dtype=torch.float64))
        tint_amb = 1 + 0.04 * torch.randn(3, generator=generator, device=dev, dtype=torch.float64)
        amb.append(e0 * (1 - frac) * tint_amb / tint_amb.mean())
        key.append(e0 * frac * tint_key / tint_key.mean())
        dirs.append(
            torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)], dtype=torch.float64)
        )
    direction, irradiance = torch.stack(dirs), torch.stack(key)
    sh = sh_from_lights(torch.stack(amb), direction.to(dev), irradiance).float()
    return sh, direction, irradiance.cpu()


def key_shadows(fm: FaceModel, verts: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The renderer's ``shadow`` for (B, V, 3) posed heads lit by their key lights ``key`` (B, 6): direction,
    irradiance (:class:`SceneParams`): the key light's own SH (its order-2 truncation, as :func:`sh_from_lights`
    holds it) and how much of it reaches each vertex past the head (:func:`facecore.texture.light_visibility`)."""
    direction, irradiance = key[:, :3].double(), key[:, 3:6].double()
    key_sh = directional_sh(direction, irradiance).to(verts.dtype)
    faces = np.asarray(fm.arrays.faces)
    visibility = [
        light_visibility(v.double().cpu().numpy(), faces, d.cpu().numpy())
        for v, d in zip(verts, direction, strict=True)
    ]
    return key_sh, torch.as_tensor(np.stack(visibility), dtype=verts.dtype, device=verts.device)


#: the highlights' Blinn–Phong exponents: broad (8: a matte face's sheen) to tight (48: an oily forehead's glint)
SPECULAR_EXPONENTS = (8.0, 48.0)


def sample_specular(
    generator: torch.Generator, direction: torch.Tensor, irradiance: torch.Tensor, strength: float
) -> torch.Tensor:
    """(n, 7) float32 highlights of the key lights (``direction``, ``irradiance``: (n, 3), :func:`sample_light`)
    for :func:`models.render.shading.specular_packed`: the light's colour at U(0, ``strength``) of its irradiance
    (skin reflects a few % specularly, an oily or sweaty one far more where the highlight is tight), the exponent
    log-uniform over :data:`SPECULAR_EXPONENTS`."""
    n = len(direction)
    share = uniform(generator, 0.0, strength, n)
    exponent = log_uniform(generator, *SPECULAR_EXPONENTS, n)
    return torch.cat([direction, irradiance * share[:, None], exponent[:, None]], 1).float()


#: mixed into a stream's seed for its highlights' draws: every other draw of a sample stays as it was
_SPECULAR_STREAM = 0x5BEC


def frame_camera(landmarks_world: torch.Tensor, fill: torch.Tensor, offset: torch.Tensor) -> WeakPerspectiveCamera:
    """The weak-perspective camera that frames the 68 landmarks.

    Args:
        landmarks_world: (B, 68, 3) posed landmarks.
        fill: (B,) fraction of the image width / height that the larger side of the landmarks' box spans.
        offset: (B, 2) NDC position of the box centre.

    Returns:
        camera with ``x_ndc = s · x + t`` (isotropic ``s``).
    """
    lo, hi = landmarks_world[..., :2].amin(1), landmarks_world[..., :2].amax(1)
    size = (hi - lo).amax(1).clamp_min(1e-6)
    scale = 2 * fill.to(size) / size
    translation = offset.to(size) - scale[:, None] * (lo + hi) / 2
    return WeakPerspectiveCamera(scale, translation)


@dataclass(frozen=True)
class BackgroundParams(Batched):
    """Random backgrounds: a linear colour gradient modulated by coloured multi-scale noise.

    Attributes:
        colors: (B, 2, 3) linear RGB at the two ends of the gradient.
        direction: (B, 2) unit gradient direction in the image (x right, y down).
        noise: (B,) relative amplitude of the noise.
        noise_seed: (B,) int64.
    """

    colors: torch.Tensor
    direction: torch.Tensor
    noise: torch.Tensor
    noise_seed: torch.Tensor


def sample_background_params(n: int, generator: torch.Generator) -> BackgroundParams:
    """Backgrounds of random brightness (linear 0.02–0.7) and saturation, gradient and texture strength."""
    dev = generator.device
    rows = []
    for _ in range(n):
        colors = []
        for _ in range(2):
            brightness = float(log_uniform(generator, 0.02, 0.7))
            hue = torch.randn(3, generator=generator, device=dev, dtype=torch.float64)
            sat = float(uniform(generator, 0.0, 0.6))
            colors.append((brightness * (1 + sat * (hue - hue.mean()) / hue.std().clamp_min(1e-6))).clamp(0.0, 1.0))
        angle = float(uniform(generator, 0.0, 2 * math.pi))
        rows.append(
            (
                torch.stack(colors),
                torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64, device=dev),
                uniform(generator, 0.0, 0.5)[0],
                torch.randint(0, 2**62, (), generator=generator, device=dev, dtype=torch.int64),
            )
        )
    return BackgroundParams(
        colors=torch.stack([r[0] for r in rows]).float(),
        direction=torch.stack([r[1] for r in rows]).float(),
        noise=torch.stack([r[2] for r in rows]).float(),
        noise_seed=torch.stack([r[3] for r in rows]),
    )


_BACKGROUND_OCTAVES = (3, 7, 17)


def render_background(params: BackgroundParams, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) linear background images, deterministic given the parameters."""
    H, W = (size, size) if isinstance(size, int) else size
    dev = params.colors.device
    B = params.colors.shape[0]
    y, x = torch.meshgrid(torch.linspace(-1, 1, H, device=dev), torch.linspace(-1, 1, W, device=dev), indexing="ij")
    t = (x[None] * params.direction[:, 0, None, None] + y[None] * params.direction[:, 1, None, None]) * 0.5 + 0.5
    image = torch.lerp(params.colors[:, 0, :, None, None], params.colors[:, 1, :, None, None], t[:, None])
    lattices = []
    for s in params.noise_seed.tolist():
        g = torch.Generator().manual_seed(int(s))
        lattices.append([torch.randn(3, c, c, generator=g) for c in _BACKGROUND_OCTAVES])
    # the octaves are smooth: sum them at a quarter of the size, then upsample once
    small = (max(H // 4, 8), max(W // 4, 8))
    noise = torch.zeros(B, 3, *small, device=dev)
    for o in range(len(_BACKGROUND_OCTAVES)):
        lat = torch.stack([lt[o] for lt in lattices]).to(dev)
        noise = noise + F.interpolate(lat, size=small, mode="bicubic", align_corners=True) / (o + 1)
    noise = F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False)
    return (image * (1 + params.noise[:, None, None, None] * noise)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Rendered samples
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneParams(Batched):
    """Everything random about a batch except the albedo.

    Attributes:
        codes: identity (B, K), expression (B, E) and pose (B, J, 3).
        sh: (B, 9, 3) SH light.
        face_fill: (B,) fraction of the image spanned by the larger side of the landmarks' box.
        face_offset: (B, 2) NDC centre of that box.
        background: background parameters.
        specular: (B, 7) the key light's highlight (:func:`sample_specular`; zero radiance: none).
        key: (B, 6) the key light held in ``sh``: its unit direction and RGB irradiance (:func:`sample_light`).
    """

    codes: FaceCodes
    sh: torch.Tensor
    face_fill: torch.Tensor
    face_offset: torch.Tensor
    background: BackgroundParams
    specular: torch.Tensor
    key: torch.Tensor


SYNTHETIC_IDENTITIES = ("prior", "phenotype")


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of :class:`SyntheticFaces`.

    Attributes:
        image_size: rendered images are image_size × image_size pixels.
        albedo_size: UV albedo resolution (64–1024).
        seed: stream seed; sample ``i`` depends only on ``(seed, i)``.
        length: number of samples an epoch has (``len()``); any index ≥ 0 works.
        pose: head pose limits.
        face_fill: range of the fraction of the image spanned by the larger side of the landmarks' box.
        landmark_depth_tolerance: a landmark is visible when it lies at most this far (metres) behind the
            visible surface at its pixel (plus four pixels' worth of depth slope).
        supersample: each pixel is the mean of ``supersample``² rendered samples (a ``supersample`` times larger
            render, box-averaged in linear light; ``mask`` then holds the coverage): edges, lips that nearly meet
            and the eyes' rims come out as a camera blurs them instead of a 1-px staircase (closed lips as a
            jagged black-and-white slit at 1: mouth crops of both looked at). Landmarks and their visibility are
            the same either way. Cost at 192 px on this 2-core CPU: 52 → 82 ms a face at 2.
        identity: ``prior`` — the head from the face model's generation prior, independent of the albedo;
            ``phenotype`` — the head drawn given the sex, age and skin the albedo shows
            (:func:`training.data.phenotype.phenotype_shapes`; the default anny face model only).
        key_tint: the key light's warm–cool tint range (±, relative; :func:`sample_sh`); the ambient stays near
            white. The default (0.12) is the training's; wider (a sun beside a blue sky: ~0.35) for evaluations of
            a light whose colour differs by direction (``benchmarks/light_fit.py --key-tint``). The draws are the
            same whatever its value (only their scale changes).
        specular: the key light's highlight on the skin reaches up to this fraction of its irradiance
            (:func:`sample_specular`; 0: Lambertian skin, the training's default; the other draws are the same
            whatever its value): photos show skin's sheen and oily glints, which the texture extraction must not
            take for albedo (``benchmarks/texture_extraction.py --specular``).
        shadows: the key light casts the head's own shadows (a nose's on the cheek, a brow ridge's in the socket, the
            jaw's on the neck; :func:`key_shadows`), which the SH shading alone does not: photos show them, and the
            texture extraction must not take them for darker skin (``benchmarks/texture_extraction.py --shadows``;
            False: the training's renders; the draws are the same either way).
    """

    image_size: int = 224
    albedo_size: int = 256
    seed: int = 0
    length: int = 1_000_000
    pose: PoseRanges = PoseRanges()
    face_fill: tuple[float, float] = (0.6, 0.8)
    landmark_depth_tolerance: float = 0.003
    supersample: int = 1
    identity: str = "prior"
    key_tint: float = 0.12
    specular: float = 0.0
    shadows: bool = False

    def __post_init__(self) -> None:
        if self.identity not in SYNTHETIC_IDENTITIES:
            raise ValueError(f"identity: expected one of {SYNTHETIC_IDENTITIES}, got {self.identity!r}")
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"image_size: expected 16–4096 pixels, got {self.image_size}")
        if not 0.0 <= self.key_tint < 1.0:
            raise ValueError(f"key_tint: expected a tint within [0, 1), got {self.key_tint}")
        if not 0.0 <= self.specular <= 2.0:
            raise ValueError(f"specular: expected a highlight strength within [0, 2], got {self.specular}")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample: expected 1–4 samples per pixel side, got {self.supersample}")
        if not 64 <= self.albedo_size <= 1024:
            raise ValueError(f"albedo_size: expected 64–1024 texels, got {self.albedo_size}")
        if self.length < 1:
            raise ValueError(f"length: expected at least 1, got {self.length}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: expected 0 <= seed < 2**63, got {self.seed}")
        lo, hi = self.face_fill
        if not 0.05 <= lo <= hi <= 0.95:
            raise ValueError(f"face_fill: expected 0.05 <= low <= high <= 0.95, got {self.face_fill}")


@dataclass(frozen=True)
class SyntheticBatch(Batched):
    """A rendered batch with its ground truth.

    Attributes:
        index: (B,) long sample indices.
        image_srgb: (B, 3, H, W) the render over its background, sRGB-encoded in [0, 1] (like a photo;
            :func:`srgb_to_linear` gives back the linear render, clipped to [0, 1]).
        mask: (B, 1, H, W) 1 where the head is visible.
        albedo_uv: (B, 3, Hu, Wu) linear albedo in the face model's UV layout (row 0 is v = 1).
        codes: identity, expression and pose codes.
        sh: (B, 9, 3) SH light (:mod:`models.render.shading` convention).
        camera: the weak-perspective camera (scale (B,), translation (B, 2)).
        verts_world: (B, V, 3) posed vertices, metres.
        landmarks_px: (B, 68, 2) projected 3-D landmarks in pixels (x right, y down; pixel (col, row) has
            its centre at integer (col, row)).
        landmarks_visible: (B, 68) bool, the landmark is inside the image and not hidden (z-buffer test).
        albedo_params: the albedo's parameters.
    """

    index: torch.Tensor
    image_srgb: torch.Tensor
    mask: torch.Tensor
    albedo_uv: torch.Tensor
    codes: FaceCodes
    sh: torch.Tensor
    camera: WeakPerspectiveCamera
    verts_world: torch.Tensor
    landmarks_px: torch.Tensor
    landmarks_visible: torch.Tensor
    albedo_params: AlbedoParams

    def __len__(self) -> int:
        return int(self.index.shape[0])


def eye_atlases(face_model: FaceModel, albedo_params: AlbedoParams) -> torch.Tensor:
    """(B, 3, H, W) linear eye-and-mouth atlases (:meth:`models.render.MeshRenderer.asset_textures`) with each
    sample's iris colour (its ``iris_melanin``): the eyes render from the same assets as the service's exports."""
    iris_srgb = linear_to_srgb(iris_linear_rgb(albedo_params.iris_melanin.float().cpu()))
    return MeshRenderer.asset_textures(face_model, iris_srgb.numpy())


class SyntheticFaces:
    """Rendered synthetic faces with full ground truth; sample ``i`` is a pure function of ``(seed, i)``.

    Args:
        config: sizes, seed, pose and framing ranges.
        face_model: the face model (default: the built-in one).
        device: where albedo, geometry and rendering run (the random draws are always on CPU).

    Use :meth:`batch` for explicit indices, :meth:`batches` to stream (resumable, DDP-shardable), or index it
    like a dataset (``ds[i]`` is a batch of one; :meth:`SyntheticBatch.cat` collates).
    """

    def __init__(
        self,
        config: SyntheticConfig = SyntheticConfig(),
        face_model: FaceModel | None = None,
        device: torch.device | str = "cpu",
    ):
        self.config = config
        self.device = torch.device(device)
        fm = face_model if face_model is not None else FaceModel.from_file()
        on = fm.mean.device
        # the caller's model is never moved: codes are drawn with a CPU copy, rendering uses one on `device`
        self._sampling_model = fm if on.type == "cpu" else FaceModel(fm.arrays)
        self.face_model = fm if on == self.device else FaceModel(fm.arrays).to(self.device)
        self.albedo = ProceduralAlbedo(self.face_model)
        size = config.image_size * config.supersample
        self.renderer = MeshRenderer.from_face_model(self.face_model, size, teeth=True).to(self.device)

    def __len__(self) -> int:
        return self.config.length

    def __getitem__(self, index: int) -> SyntheticBatch:
        if not isinstance(index, int | np.integer) or index < 0:
            raise IndexError(f"index: expected a non-negative int, got {index!r}")
        return self.batch([int(index)])

    def generator(self, index: int) -> torch.Generator:
        """The CPU generator of sample ``index`` (freshly seeded)."""
        return torch.Generator().manual_seed(_index_seed(self.config.seed, index))

    def sample_params(self, indices: Sequence[int]) -> tuple[AlbedoParams, SceneParams]:
        """All random draws of the given samples (CPU), in a fixed order per sample."""
        albedo, scenes = [], []
        lo, hi = self.config.face_fill
        for i in indices:
            g = self.generator(int(i))
            albedo.append(sample_albedo_params(1, g))
            codes = sample_face_codes(self._sampling_model, 1, g, self.config.pose)
            sh, key_direction, key_irradiance = sample_light(1, g, self.config.key_tint)
            fill = uniform(g, lo, hi).float()
            offset = ((torch.rand(1, 2, generator=g, dtype=torch.float64) * 2 - 1) * 0.6 * (1 - fill - 0.04)).float()
            background = sample_background_params(1, g)
            if self.config.identity == "phenotype":  # drawn last: every other draw of the sample stays as it was
                shape = phenotype_shapes(self._sampling_model, albedo[-1], g)
                codes = FaceCodes(shape, codes.expression, codes.pose)
            # the highlight from a stream of its own: the other draws are the same whatever its strength
            g_spec = torch.Generator().manual_seed(_index_seed(self.config.seed ^ _SPECULAR_STREAM, int(i)))
            specular = sample_specular(g_spec, key_direction, key_irradiance, self.config.specular)
            scenes.append(
                SceneParams(
                    codes=codes,
                    sh=sh,
                    face_fill=fill,
                    face_offset=offset,
                    background=background,
                    specular=specular,
                    key=torch.cat([key_direction, key_irradiance], 1).float(),
                )
            )
        return AlbedoParams.cat(albedo), SceneParams.cat(scenes)

    def batch(self, indices: Sequence[int]) -> SyntheticBatch:
        """Render the samples ``indices`` as one batch."""
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise ValueError(f"indices: expected a non-empty list of non-negative ints, got {indices}")
        albedo_params, scene = self.sample_params(indices)
        return self.render(torch.tensor(indices), albedo_params.to(self.device), scene.to(self.device))

    @torch.no_grad()
    def render(
        self,
        index: torch.Tensor,
        albedo_params: AlbedoParams,
        scene: SceneParams,
        albedo: torch.Tensor | None = None,
        eyes: torch.Tensor | None = None,
    ) -> SyntheticBatch:
        """Turn drawn parameters into a :class:`SyntheticBatch` (deterministic). ``albedo`` ((B, 3, Hu, Wu) linear,
        in the face model's UV layout) replaces the procedural albedo of ``albedo_params`` (which still colour the
        irises), e.g. an AlbedoGAN's maps. ``eyes``: the :func:`eye_atlases` of ``albedo_params`` when the caller
        has them (they are numpy work on the CPU, ~30 ms a sample: a GPU stream computes them in its loader)."""
        cfg = self.config
        fm = self.face_model
        albedo = self.albedo(albedo_params, cfg.albedo_size) if albedo is None else albedo.to(self.device)
        codes = scene.codes
        verts = fm(codes.shape, codes.expression, codes.pose)
        lm_world = fm.landmarks(verts)
        camera = frame_camera(lm_world, scene.face_fill, scene.face_offset)
        k = cfg.supersample
        background = render_background(scene.background, cfg.image_size * k)
        eyes = (eye_atlases(fm, albedo_params) if eyes is None else eyes).to(verts.device)
        specular = scene.specular if bool((scene.specular[:, 3:6] > 0).any()) else None
        shadow = key_shadows(fm, verts, scene.key) if cfg.shadows else None
        out = self.renderer(
            verts, camera, albedo, scene.sh, background, asset_texture=eyes, specular=specular, shadow=shadow
        )
        H = W = cfg.image_size
        lm = camera.project(lm_world)
        px = torch.stack([(lm[..., 0] + 1) * 0.5 * W - 0.5, (1 - lm[..., 1]) * 0.5 * H - 0.5], -1)
        # visibility from the render's own buffers, at the sample nearest each landmark
        hi = (px + 0.5) * k - 0.5
        col, row = torch.floor(hi[..., 0] + 0.5).long(), torch.floor(hi[..., 1] + 0.5).long()
        inside = (col >= 0) & (col < W * k) & (row >= 0) & (row < H * k)
        b = torch.arange(len(index), device=verts.device)[:, None].expand_as(col)
        flat = (b * H * k + row.clamp(0, H * k - 1)) * W * k + col.clamp(0, W * k - 1)
        face = out.face_id.reshape(-1)[flat]
        depth = out.fragments.depth.reshape(-1)[flat]
        pixel_m = 2.0 / (camera.scale[:, None] * W)
        visible = inside & (face >= 0) & (lm[..., 2] >= depth - cfg.landmark_depth_tolerance - 4 * pixel_m)
        image, mask = (out.image, out.mask) if k == 1 else (F.avg_pool2d(out.image, k), F.avg_pool2d(out.mask, k))
        return SyntheticBatch(
            index=index.to(verts.device),
            image_srgb=linear_to_srgb(image),
            mask=mask,
            albedo_uv=albedo,
            codes=codes,
            sh=scene.sh,
            camera=camera,
            verts_world=verts,
            landmarks_px=px,
            landmarks_visible=visible,
            albedo_params=albedo_params,
        )

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> Iterator[SyntheticBatch]:
        """Stream batches: step ``s`` of rank ``r`` renders indices ``(s·world_size + r)·batch_size + [0, batch_size)``.

        Args:
            batch_size: samples per batch (per rank).
            start: first step (resume by passing the number of steps already done).
            rank, world_size: DDP sharding; ranks never share an index.
            num_batches: stop after this many batches (default: run through ``len(self)`` samples, then stop).
        """
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start < 0:
            raise ValueError(f"batches: bad arguments {batch_size=}, {start=}, {rank=}, {world_size=}")
        stop = num_batches if num_batches is not None else max(0, -(-len(self) // (batch_size * world_size)) - start)
        for s in range(start, start + stop):
            yield self.batch(self.batch_indices(s, batch_size, rank, world_size))

    @staticmethod
    def batch_indices(step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """The sample indices of step ``step`` on rank ``rank`` (see :meth:`batches`)."""
        first = (step * world_size + rank) * batch_size
        return list(range(first, first + batch_size))
