"""Cylindrical UV layout for head meshes (numpy, build-time only).

u is the angle around the head's vertical (+y) axis, with the face (+z) at u = 0.5 and the seam at the back
(u = 0 ≡ 1, the -z half-plane); v is the height, normalised over the mesh. Triangles that straddle the seam
get their own copies of the vertices on the seam's far side (u ± 1), so no UV triangle wraps around the
layout and exported meshes texture cleanly with a repeating sampler in u.
"""

from __future__ import annotations

import numpy as np


def cylinder_coordinates(points: np.ndarray, y_range: tuple[float, float], margin: float = 0.01) -> np.ndarray:
    """(N, 3) points → (N, 2) cylindrical (u, v): u from the angle about +y (face at 0.5), v from height."""
    points = np.asarray(points, dtype=np.float64)
    u = np.arctan2(points[:, 0], points[:, 2]) / (2.0 * np.pi) + 0.5  # 0 at the face, ±π at the back
    lo, hi = y_range
    v = margin + (1.0 - 2.0 * margin) * (points[:, 1] - lo) / max(hi - lo, 1e-12)
    return np.stack([u, v], 1)


def cylindrical_uv(
    verts: np.ndarray, faces: np.ndarray, margin: float = 0.01
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build the cylindrical UV layout of a mesh.

    Args:
        verts: (V, 3) vertices in the face-model frame (+y up, face towards +z, centred on the vertical axis).
        faces: (F, 3) triangles.
        margin: empty border kept at the top and bottom of the v range.

    Returns:
        uv: (T, 2) texture coordinates, uv_faces: (F, 3) triangles into ``uv``, uv_vertex: (T,) the geometry
        vertex of each UV vertex (T > V when the seam duplicates vertices). Seam copies may reach slightly
        outside u ∈ [0, 1] (u is periodic).
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    u, v = cylinder_coordinates(verts, (verts[:, 1].min(), verts[:, 1].max()), margin).T

    # A triangle straddles the seam when its corners are on both sides of the back half-plane.
    fu = u[faces]
    straddle = (fu.max(1) - fu.min(1)) > 0.5
    # In a straddling triangle, each corner is placed on the side the triangle's majority lies on.
    side_high = (fu > 0.5).sum(1) >= 2  # triangle belongs to the u≈1 side
    uv_faces = faces.copy()
    extra_uv: list[np.ndarray] = []
    extra_vertex: list[np.ndarray] = []
    key_to_index: dict[tuple[int, int], int] = {}
    next_index = len(verts)
    for f in np.flatnonzero(straddle):
        for k in range(3):
            vid = int(faces[f, k])
            on_high = fu[f, k] > 0.5
            if on_high == bool(side_high[f]) or 0.25 <= fu[f, k] <= 0.75:
                continue  # already on the triangle's side, or far from the seam (around the crown's pole)
            target = 1 if side_high[f] else 0  # wrap the corner to the triangle's side
            key = (vid, target)
            idx = key_to_index.get(key)
            if idx is None:
                idx = next_index
                next_index += 1
                key_to_index[key] = idx
                shifted = u[vid] + (1.0 if target == 1 else -1.0)
                extra_uv.append(np.array([shifted, v[vid]]))
                extra_vertex.append(np.array(vid))
            uv_faces[f, k] = idx
    uv = np.stack([u, v], 1)
    uv_vertex = np.arange(len(verts))
    if extra_uv:
        uv = np.concatenate([uv, np.stack(extra_uv)])
        uv_vertex = np.concatenate([uv_vertex, np.stack(extra_vertex)])
    # Corners pulled across the seam land slightly outside [0, 1]: they stay there, undistorted (u wraps
    # around the cylinder; samplers repeat in u and the UV-grid resampling covers both copies).
    return uv.astype(np.float32), uv_faces, uv_vertex.astype(np.int64)


def interior_vertices(
    verts: np.ndarray,
    faces: np.ndarray,
    ratio: float = 0.85,
    bin_deg: float = 8.0,
    bin_m: float = 0.008,
) -> np.ndarray:
    """(V,) bool: the mouth cavity, i.e. the connected region deepest inside the head.

    A vertex is *deep* when its distance from the vertical axis is below ``ratio`` times the largest distance
    of any vertex in the same (angle, height) bin (something lies well outside it on the same ray). Deep
    vertices also occur outside the mouth (behind the ears, under the jaw), so the cavity is made of the
    edge-connected sets of deep vertices that reach far inside (below 0.3 of the outer distance): the
    mouth and throat, not the shallow folds.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    angle = np.arctan2(verts[:, 0], verts[:, 2])
    radius = np.hypot(verts[:, 0], verts[:, 2])
    n_bins = int(np.ceil(360.0 / bin_deg))
    a_bin = np.floor((angle + np.pi) / np.deg2rad(bin_deg)).astype(np.int64) % n_bins  # ±π share a bin
    h_bin = np.floor((verts[:, 1] - verts[:, 1].min()) / bin_m).astype(np.int64)
    key = a_bin * (h_bin.max() + 1) + h_bin
    outer = np.zeros(key.max() + 1)
    np.maximum.at(outer, key, radius)
    rel = radius / np.maximum(outer[key], 1e-12)
    deep = rel < ratio
    if not deep.any():
        return deep
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = edges[deep[edges].all(1)]
    n = len(verts)
    adj = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), (n, n))
    labels = connected_components(adj, directed=False)[1]
    # components reaching far inside (well within half the outer radius) are cavities; shallow ones are folds
    # (below mid-height: around the crown's pole every vertex is near the axis and the ratio means nothing)
    cavities = np.unique(labels[deep & (rel < 0.3) & (verts[:, 1] < np.median(verts[:, 1]))])
    return deep & np.isin(labels, cavities)
