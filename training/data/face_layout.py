"""Where a face's features lie in a face model's UV map (:class:`FaceLayout`), computed once per face model.

The procedural albedo (:mod:`training.data.procedural_albedo`) places every feature from these facts: the 68
landmarks' UV positions, the eyeball and mouth parts, the lid openings seen from the front, the ears, and the
metric scale of the UV map, never fixed texel positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.face.model import FaceModel


def _lid_openings(
    verts: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    uv_faces: np.ndarray,
    part: np.ndarray,
    eye_parts: Sequence[int],
    m_u: float,
    m_v: float,
    pixel_m: float = 0.0002,
    n_bins: int = 72,
) -> np.ndarray:
    """(len(eye_parts), n_bins, 2) UV outlines of where each eyeball is seen from the front (see FaceLayout)."""
    from models.face.preview import render_ortho

    eyes = np.isin(part, eye_parts)
    vid = np.unique(faces[eyes])
    lo, hi = verts[vid, :2].min(0) - 0.005, verts[vid, :2].max(0) + 0.005
    centroid = verts[faces, :2].mean(1)
    near = np.all((centroid > lo) & (centroid < hi), axis=1)  # everything that can cover the eyes
    extent = float(max(hi - lo))
    view = render_ortho(verts, faces[near], int(extent / pixel_m), (lo + hi) / 2, extent)
    hit = view.face >= 0
    face = np.flatnonzero(near)[view.face[hit]]
    pts_uv = np.einsum("nk,nkc->nc", view.bary[hit], uv[uv_faces[face]])
    scale = np.array([m_u, m_v])
    outlines = []
    for p in eye_parts:
        pts = pts_uv[part[face] == p] * scale
        if len(pts) < 20:
            raise ValueError(f"face model: part {p} is hardly visible from the front ({len(pts)} pixels)")
        c = pts.mean(0)
        d = pts - c
        ang = np.arctan2(d[:, 1], d[:, 0])
        rad = np.linalg.norm(d, axis=1)
        bins = np.floor((ang + np.pi) / (2 * np.pi) * n_bins).astype(np.int64) % n_bins
        r = np.zeros(n_bins)
        np.maximum.at(r, bins, rad)
        have = r > 0
        centres = (np.arange(n_bins) + 0.5) / n_bins * 2 * np.pi - np.pi
        r = np.interp(centres, centres[have], r[have], period=2 * np.pi)
        r = (np.roll(r, 1) + 2 * r + np.roll(r, -1)) / 4  # light smoothing
        outline = c + (r + 0.5 * pixel_m)[:, None] * np.stack([np.cos(centres), np.sin(centres)], 1)
        outlines.append(outline / scale)
    return np.stack(outlines)


@dataclass(frozen=True)
class FaceLayout:
    """Resolution-independent facts about a face model's UV layout (computed once per face model).

    Distances are "face metres": u and v scaled by the metric size of one UV unit across the face
    (``metres_per_u``, ``metres_per_v``), so feature sizes can be given in millimetres.

    Attributes:
        metres_per_u, metres_per_v: surface metres per UV unit on the face (medians over face triangles).
        v_per_metre_y: dv/dy of the cylindrical map (v is linear in the mean head's height).
        landmarks_uv: (68, 2) landmark UV positions.
        mouth_uv: (2,) the single UV point of the mouth cavity part.
        iris_centre_uv: (2, 2) UV of each eyeball's front pole (row 0: subject's right eye, landmarks 36–41).
        eye_to_uv: (2, 2, 2) per eye, the affine map from frontal (x, y) metres around the pole to UV.
        eye_outline_uv: (2, N, 2) per eye, the lid opening in UV: the outline of the texels that the
            eyeballs show through the lids of the mean head seen from the front (a star-shaped polygon).
        ear_uv: (2, 2, 2) per ear (right, left) the UV box [[u_min, v_min], [u_max, v_max]].
    """

    metres_per_u: float
    metres_per_v: float
    v_per_metre_y: float
    landmarks_uv: np.ndarray
    mouth_uv: np.ndarray
    iris_centre_uv: np.ndarray
    eye_to_uv: np.ndarray
    eye_outline_uv: np.ndarray
    ear_uv: np.ndarray

    @classmethod
    def from_face_model(cls, fm: FaceModel) -> FaceLayout:
        a = fm.arrays
        verts = np.asarray(a.mean, np.float64)
        uv = np.asarray(a.uv, np.float64)
        faces, uv_faces, part = np.asarray(a.faces), np.asarray(a.uv_faces), np.asarray(a.face_part)
        uv_vertex = np.asarray(a.uv_vertex)
        part_index = {name: i for i, name in enumerate(a.part_names)}
        for need in ("eyeball_left", "eyeball_right"):
            if need not in part_index:
                raise ValueError(f"face model: part {need!r} is missing (parts: {a.part_names}); the albedo needs it")
        lm_uv = np.einsum("lkc,lk->lc", uv[uv_faces[a.landmark_faces]], np.asarray(a.landmark_bary, np.float64))

        skin = np.flatnonzero(part == 0)
        t_skin = np.unique(uv_faces[skin])
        slope = np.polyfit(verts[uv_vertex[t_skin], 1], uv[t_skin, 1], 1)[0]
        # metric size of a UV unit over the face (triangles around the landmarks)
        P, U = verts[faces[skin]], uv[uv_faces[skin]]
        e1, e2, d1, d2 = P[:, 1] - P[:, 0], P[:, 2] - P[:, 0], U[:, 1] - U[:, 0], U[:, 2] - U[:, 0]
        det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
        ok = np.abs(det) > 1e-10
        dpdu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2])[ok] / det[ok, None]
        dpdv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1])[ok] / det[ok, None]
        c = U[ok].mean(1)
        lo, hi = lm_uv.min(0), lm_uv.max(0)
        face = np.all((c > lo) & (c < hi), axis=1)
        m_u = float(np.median(np.linalg.norm(dpdu[face], axis=1)))
        m_v = float(np.median(np.linalg.norm(dpdv[face], axis=1)))

        mouth = np.flatnonzero(part == part_index.get("mouth_interior", -1))
        mouth_uv = uv[uv_faces[mouth]].reshape(-1, 2).mean(0) if len(mouth) else lm_uv[60:68].mean(0)

        centres, maps = [], []
        names = ("eyeball_right", "eyeball_left")
        for name in names:
            f = np.flatnonzero(part == part_index[name])
            t_idx = np.unique(uv_faces[f])
            vid = uv_vertex[t_idx]
            centre = verts[vid].mean(0)
            radius = np.linalg.norm(verts[vid] - centre, axis=1).mean()
            front = verts[vid, 2] > centre[2] + 0.5 * radius
            pole = int(np.argmax(verts[vid, 2]))
            xy = verts[vid[front], :2] - verts[vid[pole], :2]
            duv = uv[t_idx[front]] - uv[t_idx[pole]]
            A, *_ = np.linalg.lstsq(xy, duv, rcond=None)  # duv ≈ xy @ A
            centres.append(uv[t_idx[pole]])
            maps.append(A.T)
        ears = []
        for sign in (-1.0, 1.0):
            xs = sign * verts[:, 0]
            side = np.flatnonzero(xs > 0)
            tip = side[np.argmax(xs[side])]
            ear_v = side[xs[side] > xs[tip] - 0.012]
            t_ear = np.flatnonzero(np.isin(uv_vertex, ear_v))
            ears.append(np.stack([uv[t_ear].min(0), uv[t_ear].max(0)]))
        return cls(
            metres_per_u=m_u,
            metres_per_v=m_v,
            v_per_metre_y=float(slope),
            landmarks_uv=lm_uv,
            mouth_uv=mouth_uv,
            iris_centre_uv=np.stack(centres),
            eye_to_uv=np.stack(maps),
            eye_outline_uv=_lid_openings(verts, faces, uv, uv_faces, part, [part_index[n] for n in names], m_u, m_v),
            ear_uv=np.stack(ears),
        )

    def to_metric(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) uv → (..., 2) face metres (x right across the face, y up)."""
        return np.stack([(uv[..., 0] - 0.5) * self.metres_per_u, uv[..., 1] * self.metres_per_v], -1)
