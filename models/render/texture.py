"""UV textures: sampling with ``grid_sample`` and UV ↔ mesh transfers.

UV convention (the face model's, OBJ / OpenGL): u ∈ [0, 1] left → right, v ∈ [0, 1] **bottom → top**, while a
texture tensor's row 0 is its top row (v = 1). Texel (row r, column c) of an Ht × Wt texture is centred at
``u = (c + 0.5) / Wt``, ``v = 1 − (r + 0.5) / Ht`` (``align_corners=False``). The same mapping, read as NDC
``(2u − 1, 2v − 1)``, is the rasteriser's pixel-centre convention, so meshes rasterise straight into UV space.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .rasterizer import Fragments, rasterize


def uv_to_grid(uv: torch.Tensor) -> torch.Tensor:
    """(..., 2) uv with v up → (..., 2) ``grid_sample`` coordinates (x right, y down, [-1, 1])."""
    u, v = uv.unbind(-1)
    return torch.stack([2.0 * u - 1.0, 1.0 - 2.0 * v], dim=-1)


def sample_texture(
    texture: torch.Tensor,
    uv: torch.Tensor,
    mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear",
    padding_mode: Literal["border", "zeros", "reflection"] = "border",
) -> torch.Tensor:
    """Sample a texture at uv coordinates.

    Args:
        texture: (B, C, Ht, Wt); row 0 is v = 1.
        uv: (B, H, W, 2) coordinates, v up (batch 1 of either broadcasts).
        mode: interpolation (bilinear: differentiable in the texels and in uv).
        padding_mode: outside [0, 1] (default: clamp to the border texels).

    Returns:
        (B, C, H, W).
    """
    if texture.dim() != 4:
        raise ValueError(f"texture: expected shape (B, C, Ht, Wt), got {tuple(texture.shape)}")
    if uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv: expected shape (B, H, W, 2), got {tuple(uv.shape)}")
    B = max(texture.shape[0], uv.shape[0])
    if {texture.shape[0], uv.shape[0]} - {1, B}:
        raise ValueError(f"texture batch {texture.shape[0]} and uv batch {uv.shape[0]} do not match")
    grid = uv_to_grid(uv.to(texture.dtype)).expand(B, -1, -1, -1)
    return F.grid_sample(texture.expand(B, -1, -1, -1), grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def sample_texture_packed(texture: torch.Tensor, uv: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Bilinear samples at a flat list of points (e.g. only the covered pixels of a render).

    Args:
        texture: (B, C, Ht, Wt) (batch 1 broadcasts).
        uv: (N, 2) coordinates, v up.
        batch: (N,) long batch index of each point, ascending.

    Returns:
        (N, C).
    """
    if texture.dim() != 4:
        raise ValueError(f"texture: expected shape (B, C, Ht, Wt), got {tuple(texture.shape)}")
    if uv.dim() != 2 or uv.shape[1] != 2 or batch.shape != uv.shape[:1]:
        raise ValueError(f"uv, batch: expected (N, 2) and (N,), got {tuple(uv.shape)} and {tuple(batch.shape)}")
    n = uv.shape[0]
    B = texture.shape[0] if n == 0 else max(texture.shape[0], int(batch[-1]) + 1)
    counts = torch.bincount(batch, minlength=B)
    slot = torch.arange(n, device=uv.device) - (torch.cumsum(counts, 0) - counts).index_select(0, batch)
    grid = uv.new_zeros(B, max(int(counts.max()), 1), 2).index_put((batch, slot), uv_to_grid(uv.to(texture.dtype)))
    out = F.grid_sample(
        texture.expand(B, -1, -1, -1), grid[:, None], mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, C, 1, L)
    return out[:, :, 0].transpose(1, 2)[batch, slot]


def sample_vertex_attrs(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Texture values at the UV vertices (mesh ← UV). texture: (B, C, Ht, Wt), uv: (T, 2) → (B, T, C)."""
    if uv.dim() != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv: expected shape (T, 2), got {tuple(uv.shape)}")
    out = sample_texture(texture, uv[None, None].expand(texture.shape[0], -1, -1, -1))  # (B, C, 1, T)
    return out[:, :, 0].transpose(1, 2)


def uv_to_ndc(uv: torch.Tensor) -> torch.Tensor:
    """(T, 2) uv → (1, T, 3) vertices (2u − 1, 2v − 1, 0) that rasterise the mesh into its texture space."""
    return torch.cat([2.0 * uv - 1.0, torch.zeros_like(uv[:, :1])], dim=1)[None]


def uv_fragments(uv: torch.Tensor, uv_faces: torch.Tensor, resolution: int | tuple[int, int]) -> Fragments:
    """Rasterise the UV layout: which triangle (and where in it) every texel centre lies.

    Texels covered by no triangle have ``face_id`` -1; where UV islands overlap, the larger face index wins.
    Use with :func:`mesh_to_uv` to bake per-vertex attributes into a texture.
    """
    return rasterize(uv_to_ndc(uv.float()), uv_faces, resolution)


def mesh_to_uv(fragments_uv: Fragments, attrs: torch.Tensor, uv_vertex: torch.Tensor) -> torch.Tensor:
    """Bake per-vertex attributes into UV space (mesh → UV), zero outside the layout.

    Args:
        fragments_uv: from :func:`uv_fragments` (computed once per layout and resolution).
        attrs: (B, V, C) per geometry vertex.
        uv_vertex: (T,) geometry vertex of each UV vertex.

    Returns:
        (B, C, R, R) texture; multiply by ``fragments_uv.mask`` to know where it is defined.
    """
    if fragments_uv.batch_size != 1:
        raise ValueError("fragments_uv: expected the batch-1 fragments of uv_fragments()")
    if attrs.dim() != 3:
        raise ValueError(f"attrs: expected shape (B, V, C), got {tuple(attrs.shape)}")
    B, _, C = attrs.shape
    H, W = fragments_uv.image_size
    corners = uv_vertex[fragments_uv.faces[fragments_uv.face_packed]]  # (N, 3) geometry vertices
    vals = attrs[:, corners]  # (B, N, 3, C)
    packed = torch.einsum("nk,bnkc->bnc", fragments_uv.bary_packed.to(attrs.dtype), vals)
    out = attrs.new_zeros(B, H * W, C)
    out[:, fragments_uv.pixels] = packed
    return out.view(B, H, W, C).permute(0, 3, 1, 2)
