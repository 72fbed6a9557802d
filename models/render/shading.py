"""Lambertian shading with order-2 real spherical harmonics, vertex normals/tangents, normal-map detail.

SH lighting (9 × RGB coefficients, DECA's convention so that DECA-style light codes carry over):
the irradiance at a surface with unit normal n = (x, y, z) is ``E(n) = Σ_k sh[k] · Y_k(n)`` with

======  ==============  =============================================  =============
k       term            constant                                        value
======  ==============  =============================================  =============
0       1               1 / √(4π)                                       0.2820948
1, 2, 3 x, y, z         (2π/3) · √(3 / (4π))                            1.0233267
4, 5, 6 xy, xz, yz      (π/4) · 3 · √(5 / (12π))                        0.8580855
7       x² − y²         (π/4) · (3/2) · √(5 / (12π))                    0.4290428
8       3z² − 1         (π/4) · (1/2) · √(5 / (4π))                     0.2477080
======  ==============  =============================================  =============

i.e. the real SH basis Y_lm with the Lambertian (clamped-cosine) convolution factors of Ramamoorthi &
Hanrahan (2001), Â_1 = 2π/3 and Â_2 = π/4, folded in for l = 1, 2; the constant term keeps Y_00 without its
factor Â_0 = π (DECA's choice: a pure ambient light ``sh[0] = c`` shades ``0.282 · c``). Normals are in
the world frame of the face model (+y up, +z towards a frontal viewer). Shading is not clamped, so every
coefficient keeps a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facecore.texture import SH_CONSTANTS  # one definition for torch and the torch-free service


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Order-2 SH basis (with the constants above) at unit normals.

    Args:
        normals: (..., 3) unit vectors.

    Returns:
        (..., 9) in the order 1, x, y, z, xy, xz, yz, x² − y², 3z² − 1.
    """
    if normals.shape[-1] != 3:
        raise ValueError(f"normals: expected shape (..., 3), got {tuple(normals.shape)}")
    x, y, z = normals.unbind(-1)
    c = SH_CONSTANTS
    return torch.stack(
        [
            torch.full_like(x, c[0]),
            c[1] * x,
            c[2] * y,
            c[3] * z,
            c[4] * x * y,
            c[5] * x * z,
            c[6] * y * z,
            c[7] * (x * x - y * y),
            c[8] * (3.0 * z * z - 1.0),
        ],
        dim=-1,
    )


