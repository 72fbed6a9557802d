"""Orthographic numpy preview renders of face-model meshes (build scripts, pictures for notes and tests).

Not the training renderer (that is ``models.render``, differentiable torch); this is a small, exact z-buffer
over pixel centres built on :func:`facecore.geometry.rasterize_nodes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facecore.geometry import axis_angle_to_matrix, rasterize_nodes, vertex_normals


@dataclass(frozen=True)
class OrthoView:
    """A frontal orthographic image: pixel (row, col) ↔ world (x, y) with +z towards the viewer.

    Attributes:
        face: (H, W) visible triangle per pixel, -1 for background.
        bary: (H, W, 3) barycentric coordinates of the pixel centre in that triangle.
        depth: (H, W) world z of the visible surface (-inf for background).
        x0, y1: world x of column 0 and world y of row 0 (pixel centres).
        pixel: world size of one pixel.
    """

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray
    x0: float
    y1: float
    pixel: float

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world x, y → (..., 2) fractional (col, row)."""
        return np.stack([(xy[..., 0] - self.x0) / self.pixel, (self.y1 - xy[..., 1]) / self.pixel], -1)

    def to_world(self, colrow: np.ndarray) -> np.ndarray:
        """(..., 2) (col, row) → (..., 2) world x, y."""
        return np.stack([self.x0 + colrow[..., 0] * self.pixel, self.y1 - colrow[..., 1] * self.pixel], -1)


def render_ortho(verts: np.ndarray, faces: np.ndarray, size: int, center: np.ndarray, extent: float) -> OrthoView:
    """Z-buffer a mesh seen from +z.

    Args:
        verts: (V, 3) vertices.
        faces: (F, 3) triangles.
        size: image is size × size pixels.
        center: (2,) world x, y at the image centre.
        extent: world width covered by the image.
    """
    pixel = extent / size
    x0 = float(center[0]) - extent / 2 + pixel / 2
    y1 = float(center[1]) + extent / 2 - pixel / 2
    xy = np.stack([(verts[:, 0] - x0) / pixel, (y1 - verts[:, 1]) / pixel], 1)
    node, tri, bary = rasterize_nodes(xy[faces], verts[faces, 2], size, size)
    face = np.full(size * size, -1, np.int64)
    face[node] = tri
    bary_img = np.zeros((size * size, 3))
    bary_img[node] = bary
    depth = np.full(size * size, -np.inf)
    depth[node] = np.einsum("nk,nk->n", bary, verts[faces[tri], 2])
    return OrthoView(
        face.reshape(size, size), bary_img.reshape(size, size, 3), depth.reshape(size, size), x0, y1, pixel
    )


def shaded_image(
    verts: np.ndarray,
    faces: np.ndarray,
    size: int = 256,
    yaw_deg: float = 0.0,
    colors: np.ndarray | None = None,
    extent: float | None = None,
) -> np.ndarray:
    """A Lambert-shaded (H, W, 3) uint8 picture of a mesh turned by ``yaw_deg`` about +y.

    ``colors`` (V, 3) in [0, 1] tints vertices (default: neutral grey).
    """
    rot = axis_angle_to_matrix(np.array([0.0, np.deg2rad(yaw_deg), 0.0]))
    v = verts @ rot.T
    lo, hi = v.min(0), v.max(0)
    center = (lo[:2] + hi[:2]) / 2
    ext = extent if extent is not None else float(max(hi[:2] - lo[:2])) * 1.08
    view = render_ortho(v, faces, size, center, ext)
    normals = vertex_normals(v, faces)
    mask = view.face >= 0
    tri = faces[view.face[mask]]
    n = np.einsum("nk,nkc->nc", view.bary[mask], normals[tri])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, 0.4, 1.0])
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
    base = np.full((len(tri), 3), 0.8) if colors is None else np.einsum("nk,nkc->nc", view.bary[mask], colors[tri])
    img = np.full((size, size, 3), 1.0)
    img[mask] = base * shade[:, None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_grid(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile equally sized (H, W, 3) images row by row."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    return out
