"""DECA-style detail: (detail code, expression, jaw pose) → UV displacement map → detailed mesh and normals.

**Decoder.** ``z = [detail (D), expression (E), jaw pose (3)]`` feeds two paths whose sum goes through
``max_m · tanh(·)`` (metres, ``max_m = max_mm / 1000``; DECA uses 10 mm):

- *smooth path*: ``Linear(z) → (coarse_resolution)² map``, upsampled to the output resolution (bicubic by
  default, bilinear on request). A low-rank, smooth displacement basis: it carries the geometry the linear
  face model misses (measured on face scans: the coarse basis leaves ≥ 0.57 mm even for an oracle fit, a
  smooth offset along normals reaches 0.2–0.4 mm), not only wrinkles.
- *fine path*: a generator-style stack, ``Linear(z) → C×s0×s0``, then per octave ``upsample ×2 (bilinear)
  → conv3×3 → LeakyReLU → conv3×3 → LeakyReLU``, then ``conv3×3 → 1`` (wrinkles, pores-scale detail).

Both final layers start at zero, so a fresh decoder outputs no displacement (the coarse surface).
Regularise with :func:`displacement_smoothness` and :func:`displacement_magnitude` rather than forbidding low
frequencies.

**Detailed mesh.** :class:`DetailedMesh` holds the vertices of the exported detailed mesh (the subdivided skin of
:func:`facecore.geometry.mesh_sampling`) as buffers; :func:`detailed_vertices` is the torch twin of
:func:`facecore.geometry.detailed_mesh` (its first N positions): barycentric position on the coarse surface +
weighted displacement (bilinear, texel centres at half-integers, periodic in u, rows clamped) along the
normalised, barycentrically interpolated vertex normal. :class:`UVGrid` samples the surface at the texel corners
of a UV map instead (:func:`facecore.geometry.uv_sampling`); :func:`detail_normal_map` differentiates the
displaced grid into a per-texel normal map for shading.

UV convention (the face model's): u left → right, v bottom → top, map row 0 is v = 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.config import VersionedConfig
from facecore.geometry import FaceModelArrays, mesh_sampling, uv_sampling
from models.render.shading import vertex_normals

JAW_POSE_DIM = 3  # axis-angle
UpsampleMode = Literal["bilinear", "bicubic"]


def _arrays_of(face_model: Any) -> FaceModelArrays:
    arrays = getattr(face_model, "arrays", face_model)
    if not isinstance(arrays, FaceModelArrays):
        raise TypeError(f"face_model: expected a FaceModel or FaceModelArrays, got {type(face_model).__name__}")
    return arrays


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DisplacementConfig(VersionedConfig):
    """Everything needed to rebuild a :class:`DisplacementDecoder`; saved as JSON beside its weights.

    Attributes:
        detail_dim: D, detail-code size (the encoder's; DECA: 128).
        n_expr: E, expression weights (face model).
        resolution: output map side H = W (DECA: 256); ``start_resolution · 2^k``.
        max_mm: output bound, ``|displacement| < max_mm`` millimetres.
        coarse_resolution: side of the smooth path's map (≤ resolution).
        coarse_upsample: how the smooth map is enlarged (bicubic: C¹, no creases in the normal map).
        start_resolution: side of the fine path's first feature map.
        channel_base, channel_max, channel_min: fine-path channels at side r are
            ``clamp(channel_base // r, channel_min, channel_max)``.
    """

    KIND: ClassVar[str] = "displacement.DisplacementDecoder"

    detail_dim: int
    n_expr: int
    resolution: int = 256
    max_mm: float = 10.0
    coarse_resolution: int = 32
    coarse_upsample: UpsampleMode = "bicubic"
    start_resolution: int = 8
    channel_base: int = 4096
    channel_max: int = 128
    channel_min: int = 16

    def __post_init__(self) -> None:
        if self.detail_dim < 0 or self.n_expr < 0 or self.detail_dim + self.n_expr < 1:
            raise ValueError("detail_dim and n_expr must be non-negative and not both zero")
        r, s = self.resolution, self.start_resolution
        if s < 1 or r < s or r % s or (r // s) & (r // s - 1):
            raise ValueError(f"resolution {r} must be start_resolution {s} times a power of two")
        if not 1 <= self.coarse_resolution <= r:
            raise ValueError(f"coarse_resolution: expected 1..{r}, got {self.coarse_resolution}")
        if self.coarse_upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"coarse_upsample: expected 'bilinear' or 'bicubic', got {self.coarse_upsample!r}")
        if not (math.isfinite(self.max_mm) and self.max_mm > 0):
            raise ValueError(f"max_mm: expected a positive number, got {self.max_mm}")
        if min(self.channel_base, self.channel_min) < 1 or self.channel_max < self.channel_min:
            raise ValueError("channels: need channel_base, channel_min ≥ 1 and channel_max ≥ channel_min")

    @classmethod
    def for_face_model(cls, face_model: Any, detail_dim: int = 128, **kwargs: Any) -> DisplacementConfig:
        """Sizes from the face model (``FaceModel`` or its arrays); ``detail_dim`` must equal the encoder's."""
        return cls(detail_dim=detail_dim, n_expr=_arrays_of(face_model).n_expr, **kwargs)

    def channels(self, side: int) -> int:
        return int(min(max(self.channel_base // side, self.channel_min), self.channel_max))


# ---------------------------------------------------------------------------------------------- decoder
class DisplacementDecoder(nn.Module):
    """(detail (B, D), expression (B, E), jaw pose (B, 3)) → displacement (B, 1, H, W) in metres.

    Args: the fields of :class:`DisplacementConfig` (use :meth:`from_config`).
    """

    def __init__(
        self,
        detail_dim: int,
        n_expr: int,
        resolution: int = 256,
        max_mm: float = 10.0,
        coarse_resolution: int = 32,
        coarse_upsample: UpsampleMode = "bicubic",
        start_resolution: int = 8,
        channel_base: int = 4096,
        channel_max: int = 128,
        channel_min: int = 16,
    ):
        super().__init__()
        cfg = DisplacementConfig(
            detail_dim=detail_dim,
            n_expr=n_expr,
            resolution=resolution,
            max_mm=max_mm,
            coarse_resolution=coarse_resolution,
            coarse_upsample=coarse_upsample,
            start_resolution=start_resolution,
            channel_base=channel_base,
            channel_max=channel_max,
            channel_min=channel_min,
        )
        self._config = cfg
        self.max_m = cfg.max_mm / 1000.0
        z_dim = detail_dim + n_expr + JAW_POSE_DIM
        # smooth path
        self.coarse = nn.Linear(z_dim, coarse_resolution * coarse_resolution)
        # fine path
        s0 = start_resolution
        c0 = cfg.channels(s0)
        self.fine_input = nn.Linear(z_dim, c0 * s0 * s0)
        blocks: list[nn.Module] = []
        side, cin = s0, c0
        while side < resolution:
            side *= 2
            cout = cfg.channels(side)
            blocks.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(cin, cout, 3, padding=1),
                    nn.LeakyReLU(0.2),
                    nn.Conv2d(cout, cout, 3, padding=1),
                    nn.LeakyReLU(0.2),
                )
            )
            cin = cout
        self.fine_blocks = nn.Sequential(*blocks)
        self.fine_output = nn.Conv2d(cin, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        for last in (self.coarse, self.fine_output):  # start from "no displacement"
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @classmethod
    def from_config(cls, config: DisplacementConfig) -> DisplacementDecoder:
        """Build from a :class:`DisplacementConfig` (fresh weights)."""
        return cls(**dataclasses.asdict(config))

    @property
    def config(self) -> DisplacementConfig:
        return self._config

    def _latent(self, detail: torch.Tensor, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        cfg = self._config
        for name, x, width in (
            ("detail", detail, cfg.detail_dim),
            ("expression", expression, cfg.n_expr),
            ("jaw_pose", jaw_pose, JAW_POSE_DIM),
        ):
            if x.dim() != 2 or x.shape[1] != width:
                raise ValueError(f"{name}: expected shape (B, {width}), got {tuple(x.shape)}")
        if not detail.shape[0] == expression.shape[0] == jaw_pose.shape[0]:
            raise ValueError("detail, expression and jaw_pose must have the same batch size")
        return torch.cat([detail, expression, jaw_pose], dim=1)

    def smooth(self, detail: torch.Tensor, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the smooth path: (B, 1, H, W) (before ``max_m · tanh``)."""
        cfg = self._config
        z = self._latent(detail, expression, jaw_pose)
        c = cfg.coarse_resolution
        coarse = self.coarse(z).reshape(-1, 1, c, c)
        if c == cfg.resolution:
            return coarse
        size = (cfg.resolution, cfg.resolution)
        return F.interpolate(coarse, size=size, mode=cfg.coarse_upsample, align_corners=False)

    def fine(self, detail: torch.Tensor, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the fine path: (B, 1, H, W) (before ``max_m · tanh``)."""
        s0 = self._config.start_resolution
        z = self._latent(detail, expression, jaw_pose)
        x = F.leaky_relu(self.fine_input(z), 0.2).reshape(z.shape[0], -1, s0, s0)
        return self.fine_output(self.fine_blocks(x))

    def forward(self, detail: torch.Tensor, expression: torch.Tensor, jaw_pose: torch.Tensor) -> torch.Tensor:
        """Displacement along the surface normal.

        Args:
            detail: (B, D) detail code.
            expression: (B, E) expression weights.
            jaw_pose: (B, 3) axis-angle of the jaw joint.

        Returns:
            (B, 1, H, W) metres, ``|d| < max_mm / 1000``; row 0 is v = 1.
        """
        pre = self.smooth(detail, expression, jaw_pose) + self.fine(detail, expression, jaw_pose)
        return self.max_m * torch.tanh(pre)


# ---------------------------------------------------------------------------------------------- regularisers
def _mask_like(mask: torch.Tensor | None, disp: torch.Tensor) -> torch.Tensor:
    if disp.dim() != 4 or disp.shape[1] != 1:
        raise ValueError(f"displacement: expected shape (B, 1, H, W), got {tuple(disp.shape)}")
    if mask is None:
        return torch.ones_like(disp)
    m = mask.to(disp.dtype)
    if m.dim() == 2:
        m = m[None, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[-2:] != disp.shape[-2:] or m.shape[0] not in (1, disp.shape[0]):
        raise ValueError(
            f"mask: expected (H, W) or (1 | B, 1, H, W) matching {tuple(disp.shape)}, got {tuple(mask.shape)}"
        )
    return m.expand_as(disp)


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    count = weight.sum()
    if float(count) <= 0:
        raise ValueError("mask: no valid texels")
    return (values * weight).sum() / count


def displacement_smoothness(
    displacement: torch.Tensor, mask: torch.Tensor | None = None, kind: Literal["laplacian", "gradient"] = "laplacian"
) -> torch.Tensor:
    """Roughness of a displacement map inside the UV validity mask (a scalar, in the map's units²).

    ``laplacian`` (default): the mean over texels p whose 4 neighbours are valid, and over the batch, of
    ``(Δd)(p)² = (d(i−1,j) + d(i+1,j) + d(i,j−1) + d(i,j+1) − 4·d(i,j))²``. It leaves constant and linear
    ramps free (smooth geometry costs ≈ nothing) and penalises creases and high frequencies.

    ``gradient``: the mean over pairs of valid horizontal and vertical neighbours of
    ``(d(i,j+1) − d(i,j))²`` and ``(d(i+1,j) − d(i,j))²`` (all pairs pooled).

    Pass millimetres (``1000 · d``) for loss weights of order one. The u seam is not wrapped.

    Args:
        displacement: (B, 1, H, W).
        mask: (H, W) or (1 | B, 1, H, W), nonzero where valid (e.g. :func:`uv_texel_mask`); None = all.
        kind: ``"laplacian"`` or ``"gradient"``.
    """
    d = displacement
    m = _mask_like(mask, d)
    if kind == "laplacian":
        lap = d[..., :-2, 1:-1] + d[..., 2:, 1:-1] + d[..., 1:-1, :-2] + d[..., 1:-1, 2:] - 4.0 * d[..., 1:-1, 1:-1]
        w = m[..., 1:-1, 1:-1] * m[..., :-2, 1:-1] * m[..., 2:, 1:-1] * m[..., 1:-1, :-2] * m[..., 1:-1, 2:]
        return _masked_mean(lap.square(), w)
    if kind == "gradient":
        dx, wx = d[..., :, 1:] - d[..., :, :-1], m[..., :, 1:] * m[..., :, :-1]
        dy, wy = d[..., 1:, :] - d[..., :-1, :], m[..., 1:, :] * m[..., :-1, :]
        count = wx.sum() + wy.sum()
        if float(count) <= 0:
            raise ValueError("mask: no valid neighbour pairs")
        return ((dx.square() * wx).sum() + (dy.square() * wy).sum()) / count
    raise ValueError(f"kind: expected 'laplacian' or 'gradient', got {kind!r}")


def displacement_magnitude(displacement: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared displacement ``Σ m·d² / Σ m`` over valid texels and the batch (a scalar, map units²).

    Args:
        displacement: (B, 1, H, W).
        mask: (H, W) or (1 | B, 1, H, W), nonzero where valid; None = all texels.
    """
    return _masked_mean(displacement.square(), _mask_like(mask, displacement))


def uv_texel_mask(face_model: Any, resolution: int, require: Literal["any", "all"] = "any") -> torch.Tensor:
    """(1, 1, R, R) float mask of the texels of an R × R UV map that lie on the skin surface.

    A texel is bounded by four nodes of the face model's UV grid sampling
    (:func:`facecore.geometry.uv_sampling` at the same R). ``any``: at least one corner is a valid surface
    point, i.e. the texel influences the detailed mesh (use it for regularisers); ``all``: all four are, i.e.
    the detailed surface covers the texel (where :func:`detail_normal_map` is defined).
    """
    grid = uv_sampling(_arrays_of(face_model), int(resolution)).grid >= 0
    corners = np.stack([grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]])
    if require == "any":
        valid = corners.any(0)
    elif require == "all":
        valid = corners.all(0)
    else:
        raise ValueError(f"require: expected 'any' or 'all', got {require!r}")
    return torch.from_numpy(valid.astype(np.float32))[None, None]


# ---------------------------------------------------------------------------------------------- detailed mesh
class SurfacePoints(nn.Module):
    """Points fixed on the coarse surface (coarse triangle + barycentric coordinates) with their UVs and the
    triangles over them, as buffers (non-persistent: derived data); the base of :class:`UVGrid` and
    :class:`DetailedMesh`.

    Buffers:
        tri: (N, 3) coarse vertex indices of each point's triangle.
        bary: (N, 3) its barycentric coordinates.
        uv: (N, 2) where it reads the displacement map (v up).
        weight: (N,) the share of the displacement the point takes, or None (all of it).
        faces: (F, 3) coarse triangles (for the vertex normals).
        point_faces: (M, 3) triangles over the N points.
    """

    def __init__(self, arrays: FaceModelArrays, sampling: Any, uv: np.ndarray, weight: np.ndarray | None):
        super().__init__()
        self._buffer("tri", arrays.faces[sampling.face], torch.long)
        self._buffer("bary", sampling.bary, torch.float32)
        self._buffer("uv", uv, torch.float32)
        self._buffer("weight", weight, torch.float32)
        self._buffer("faces", arrays.faces, torch.long)
        self._buffer("point_faces", sampling.faces, torch.long)

    def _buffer(self, name: str, value: np.ndarray | None, dtype: torch.dtype) -> None:
        tensor = None if value is None else torch.as_tensor(np.ascontiguousarray(value), dtype=dtype)
        self.register_buffer(name, tensor, persistent=False)

    @property
    def n_points(self) -> int:
        return int(self.tri.shape[0])

    def forward(
        self, verts: torch.Tensor, displacement: torch.Tensor | None = None, normals: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:func:`detailed_vertices` at these points."""
        return detailed_vertices(verts, displacement, self, normals)


class DetailedMesh(SurfacePoints):
    """The vertices of the exported detailed mesh (:func:`facecore.geometry.mesh_sampling` at R): calling it is
    the torch twin of ``facecore.geometry.detailed_mesh(...).positions[:N]``, ``point_faces`` its first
    triangles (the subdivided skin).

    Args:
        face_model: :class:`models.face.FaceModel` or :class:`facecore.geometry.FaceModelArrays`.
        resolution: R, as the service's ``mesh_resolution``.
    """

    def __init__(self, face_model: Any, resolution: int):
        arrays = _arrays_of(face_model)
        s = mesh_sampling(arrays, int(resolution))
        super().__init__(arrays, s, s.lookup_uv, s.weight)
        self.resolution = int(resolution)


class UVGrid(SurfacePoints):
    """The face model's UV grid sampling at resolution R (:func:`facecore.geometry.uv_sampling`): surface
    points at the texel corners of an R × R map, for per-texel quantities (:meth:`normal_map`) and as evenly
    spread surface samples.

    Args:
        face_model: :class:`models.face.FaceModel` or :class:`facecore.geometry.FaceModelArrays`.
        resolution: R; the grid has up to (R+1)² points (texel corners), the normal map is R × R.

    Buffers (besides :class:`SurfacePoints`'):
        node: (N,) each point's flat index ``row · (R+1) + col`` in the grid (row 0 is v = 1).
        texel_mask: (1, 1, R, R) 1 where all four corners of a texel are grid points.
    """

    def __init__(self, face_model: Any, resolution: int):
        arrays = _arrays_of(face_model)
        s = uv_sampling(arrays, int(resolution))
        super().__init__(arrays, s, s.uv, None)
        self.resolution = s.resolution
        node = np.full(len(s.face), -1, np.int64)
        flat = np.flatnonzero(s.grid.ravel() >= 0)
        node[s.grid.ravel()[flat]] = flat
        self._buffer("node", node, torch.long)
        self.register_buffer("texel_mask", uv_texel_mask(arrays, s.resolution, "all"), persistent=False)

    def normal_map(
        self, verts: torch.Tensor, displacement: torch.Tensor, space: Literal["tangent", "world"] = "tangent"
    ) -> torch.Tensor:
        """:func:`detail_normal_map` with this sampling."""
        return detail_normal_map(verts, displacement, self, space)


def detailed_vertices(
    verts: torch.Tensor,
    displacement: torch.Tensor | None,
    sampling: SurfacePoints,
    normals: torch.Tensor | None = None,
) -> torch.Tensor:
    """Displaced surface points: the torch twin of :func:`facecore.geometry.detailed_mesh`'s first N positions
    (for a :class:`DetailedMesh`).

    ``p = Σ_k b_k·v_k + w · d(uv) · normalize(Σ_k b_k·n_k)`` with (b, v, n) the barycentrics, corner positions
    and area-weighted unit vertex normals of the point's coarse triangle, ``w`` the point's weight (1 without)
    and ``d(uv)`` the bilinear lookup of the displacement map (texel centres at half-integers, rows clamped at
    the border, columns periodic in u as ``facecore.geometry.sample_map(..., wrap_u=True)``; row 0 = v 1).

    Args:
        verts: (B, V, 3) posed coarse vertices, metres.
        displacement: (B | 1, 1, H, W) metres, any H × W ≥ 2 × 2; None = the coarse surface resampled.
        sampling: a :class:`SurfacePoints`.
        normals: (B, V, 3) unit vertex normals if already computed (else from ``verts``).

    Returns:
        (B, N, 3) metres. Differentiable in ``verts`` and ``displacement``.
    """
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts: expected shape (B, V, 3), got {tuple(verts.shape)}")
    bary = sampling.bary.to(verts.dtype)[None, :, :, None]  # (1, N, 3, 1)
    pos = (verts[:, sampling.tri] * bary).sum(2)
    if displacement is None:
        return pos
    B = verts.shape[0]
    if displacement.dim() != 4 or displacement.shape[1] != 1 or min(displacement.shape[-2:]) < 2:
        raise ValueError(f"displacement: expected shape (B, 1, H, W), H, W ≥ 2, got {tuple(displacement.shape)}")
    if displacement.shape[0] not in (1, B):
        raise ValueError(f"displacement: batch {displacement.shape[0]} does not match the vertices' batch {B}")
    vn = vertex_normals(verts, sampling.faces) if normals is None else normals
    nrm = F.normalize((vn[:, sampling.tri] * bary).sum(2), dim=-1, eps=1e-12)
    # periodic in u: one column from the other side padded on each side, u taken modulo 1, so pixel x of the
    # map is x + 1 of the padded one; grid_sample (align_corners=False) puts pixel i at (2i + 1) / size − 1
    disp = displacement.to(verts.dtype).expand(B, -1, -1, -1)
    W = disp.shape[-1]
    disp = torch.cat([disp[..., -1:], disp, disp[..., :1]], dim=-1)
    u, v = sampling.uv.to(verts.dtype).unbind(-1)
    x = torch.remainder(u, 1.0) * W + 0.5  # padded pixel coordinate
    grid = torch.stack([(2.0 * x + 1.0) / (W + 2) - 1.0, 1.0 - 2.0 * v], dim=-1)[None, None].expand(B, -1, -1, -1)
    d = F.grid_sample(disp, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0, :, None]
    if sampling.weight is not None:
        d = d * sampling.weight.to(verts.dtype)[:, None]
    return pos + d * nrm


def _grid_image(points: torch.Tensor, sampling: UVGrid) -> torch.Tensor:
    """(B, N, 3) grid points → (B, R+1, R+1, 3) node image (zero at invalid nodes)."""
    B, R1 = points.shape[0], sampling.resolution + 1
    img = points.new_zeros(B, R1 * R1, 3).index_copy(1, sampling.node, points)
    return img.view(B, R1, R1, 3)


def _quad_derivatives(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-texel surface derivatives along +u and +v (up to the factor R) from the (B, R+1, R+1, 3) nodes."""
    a, b = img[:, :-1, :-1], img[:, :-1, 1:]  # top row of the texel (v high): left, right
    c, d = img[:, 1:, :-1], img[:, 1:, 1:]  # bottom row (v low)
    return 0.5 * ((b - a) + (d - c)), 0.5 * ((a - c) + (b - d))


def detail_normal_map(
    verts: torch.Tensor,
    displacement: torch.Tensor,
    sampling: UVGrid,
    space: Literal["tangent", "world"] = "tangent",
) -> torch.Tensor:
    """Per-texel normals of the displaced surface, (B, 3, R, R) at the sampling's resolution.

    Each texel is the quad between four displaced grid points (its corners, see :func:`detailed_vertices`);
    its normal is ``normalize(∂P/∂u × ∂P/∂v)`` with the derivatives from the quad's edge midpoints, i.e. the
    displaced position image differentiated in UV space.

    ``space="tangent"`` (default; what :class:`models.render.MeshRenderer` takes as ``normal_map_uv``):
    the normal in the frame of the *undisplaced* quad, x along +u, y along +v (OpenGL / glTF "green up"),
    z out of the surface; zero displacement gives exactly (0, 0, 1), so the map carries only the detail and the
    renderer's smooth per-pixel frame stays in charge of the coarse shape. Invalid texels: (0, 0, 1).

    ``space="world"``: the unit world-space normal of the displaced quad (depends on the pose); invalid
    texels: (0, 0, 0).

    Args:
        verts: (B, V, 3) posed coarse vertices.
        displacement: (B | 1, 1, H, W) metres.
        sampling: a :class:`UVGrid`.
        space: ``"tangent"`` or ``"world"``.

    Returns:
        (B, 3, R, R); row 0 is v = 1 (valid where ``sampling.texel_mask``).
    """
    if space not in ("tangent", "world"):
        raise ValueError(f"space: expected 'tangent' or 'world', got {space!r}")
    vn = vertex_normals(verts, sampling.faces)
    pu, pv = _quad_derivatives(_grid_image(detailed_vertices(verts, displacement, sampling, vn), sampling))
    n = F.normalize(torch.linalg.cross(pu, pv, dim=-1), dim=-1, eps=1e-12)
    mask = sampling.texel_mask[0, 0, :, :, None].to(n.dtype)  # (R, R, 1)
    if space == "world":
        return (n * mask).permute(0, 3, 1, 2)
    pu0, pv0 = _quad_derivatives(_grid_image(detailed_vertices(verts, None, sampling), sampling))
    n0 = F.normalize(torch.linalg.cross(pu0, pv0, dim=-1), dim=-1, eps=1e-12)
    t0 = F.normalize(pu0 - n0 * (n0 * pu0).sum(-1, keepdim=True), dim=-1, eps=1e-12)
    b0 = torch.linalg.cross(n0, t0, dim=-1)
    local = torch.stack([(n * t0).sum(-1), (n * b0).sum(-1), (n * n0).sum(-1)], dim=-1)
    flat = torch.zeros_like(local)
    flat[..., 2] = 1.0
    return (mask * local + (1.0 - mask) * flat).permute(0, 3, 1, 2)
