"""Texture extraction from a photo into the face model's UV layout (numpy; the service's fast path).

The seed's recipe (AlbedoGAN §1.1) without the fitting loop: given a mesh already aligned with the image
(posed vertices + their pixel positions), every texel centre of the UV map is placed on the surface,
projected into the image and coloured there if it is visible (z-buffer test); texels on the hidden side
take the colour of their mirror texel (u → 1 − u) when that one is visible; the rest get the mean visible
colour. Dividing by the order-2 SH shading at each texel's normal de-lights the colours into albedo.
``training/texture.py`` fits the mesh; both share this unwrapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facecore import geometry as geo

# Order-2 SH basis constants in DECA's convention, the single definition for the torch renderer
# (models/render/shading.py imports them) and this module: Y_lm with the Lambertian factors 2π/3 (l = 1)
# and π/4 (l = 2) folded in; the constant term keeps Y_00 without π.
SH_CONSTANTS: tuple[float, ...] = (
    1.0 / math.sqrt(4.0 * math.pi),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (2.0 * math.pi / 3.0) * math.sqrt(3.0 / (4.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 3.0 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 1.5 * math.sqrt(5.0 / (12.0 * math.pi)),
    (math.pi / 4.0) * 0.5 * math.sqrt(5.0 / (4.0 * math.pi)),
)


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """(..., 3) unit normals → (..., 9) basis in the order 1, x, y, z, xy, xz, yz, x² − y², 3z² − 1."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    c = SH_CONSTANTS
    return np.stack(
        [np.full_like(x, c[0]), c[1] * x, c[2] * y, c[3] * z, c[4] * x * y, c[5] * x * z, c[6] * y * z,
         c[7] * (x * x - y * y), c[8] * (3.0 * z * z - 1.0)],
        axis=-1,
    )  # fmt: skip


@dataclass(frozen=True)
class Unwrapped:
    """A texture extracted from a photo.

    Attributes:
        albedo: (R, R, 3) de-lit colours in [0, 1] (row 0 is v = 1).
        colour: (R, R, 3) colours as seen (before de-lighting).
        source: (R, R) uint8: 0 outside the skin, 1 seen in the photo, 2 mirrored, 3 filled with the mean.
        shading: (R, R, 3) the SH shading each texel's colour was divided by (a mirrored texel: its mirror's;
            a mean-filled texel: the shading at its own normal), or None when no light was given.
    """

    albedo: np.ndarray
    colour: np.ndarray
    source: np.ndarray
    shading: np.ndarray | None = None


def unwrap(
    model: geo.FaceModelArrays,
    verts: np.ndarray,
    verts_px: np.ndarray,
    image: np.ndarray,
    resolution: int = 256,
    sh: np.ndarray | None = None,
    depth_tolerance: float = 0.003,
    min_facing: float = 0.05,
) -> Unwrapped:
    """Unwrap ``image`` onto the UV layout.

    Args:
        model: the face model.
        verts: (V, 3) posed vertices in the camera-aligned world frame (+z towards the camera).
        verts_px: (V, 2) their pixel positions (x right, y down; pixel centres at integers).
        image: (H, W, 3) float in [0, 1] or uint8.
        resolution: R of the output maps.
        sh: (9, 3) SH light for de-lighting, or None to keep the seen colours as albedo.
        depth_tolerance: a texel is visible when it is within this many metres of the z-buffer surface.
        min_facing: and when its normal's z (the cosine of its angle to the viewing direction) exceeds this:
            texels seen at grazing angles are blurred and easily mis-registered at the silhouette; raising it
            hands more of the turned-away side to the mirror fill.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3), got {img.shape}")
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    verts = np.asarray(verts, np.float64)
    verts_px = np.asarray(verts_px, np.float64)
    if verts.shape != (model.n_verts, 3) or verts_px.shape != (model.n_verts, 2):
        raise ValueError(f"verts/verts_px: expected ({model.n_verts}, 3) and ({model.n_verts}, 2)")
    if not (np.all(np.isfinite(verts)) and np.all(np.isfinite(verts_px))):
        raise ValueError("verts/verts_px: contain NaN or inf")
    H, W = img.shape[:2]
    R = int(resolution)
    texel, face, bary = geo.texel_sampling(model, R)
    tri = model.faces[face]
    pos = np.einsum("nk,nkc->nc", bary, verts[tri])
    px = np.einsum("nk,nkc->nc", bary, verts_px[tri])
    normals = geo.vertex_normals(verts, model.faces)
    nrm = np.einsum("nk,nkc->nc", bary, normals[tri])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)

    # z-buffer of the whole mesh (eyeballs included: they hide what is behind them) at pixel centres
    node, ztri, zbary = geo.rasterize_nodes(verts_px[model.faces], verts[model.faces, 2], W, H)
    zbuf = np.full(H * W, -np.inf)
    zbuf[node] = np.einsum("nk,nk->n", zbary, verts[model.faces[ztri], 2])
    col = np.rint(px[:, 0]).astype(np.int64)
    row = np.rint(px[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    surface = np.full(len(texel), -np.inf)
    surface[inside] = zbuf[row[inside] * W + col[inside]]
    visible = inside & (pos[:, 2] >= surface - depth_tolerance) & (nrm[:, 2] > min_facing)

    colour_tex = np.zeros((R * R, 3))
    seen = np.zeros(R * R, bool)
    colour_tex[texel[visible]] = geo.sample_map(img, _uv_of_pixels(px[visible], W, H))
    seen[texel[visible]] = True

    source = np.zeros(R * R, np.uint8)
    source[texel] = 3
    source[texel[visible]] = 1
    # hidden side: mirror texel (u → 1 − u, same row)
    rows, cols = np.divmod(texel, R)
    mirror = rows * R + (R - 1 - cols)
    take = ~seen[texel] & seen[mirror]
    colour_tex[texel[take]] = colour_tex[mirror[take]]
    source[texel[take]] = 2
    rest = texel[source[texel] == 3]
    if seen.any():
        colour_tex[rest] = colour_tex[seen].mean(0)

    albedo_tex = colour_tex.copy()
    shading = None
    if sh is not None:
        sh = np.asarray(sh, np.float64)
        if sh.shape != (9, 3) or not np.all(np.isfinite(sh)):
            raise ValueError(f"sh: expected finite (9, 3), got {sh.shape}")
        shading = np.zeros((R * R, 3))
        shading[texel] = sh_basis(nrm) @ sh
        # mirrored texels are de-lit with their mirror's shading (where their colour came from)
        shading[texel[take]] = shading[mirror[take]]
        albedo_tex[texel] = colour_tex[texel] / np.maximum(shading[texel], 0.05)
        # the mean fill stands for unseen skin: it takes the mean de-lit albedo, not the mean colour divided
        # by the light at its own (often averted) normal
        if seen.any():
            albedo_tex[rest] = np.clip(albedo_tex[seen], 0, 1).mean(0)
        shading = shading.reshape(R, R, 3)
    return Unwrapped(
        np.clip(albedo_tex, 0, 1).reshape(R, R, 3),
        np.clip(colour_tex, 0, 1).reshape(R, R, 3),
        source.reshape(R, R),
        shading,
    )


def _uv_of_pixels(px: np.ndarray, W: int, H: int) -> np.ndarray:
    """Pixel positions (x right, y down, centres at integers) → the (u, v up) convention of ``sample_map``."""
    return np.stack([(px[:, 0] + 0.5) / W, 1.0 - (px[:, 1] + 0.5) / H], 1)