def sh_shading(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Lambertian RGB irradiance under SH light.

    Args:
        normals: (B, ..., 3) unit normals (any number of middle dimensions, e.g. (B, H, W, 3) or (B, V, 3)).
        sh: (B, 9, 3) coefficients per basis term and colour channel (batch 1 broadcasts).

    Returns:
        (B, ..., 3) shading; multiply by albedo for the radiance.
    """
    if sh.dim() != 3 or sh.shape[1:] != (9, 3):
        raise ValueError(f"sh: expected shape (B, 9, 3), got {tuple(sh.shape)}")
    B = normals.shape[0]
    if sh.shape[0] not in (1, B):
        raise ValueError(f"sh: batch {sh.shape[0]} does not match the normals' batch {B}")
    basis = sh_basis(normals).reshape(B, -1, 9)
    return torch.matmul(basis, sh.to(basis.dtype).expand(B, -1, -1)).reshape(*normals.shape[:-1], 3)


def sh_shading_packed(normals: torch.Tensor, batch: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """:func:`sh_shading` for a flat list of normals (N, 3) whose batch index is ``batch`` (N,), ascending."""
    basis = sh_basis(normals)
    counts = torch.bincount(batch, minlength=sh.shape[0]).tolist()
    parts = basis.split(counts)
    sh = sh.to(basis.dtype).expand(len(counts), -1, -1)
    return torch.cat([p @ sh[b] for b, p in enumerate(parts)], 0)


def specular_packed(normals: torch.Tensor, batch: torch.Tensor, specular: torch.Tensor) -> torch.Tensor:
    """Blinn–Phong highlights of one directional light for a viewer along +z (the weak-perspective cameras'
    direction), added to the Lambertian radiance (they are not multiplied by the albedo: a dielectric's highlight
    has the light's colour).

    Args:
        normals: (N, 3) unit world-space normals whose batch index is ``batch`` (N,).
        specular: (B, 7) per sample: the unit direction towards the light (3), the highlight's RGB radiance at its
            peak (3), the Blinn–Phong exponent (1). Zero radiance: no highlight.

    Returns:
        (N, 3) radiance ``colour · max(0, n·h)^exponent`` where the light reaches the surface (n·l > 0),
        ``h`` the half vector between the light and the viewer.
    """
    spec = specular.to(normals.dtype)[batch]
    light = F.normalize(spec[:, :3], dim=-1)
    half = F.normalize(light + light.new_tensor([0.0, 0.0, 1.0]), dim=-1)
    n_h = (normals * half).sum(-1).clamp_min(0.0)
    lit = ((normals * light).sum(-1) > 0).to(normals.dtype)
    return spec[:, 3:6] * (n_h ** spec[:, 6] * lit)[:, None]


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unnormalised triangle normals (twice the area). verts: (B, V, 3), faces: (F, 3) → (B, F, 3)."""
    v0, v1, v2 = verts.index_select(1, faces.reshape(-1)).view(verts.shape[0], -1, 3, 3).unbind(2)
    return torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)


def _to_vertices(per_face: torch.Tensor, faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    """Sum (B, F, C) face values into the (B, V, C) vertices of each triangle."""
    B, _, C = per_face.shape
    out = per_face.new_zeros(B, n_verts, C)
    for k in range(3):
        out = out.index_add(1, faces[:, k], per_face)
    return out


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (faces counter-clockwise from outside). (B, V, 3) → (B, V, 3)."""
    return F.normalize(_to_vertices(face_normals(verts, faces), faces, verts.shape[1]), dim=-1, eps=1e-12)


def vertex_tangents(
    verts: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor, uv_faces: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """UV-area-weighted surface derivatives dP/du and dP/dv accumulated at the vertices.

    The frame of tangent-space normal maps (OpenGL / glTF "green up", as written by
    ``facecore.formats.normal_map_from_displacement``): +X along +u, +Y along +v (v up), +Z the normal.
    Orthonormalise per pixel with :func:`normal_map_to_world`.

    Args:
        verts: (B, V, 3).
        faces: (F, 3) long.
        uv: (T, 2) texture coordinates, v up.
        uv_faces: (F, 3) long into ``uv``.

    Returns:
        tangent (B, V, 3) along +u and bitangent (B, V, 3) along +v, both unnormalised.
    """
    tri = verts[:, faces]
    e1, e2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
    t_uv = uv.to(verts.dtype)[uv_faces]
    d1, d2 = t_uv[:, 1] - t_uv[:, 0], t_uv[:, 2] - t_uv[:, 0]  # (F, 2)
    sign = torch.sign(d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1])[:, None]  # |det|·dP/du = sign·(...)
    t_face = sign * (e1 * d2[:, 1:2] - e2 * d1[:, 1:2])
    b_face = sign * (e2 * d1[:, 0:1] - e1 * d2[:, 0:1])
    V = verts.shape[1]
    both = _to_vertices(torch.cat([t_face, b_face], -1), faces, V)
    return both[..., :3], both[..., 3:]


def normal_map_to_world(
    normal_tangent: torch.Tensor, normal: torch.Tensor, tangent: torch.Tensor, bitangent: torch.Tensor
) -> torch.Tensor:
    """Perturb surface normals by a tangent-space normal map.

    Args:
        normal_tangent: (..., 3) decoded map values in [-1, 1] (x along +u, y along +v, z out of the surface;
            a PNG-encoded map c ∈ [0, 1] decodes as 2c − 1); (0, 0, 1) leaves the normal unchanged.
        normal: (..., 3) interpolated surface normals (need not be unit).
        tangent: (..., 3) interpolated dP/du (see :func:`vertex_tangents`).
        bitangent: (..., 3) interpolated dP/dv; only its side of the normal–tangent plane is used.

    Returns:
        (..., 3) unit world normals.
    """
    n = F.normalize(normal, dim=-1, eps=1e-12)
    t = F.normalize(tangent - n * (n * tangent).sum(-1, keepdim=True), dim=-1, eps=1e-12)
    b = torch.linalg.cross(n, t, dim=-1)
    b = torch.where((b * bitangent).sum(-1, keepdim=True) < 0, -b, b)
    x, y, z = normal_tangent.unbind(-1)
    return F.normalize(x[..., None] * t + y[..., None] * b + z[..., None] * n, dim=-1, eps=1e-12)
