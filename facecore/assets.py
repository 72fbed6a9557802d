"""Eyes and mouth as assets, not texels (DESIGN §3): the one definition every renderer and exporter uses.

The face model's eyeballs and mouth cavity are parts of its mesh, but they do not take their colour from the
skin's albedo map. They get their own materials, derived here with numpy from the model's own arrays:

* **Eyes** — each eyeball vertex gets eye-texture coordinates from its direction about the eye's centre in
  the rest pose (azimuthal equidistant about the gaze axis +z, the front 60° spread over the inner 80 % of
  the texture's radius, the back folded into the rim). The texture (:func:`eye_texture`) is sclera, an iris
  with a colour parameter, fibres and a dark limbal ring, and a pupil; the iris is sized from the face (its
  radius 0.21 of the eye opening's corner-to-corner width, as a 5.9 mm iris in a 28 mm opening) and the pupil
  is 0.4 of the iris. The coordinates stick to the vertices, so the iris turns with the eye joints and the
  eyeLook* blendshapes.
* **Mouth** — the ``mouth_interior`` part gets coordinates from its depth behind the lip line (v) and its
  side-to-side position (u); the texture (:func:`mouth_texture`) is inner-lip pink at the lips, dark oral
  red behind them and near black in the throat.
* **Teeth** — :class:`Teeth`: upper and lower arch-shaped strips a few millimetres inside the mouth's inner
  wall (tooth widths and heights of an average adult scaled to the mouth), each vertex an affine combination
  of model vertices that move with the skull (upper) or rigidly with the jaw (lower), so every consumer gets
  them from the vertices it already has; :func:`teeth_texture` shades enamel, gaps and gums. The renderer
  draws them with ``teeth=True``; the exports carry a ``teeth`` primitive with its own morph targets.
* **Neck** — :func:`fill_neck` extends the skin colour just above the neck opening down to it, so the
  neck ends cleanly in every albedo (generated maps never learned texels there; photos rarely show them).

Consumers: ``models.render.MeshRenderer.from_face_model`` (training, synthetic renders, benchmarks: the
eye and mouth textures side by side in one atlas, :func:`asset_atlas`), ``service.pipeline`` (GLB / OBJ+MTL
with separate ``eyes`` and ``mouth`` primitives and materials, :func:`export_parts`) and the viewer (shows
the GLB's materials). numpy only, no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from facecore import color, formats
from facecore import geometry as geo
from facecore import mouth as lips
from facecore.texture import LUMA

EYE_PARTS = ("eyeball_left", "eyeball_right")
DEFAULT_IRIS_SRGB = (0.38, 0.25, 0.14)  # hazel brown: the commonest iris colour, used when none is measured
#: the eyeball's white as it shows between the lids: the renderer lights the eyeball as if nothing hid it, where in
#: photos the socket, lids and lashes shade it. Measured in the fixture portraits (the brightest 15 % of the pixels
#: inside dlib's eye contours against the cheeks, linear): 0.34-0.43 of the skin's luminance with the eyes open;
#: renders over them of (0.86, 0.83, 0.79) gave 1.1-1.4 (028: 3.4), glaring white eyes; this gives 0.7-0.85
#: (`python benchmarks/eye_brightness.py`)
SCLERA_SRGB = (0.68, 0.65, 0.61)
PUPIL_SRGB = (0.02, 0.02, 0.025)
IRIS_WIDTH_RATIO = 0.21  # iris radius / eye-opening width (corner to corner)
PUPIL_RATIO = 0.40  # pupil radius / iris radius
LIMBUS_WIDTH = 0.14  # the dark limbal ring, in iris radii
_FRONT_DEG = 60.0  # eye directions up to this angle from the gaze axis map linearly ...
_FRONT_R = 0.40  # ... onto this radius of the eye texture (0.5 = the rim)
MOUTH_DEPTH_M = 0.03  # depth behind the lip line at which the cavity reaches its darkest
# oral interior colours (sRGB) by depth fraction 0 (lip line) → 1 (deep): inner lip, mucosa, throat
_MOUTH_STOPS = ((0.0, (0.55, 0.27, 0.26)), (0.12, (0.36, 0.13, 0.12)), (0.45, (0.16, 0.05, 0.05)),
                (1.0, (0.03, 0.012, 0.012)))  # fmt: skip
NECK_MARGIN_V = 0.025  # the neck fill starts this far (in v) above the neck opening's highest point
GAP_STEP_M = 0.00025  # exports darken the mouth's texture for the lip gap rounded to this (cached textures)


@dataclass(frozen=True, eq=False)
class FaceAssets:
    """The eye and mouth materials of a face model (topology-level, shape-independent).

    Attributes:
        eye_faces: (Fe,) triangles of both eyeballs.
        eye_uv: (Fe, 3, 2) eye-texture coordinates of their corners (v up).
        mouth_faces: (Fm,) triangles of the mouth cavity.
        mouth_uv: (Fm, 3, 2) mouth-texture coordinates of their corners (v up).
        iris_deg, pupil_deg: angular radius of the iris and the pupil about the gaze axis.
        iris_uv: (2, 2) the eyes' (left, right part order) iris disc in the *skin* layout: centre (u, v) and
            radius in u, where the albedo pipelines paint or unwrap the eye (for :func:`iris_colour`).
        iris_uv_radius: (2,) radius of that disc in u.
        neck_v: v below which :func:`fill_neck` replaces the albedo, or None (no open neck boundary).
        teeth: the :class:`Teeth` (None for a model without a mouth cavity or a jaw joint).
        teeth_depth_m: how far the upper incisors' fronts lie behind the inner lips' line on the mean head (for
            :func:`slit_light`; 0 without teeth).
    """

    eye_faces: np.ndarray
    eye_uv: np.ndarray
    mouth_faces: np.ndarray
    mouth_uv: np.ndarray
    iris_deg: float
    pupil_deg: float
    iris_uv: np.ndarray
    iris_uv_radius: np.ndarray
    neck_v: float | None
    teeth: Teeth | None = None
    teeth_depth_m: float = 0.0


def _eye_radius_map(theta: np.ndarray) -> np.ndarray:
    """Angle from the gaze axis (radians) → radius in the eye texture (0 centre, 0.5 rim)."""
    front = np.deg2rad(_FRONT_DEG)
    return np.where(
        theta <= front,
        _FRONT_R * theta / front,
        _FRONT_R + (0.5 - _FRONT_R) * (theta - front) / (np.pi - front),
    )


def _eye_theta(radius: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_eye_radius_map`."""
    front = np.deg2rad(_FRONT_DEG)
    return np.where(
        radius <= _FRONT_R,
        radius / _FRONT_R * front,
        front + (radius - _FRONT_R) / (0.5 - _FRONT_R) * (np.pi - front),
    )


_CACHE: dict[int, tuple[geo.FaceModelArrays, FaceAssets]] = {}


def face_assets(model: geo.FaceModelArrays) -> FaceAssets:
    """The (cached) :class:`FaceAssets` of ``model``; raises ``ValueError`` when it has no eyeball parts."""
    hit = _CACHE.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    assets = _build(model)
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[id(model)] = (model, assets)
    return assets


def _part(model: geo.FaceModelArrays, name: str) -> np.ndarray:
    return (
        np.flatnonzero(model.face_part == model.part_names.index(name))
        if name in model.part_names
        else np.zeros(0, int)
    )


def _build(model: geo.FaceModelArrays) -> FaceAssets:
    mean = model.mean.astype(np.float64)
    missing = [p for p in EYE_PARTS if p not in model.part_names]
    if missing:
        raise ValueError(f"face model: no eyeball part(s) {missing}; parts are {model.part_names}")
    lmk = geo.landmarks_3d(model, mean[None])[0]
    eye_width = 0.5 * (np.linalg.norm(lmk[36] - lmk[39]) + np.linalg.norm(lmk[42] - lmk[45]))
    eye_faces, eye_uv, iris_deg, pupil_deg = [], [], [], []
    iris_uv, iris_r = [], []
    for name in EYE_PARTS:
        faces = _part(model, name)
        verts = np.unique(model.faces[faces])
        centre = mean[verts].mean(0)
        radius = float(np.linalg.norm(mean[verts] - centre, axis=1).mean())
        iris = float(np.arcsin(np.clip(IRIS_WIDTH_RATIO * eye_width / radius, 0.05, 0.95)))
        iris_deg.append(np.degrees(iris))
        pupil_deg.append(np.degrees(np.arcsin(np.clip(PUPIL_RATIO * np.sin(iris), 0.0, 1.0))))
        d = mean[model.faces[faces]] - centre  # (Fe, 3, 3)
        d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
        theta = np.arccos(np.clip(d[..., 2], -1.0, 1.0))
        phi = np.arctan2(d[..., 1], d[..., 0])
        r = _eye_radius_map(theta)
        eye_uv.append(np.stack([0.5 + r * np.cos(phi), 0.5 + r * np.sin(phi)], -1))
        eye_faces.append(faces)
        # where the skin layout has this eye's iris: the pole's texels, radius from the ring nearest the iris
        corners = model.uv_faces[faces].ravel()
        cdir = (mean[model.uv_vertex[corners]] - centre) / radius
        ctheta = np.arccos(np.clip(cdir[:, 2], -1.0, 1.0))
        pole = model.uv[corners[np.argmin(ctheta)]]
        ring = np.abs(ctheta - iris) < np.deg2rad(8.0)
        dist = np.linalg.norm(model.uv[corners[ring]] - pole, axis=1) if ring.any() else np.array([0.0])
        scale = np.median(dist / np.maximum(np.sin(ctheta[ring]), 1e-6)) if ring.any() else 0.0
        iris_uv.append(pole)
        iris_r.append(scale * np.sin(iris))
    mouth = _part(model, geo.MOUTH_PART)
    if len(mouth):
        mouth = np.union1d(mouth, geo.inner_mouth_skin(model))
        mv = mean[model.faces[mouth]]  # (Fm, 3, 3)
        z_lip = mv[..., 2].max()
        half = max(float(np.abs(mv[..., 0]).max()), 1e-6)
        depth = np.clip((z_lip - mv[..., 2]) / MOUTH_DEPTH_M, 0.0, 1.0)
        mouth_uv = np.stack([0.5 + 0.45 * mv[..., 0] / half, 0.02 + 0.96 * depth], -1)
    else:
        mouth_uv = np.zeros((0, 3, 2))
    teeth = _build_teeth(model, mean, mouth)
    lip_line = 0.5 * (lmk[lips.UPPER].mean(0) + lmk[lips.LOWER].mean(0))
    teeth_depth = max(float(lip_line[2] - teeth.rest[teeth.upper][:, 2].max()), 0.0) if teeth is not None else 0.0
    return FaceAssets(
        eye_faces=np.concatenate(eye_faces),
        eye_uv=np.concatenate(eye_uv).astype(np.float32),
        mouth_faces=mouth,
        mouth_uv=mouth_uv.astype(np.float32),
        iris_deg=float(np.mean(iris_deg)),
        pupil_deg=float(np.mean(pupil_deg)),
        iris_uv=np.array(iris_uv, np.float64),
        iris_uv_radius=np.array(iris_r, np.float64),
        neck_v=_neck_v(model),
        teeth=teeth,
        teeth_depth_m=teeth_depth,
    )


def _neck_v(model: geo.FaceModelArrays) -> float | None:
    """v of the highest point of the mesh's open boundary below mid-height (the neck opening), plus a margin."""
    f = model.faces
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, inverse, count = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    open_v = np.unique(edges[count[inverse.ravel()] == 1])
    skin_uv = np.unique(model.uv_faces[model.face_part == 0])
    boundary = skin_uv[np.isin(model.uv_vertex[skin_uv], open_v)]
    if len(boundary) == 0:
        return None
    v = model.uv[boundary, 1]
    y = model.mean[model.uv_vertex[boundary], 1]
    low = y < np.median(model.mean[:, 1])
    return float(v[low].max() + NECK_MARGIN_V) if low.any() else None


# ---------------------------------------------------------------------------------------------- teeth
TEETH_GAP_M = 0.002  # the upper arch's front this far inside the mouth's inner wall (behind the lips)
TEETH_CLEARANCE_M = 0.0005  # Teeth.fitted: how far behind a head's skin its teeth stay at rest
TEETH_OVERJET_M = 0.0026  # the lower arch's front this far inside the upper's (lower incisors behind upper)
UPPER_EDGE_M = -0.0025  # the upper incisal edge this far above (+) / below (−) the lip line, for a 50 mm mouth
LOWER_EDGE_M = 0.0010  # the lower incisal edge (overbite 3.5 mm: the upper incisors cover the lower's top)
_MOUTH_REF_M = 0.050  # tooth sizes below are for a mouth this wide (corner to corner); scaled to the model's
# per tooth from the midline back: width, crown height, edge raised towards the back (curve of Spee), kind
# (0 incisor, 1 canine, 2 premolar, 3 molar); millimetres, average adult dentition
_UPPER_TEETH = ((8.6, 10.0, 0.0, 0), (6.6, 8.6, 0.7, 0), (7.6, 9.6, 0.2, 1), (7.0, 8.0, 0.9, 2), (6.6, 7.4, 1.5, 2),
                (10.0, 6.8, 2.2, 3))  # fmt: skip
_LOWER_TEETH = ((5.3, 8.6, 0.0, 0), (5.9, 9.0, 0.2, 0), (6.9, 10.0, 0.0, 1), (7.0, 8.0, 0.6, 2), (7.1, 7.6, 1.2, 2),
                (11.0, 7.0, 1.9, 3))  # fmt: skip
# by kind: crown thickness (lip to tongue side), incisal edge / occlusal table width, corner rounding, cusp
_TOOTH_KIND = ((5.5, 1.0, 1.1, 0.0), (7.0, 1.6, 1.6, 1.1), (8.0, 3.6, 1.3, 0.6), (9.5, 5.5, 1.0, 0.3))
_SAMPLES_PER_TOOTH = 8
# the cross-section, from the tongue side's gum over the edge to the lip side's gum: (texture q, row kind)
_PROFILE_Q = (0.0, 0.1, 0.2, 0.3, 0.38, 0.45, 0.6, 0.78, 0.88, 1.0)
ENAMEL_SRGB = (0.90, 0.87, 0.79)
GUM_SRGB = (0.74, 0.38, 0.38)
_TEETH_TEX_ROWS = (0.02, 0.96)  # q → v within an arch's half of the texture: v0 + q · dv


@dataclass(frozen=True, eq=False)
class Teeth:
    """Upper and lower teeth: two arch-shaped strips inside the mouth, embedded in the face model's vertices.

    Every teeth vertex is a fixed affine combination of some model vertices (``weights @ verts[anchors]``):
    the upper arch's anchors move with the skull (the jaw's parent joint, quiet under expressions), the lower
    arch's with the jaw (its skinning weights, chin and jaw line below the lower lip), each weighted by
    closeness. An affine combination reproduces any affine motion of its anchors exactly, so the teeth turn
    with the head and the jaw joint, follow ``jawOpen`` / ``jawForward`` / ``jawLeft`` (the chin's motion), stay
    put under the lips' own expressions and scale with the identity's mouth; expression morph targets are
    ``weights @ expr_basis[:, anchors]``.

    Attributes:
        anchors: (n,) model vertices the teeth are made from.
        weights: (T, n) affine weights (rows sum to 1).
        faces: (Ft, 3) triangles over the T teeth vertices (counter-clockwise from outside).
        uv: (T, 2) coordinates in :func:`teeth_texture` (upper arch in its top half, lower in its bottom half).
        upper: (T,) True on the upper arch.
        rest: (T, 3) positions on the model's mean.
        bounds: ((upper (k+1,), lower (k+1,)) tooth boundaries along each arch, signed arc length in metres
            from the midline, one side (the other mirrors it).
        kinds: (upper (k,), lower (k,)) tooth kinds (0 incisor, 1 canine, 2 premolar, 3 molar).
        half_length: the texture's half width in arc length (metres): u = 0.5 + a / (2 · half_length).
        scale: the model's mouth width over 50 mm (tooth sizes scale with it).
    """

    anchors: np.ndarray
    weights: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    upper: np.ndarray
    rest: np.ndarray
    bounds: tuple[np.ndarray, np.ndarray]
    kinds: tuple[np.ndarray, np.ndarray]
    half_length: float
    scale: float

    def vertices(self, verts: np.ndarray) -> np.ndarray:
        """(..., V, 3) model vertices (posed or not) → (..., T, 3) teeth vertices."""
        v = np.asarray(verts)
        return np.einsum("tn,...nc->...tc", self.weights, v[..., self.anchors, :]).astype(v.dtype, copy=False)

    def deltas(self, basis: np.ndarray) -> np.ndarray:
        """(E, V, 3) per-vertex deltas (e.g. ``expr_basis``) → (E, T, 3) the teeth's (their morph targets)."""
        return np.einsum("tn,enc->etc", self.weights, np.asarray(basis, np.float64)[:, self.anchors])

    def fitted(self, model: geo.FaceModelArrays, rest: np.ndarray, clearance: float = TEETH_CLEARANCE_M) -> Teeth:
        """These teeth moved back, arch by arch, until they lie ``clearance`` behind the skin of the head whose
        rest vertices (its identity, no expression, no pose) are ``rest`` (V, 3); unchanged where they already do.

        The arches are fitted to the mean head's mouth; an identity whose lips sit further back over its teeth
        (measured: 15 % of the adult prior's heads, up to 4 mm) would show the incisors through the upper lip at
        rest. The shift is written into the weights as a combination of the arch's anchor offsets from their mean
        (coefficients summing to 0), so the teeth stay an affine combination of their anchors: they turn with the
        skull and the jaw, and their morph targets follow, as before. A lower arch further forward of the upper
        one than on the mean head goes back until it is not."""
        rest = np.asarray(rest, np.float64)
        face_upper = self.upper[self.faces[:, 0]]

        def moved_back(weights: np.ndarray, arch: np.ndarray, shift: float) -> np.ndarray:
            rows = np.flatnonzero(arch)
            cols = np.flatnonzero(np.abs(self.weights[rows]).sum(0) > 0)
            offsets = (rest[self.anchors[cols]] - rest[self.anchors[cols]].mean(0)).T  # (3, n)
            out = weights.copy()
            out[np.ix_(rows, cols)] += offsets.T @ np.linalg.solve(offsets @ offsets.T, np.array([0.0, 0.0, -shift]))
            return out

        teeth = self
        for _ in range(2):  # a second look where the first moved them (the skin behind may now cover them)
            over, owner = teeth_over_skin(model, rest, teeth.vertices(rest), self.faces, owners=True)
            weights = teeth.weights
            for arch, on in ((self.upper, face_upper[owner]), (~self.upper, ~face_upper[owner])):
                shift = float(over[on].max()) + clearance if on.any() else 0.0
                if shift > 0.0:
                    weights = moved_back(weights, arch, shift)
            if weights is teeth.weights:
                break
            teeth = replace(teeth, weights=weights)
        # the lower incisors no further forward of the upper ones than on the mean head (a jutting chin carries the
        # lower arch forward with it: up to 10 mm in front of the upper on the generation prior's heads)
        front, mean_front = teeth.vertices(rest)[:, 2], self.rest[:, 2]
        ahead = float(front[~self.upper].max() - front[self.upper].max())
        ahead -= float(mean_front[~self.upper].max() - mean_front[self.upper].max())
        if ahead > 1e-5:
            teeth = replace(teeth, weights=moved_back(teeth.weights, ~self.upper, ahead))
        return teeth


def teeth_over_skin(
    model: geo.FaceModelArrays,
    verts: np.ndarray,
    teeth_verts: np.ndarray,
    teeth_faces: np.ndarray,
    yaw: float = 0.0,
    pixel_m: float = 5e-4,
    owners: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """How far (metres) teeth lie in front of the head's outer skin, per pixel of an orthographic view from the
    front (turned by ``yaw`` radians about the vertical) where both are drawn: positive where they poke through the
    lips or the chin. Outer skin is skin facing the camera, not the eyes, the mouth cavity, the skin folded inside
    the lips or the inside of the head seen through the mouth. ``verts`` (V, 3) the head's vertices, ``teeth_verts``
    (T, 3) and ``teeth_faces`` (F, 3) the teeth's (:class:`Teeth`); empty where no skin covers them. With
    ``owners``, also the teeth face drawn at each of those pixels."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    v, t = np.asarray(verts, np.float64) @ rot.T, np.asarray(teeth_verts, np.float64) @ rot.T
    used = t[np.unique(teeth_faces)]
    lo = used[:, :2].min(0) - 0.002
    hi = used[:, :2].max(0) + 0.002
    W, H = (np.ceil((hi - lo) / pixel_m).astype(int) + 1).tolist()

    def zbuf(points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = (points[:, :2] - lo) / pixel_m
        xy[:, 1] = H - 1 - xy[:, 1]
        node, tri, bary = geo.rasterize_nodes(xy[faces], points[faces, 2], W, H)
        depth = np.full(W * H, -np.inf)
        owner = np.full(W * H, -1)
        depth[node] = np.einsum("nk,nk->n", bary, points[faces[tri], 2])
        owner[node] = tri
        return depth, owner

    # the faces over the box and not far behind the teeth (the back of the head cannot cover them)
    tri = v[model.faces]
    near = np.all(tri[..., :2].max(1) >= lo, 1) & np.all(tri[..., :2].min(1) <= hi, 1)
    near &= tri[..., 2].max(1) >= used[:, 2].min() - 0.01
    keep = np.flatnonzero(near)
    face_z, face = zbuf(v, model.faces[keep])
    face = np.where(face >= 0, keep[np.maximum(face, 0)], -1)
    teeth_z, tooth = zbuf(t, teeth_faces)
    normal_z = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
    outer = np.zeros(len(model.faces) + 1, bool)  # index -1 (no face) → the last entry, False
    outer[:-1] = (model.face_part == 0) & (normal_z > 0)
    outer[face_assets(model).mouth_faces] = False
    over = outer[face] & np.isfinite(teeth_z)
    diff = teeth_z[over] - face_z[over]
    return (diff, tooth[over]) if owners else diff


_HEAD_TEETH: OrderedDict[tuple[int, bytes], tuple[geo.FaceModelArrays, Teeth | None]] = OrderedDict()


def head_teeth(model: geo.FaceModelArrays, shape: np.ndarray | None) -> Teeth | None:
    """The model's :class:`Teeth` fitted to the head of identity code ``shape`` (K,) (:meth:`Teeth.fitted`, ~20 ms;
    the last 64 heads cached); the mean head's with ``shape`` None; None for a model without teeth."""
    teeth = face_assets(model).teeth
    if teeth is None or shape is None:
        return teeth
    shape = np.asarray(shape, np.float32)
    key = (id(model), shape.tobytes())  # an entry holds its model: a collected model's id is never matched
    hit = _HEAD_TEETH.get(key)
    if hit is not None:
        _HEAD_TEETH.move_to_end(key)
        return hit[1]
    rest = geo.decode_vertices(model, shape[None].astype(np.float64), np.zeros((1, model.n_expr)))[0]
    fitted = teeth.fitted(model, rest)
    fitted.weights.setflags(write=False)  # shared between the service's threads
    _HEAD_TEETH[key] = (model, fitted)
    while len(_HEAD_TEETH) > 64:
        _HEAD_TEETH.popitem(last=False)
    return fitted


def with_head_teeth(model: geo.FaceModelArrays, verts: np.ndarray, shape: np.ndarray | None) -> np.ndarray:
    """(V, 3) vertices → (V + T, 3) with the teeth fitted to the head of identity ``shape`` appended (what the
    renderers draw instead of the mean head's teeth, which they append only to vertices that have none); the
    vertices as they are for a model without teeth."""
    teeth = head_teeth(model, shape)
    verts = np.asarray(verts, np.float64)
    return verts if teeth is None else np.concatenate([verts, teeth.vertices(verts)])


def _mouth_wall(model: geo.FaceModelArrays, mean: np.ndarray, faces: np.ndarray, levels: np.ndarray,
                centre: np.ndarray, phi: np.ndarray) -> np.ndarray:  # fmt: skip
    """Radius (in x-z, about ``centre`` (x, z)) of the mouth's inner wall at angles ``phi`` (0 = +z, towards
    +x positive): the slices of ``faces`` at heights ``levels``, the nearest wall over all levels; NaN where
    no slice reaches."""
    tri = mean[model.faces[faces]]
    half = 0.5 * (phi[1] - phi[0])
    out = np.full(len(phi), np.inf)
    for y0 in levels:
        pts = []
        for a, b in ((0, 1), (1, 2), (2, 0)):
            ya, yb = tri[:, a, 1] - y0, tri[:, b, 1] - y0
            cross = ya * yb < 0
            t = ya[cross] / (ya[cross] - yb[cross])
            pts.append(tri[cross, a] + (tri[cross, b] - tri[cross, a]) * t[:, None])
        p = np.concatenate(pts)
        if not len(p):
            continue
        dx, dz = p[:, 0] - centre[0], p[:, 2] - centre[1]
        ang, rad = np.arctan2(dx, dz), np.hypot(dx, dz)
        for i, f in enumerate(phi):
            sel = np.abs(ang - f) <= half
            if sel.any():
                out[i] = min(out[i], float(np.min(rad[sel])))
    out[~np.isfinite(out)] = np.nan
    return out


def _affine_weights(anchor_pos: np.ndarray, importance: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, n) weights w with ``w @ anchor_pos == points``, rows summing to 1: the weighted least-squares affine
    map of the anchors' motion, evaluated at ``points`` (so any affine motion of the anchors is reproduced)."""
    a = importance / importance.sum()
    mu = a @ anchor_pos
    d = anchor_pos - mu
    cov = (d * a[:, None]).T @ d
    lin = (points - mu) @ np.linalg.inv(cov)  # (T, 3)
    return a[None] + (lin @ d.T) * a[None]


def _kabsch(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation R and translation t that best map points p onto q (least squares): q ≈ p Rᵀ + t."""
    pc, qc = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    d = np.sign(np.linalg.det(u @ vt))
    r = (u @ np.diag([1.0, 1.0, d]) @ vt).T
    return r, qc - r @ pc


def _most_rigid(mean: np.ndarray, deltas: np.ndarray, candidates: np.ndarray, keep: float = 0.45) -> np.ndarray:
    """The candidates that move most rigidly together under every delta (E, V, 3): trimmed rigid fits."""
    idx = candidates
    for _ in range(5):
        worst = np.zeros(len(candidates))
        for d in deltas:
            r, t = _kabsch(mean[idx], mean[idx] + d[idx])
            moved = mean[candidates] + d[candidates]
            worst = np.maximum(worst, np.linalg.norm(mean[candidates] @ r.T + t - moved, axis=1))
        idx = candidates[worst <= max(np.quantile(worst, keep), 3e-4)]
    return idx


def _tooth_columns(teeth: tuple, scale: float, length: float) -> tuple[np.ndarray, dict, np.ndarray]:
    """Arc positions of the strip's columns (both sides) and each column's tooth parameters."""
    widths = np.array([t[0] for t in teeth]) * 1e-3 * scale
    widths *= min(1.0, length / widths.sum())
    bounds = np.concatenate([[0.0], np.cumsum(widths)])
    a, k, t = [], [], []
    for i in range(len(teeth)):
        for j in range(_SAMPLES_PER_TOOTH):
            a.append(bounds[i] + widths[i] * j / _SAMPLES_PER_TOOTH)
            k.append(i)
            t.append(j / _SAMPLES_PER_TOOTH)
    a.append(bounds[-1])
    k.append(len(teeth) - 1)
    t.append(1.0)
    a, k, t = np.array(a), np.array(k), np.array(t)
    # both sides: mirror (the midline column once)
    a = np.concatenate([-a[:0:-1], a])
    k = np.concatenate([k[:0:-1], k])
    t = np.concatenate([t[:0:-1], t])
    params = {
        "height": np.array([teeth[i][1] for i in k]) * 1e-3 * scale,
        "raise": np.array([teeth[i][2] for i in k]) * 1e-3 * scale,
        "kind": np.array([teeth[i][3] for i in k]),
    }
    # a boundary column belongs to both teeth: the mean of the two (the midline column is one tooth's)
    for i in np.flatnonzero((t == 0.0) & (a != 0.0)):
        j = i + 1 if a[i] < 0 else i - 1  # the neighbour on the midline side belongs to the inner tooth
        params["height"][i] = 0.5 * (params["height"][i] + params["height"][j])
        params["raise"][i] = 0.5 * (params["raise"][i] + params["raise"][j])
    e = 4.0 * t * (1.0 - t)  # 1 at a tooth's middle, 0 at its edges
    params["e"] = e
    return a, params, bounds


def _arch_strip(
    arc: np.ndarray, params: dict, curve, y_edge: float, scale: float, upward: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (C, R, 3) of one arch's strip and texture q (R,) of its rows."""
    kind = params["kind"]
    th, ew, rc, cusp = (np.array([_TOOTH_KIND[k][i] for k in kind]) * 1e-3 * scale for i in range(4))
    e, H, rise = params["e"], params["height"], params["raise"]
    mm = 1e-3 * scale
    edge = rise + rc * (1.0 - e) ** 2.5 - cusp * e**2  # the edge rounds up at the corners, canines point
    recess = 0.6 * mm * (1.0 - e) ** 2  # the lip side dips between teeth
    cervical = H - 1.2 * mm * (1.0 - e) ** 2  # the gum comes down between teeth (papillae)
    # (depth behind the arch's front, height from the edge line) of each row
    rows = [
        (th + 1.5 * mm, H + 3.0 * mm),
        (th, cervical),
        (0.55 * th + 0.6 * mm, 0.4 * H),
        (ew, edge + 0.15 * mm),
        (0.35 * mm + 0.5 * recess, edge),
        (0.12 * mm + recess, edge + 0.15 * H),
        (0.0 * mm + recess, edge + 0.5 * H),
        (0.15 * mm + 0.5 * recess, cervical),
        (0.35 * mm, H + 1.5 * mm),
        (1.5 * mm, H + 3.2 * mm),
    ]
    point, normal = curve(arc)  # (C, 2) x-z of the front line, (C, 2) outward unit normal
    out = np.empty((len(arc), len(rows), 3))
    sign = 1.0 if upward else -1.0
    for r, (d, h) in enumerate(rows):
        d = np.broadcast_to(d, arc.shape)
        h = np.broadcast_to(h, arc.shape)
        out[:, r, 0] = point[:, 0] - d * normal[:, 0]
        out[:, r, 2] = point[:, 1] - d * normal[:, 1]
        out[:, r, 1] = y_edge + sign * h
    return out, np.array(_PROFILE_Q)


def _strip_faces(n_cols: int, n_rows: int, offset: int) -> np.ndarray:
    idx = np.arange(n_cols * n_rows).reshape(n_cols, n_rows) + offset
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def _build_teeth(model: geo.FaceModelArrays, mean: np.ndarray, mouth_faces: np.ndarray) -> Teeth | None:
    if "jaw" not in model.joint_names or not len(mouth_faces):
        return None
    jaw = model.joint_names.index("jaw")
    head = int(model.joint_parents[jaw])
    lm = geo.landmarks_3d(model, mean[None])[0]
    scale = float(np.clip(abs(lm[54, 0] - lm[48, 0]) / _MOUTH_REF_M, 0.7, 1.4))
    mm = 1e-3 * scale
    y_lip = float(lm[[61, 62, 63, 65, 66, 67], 1].mean())
    x_mid = float(0.5 * (lm[48, 0] + lm[54, 0]))
    # the mouth's inner wall about a centre 26 mm behind its front, over each arch's height
    front = mean[model.faces[mouth_faces]].reshape(-1, 3)
    near = np.abs(front[:, 0] - x_mid) < 3 * mm
    z_front = float(front[near, 2].max()) if near.any() else float(lm[62, 2])
    centre = np.array([x_mid, z_front - 26 * mm])
    phi = np.deg2rad(np.arange(-110.0, 110.1, 5.0))

    def wall_radius(lo_mm: float, hi_mm: float) -> np.ndarray | None:
        """The nearest wall over heights lo..hi mm about the lip line, symmetric and smooth, per φ."""
        levels = y_lip + np.arange(lo_mm, hi_mm + 0.1, 1.5) * mm
        r = _mouth_wall(model, mean, mouth_faces, levels, centre, phi)
        r = np.fmin(r, r[::-1])  # symmetric: the nearer side
        ok = np.isfinite(r)
        if ok.sum() < 8:
            return None
        r = np.interp(phi, phi[ok], r[ok])
        r = np.min(np.stack([r, np.r_[r[1:], r[-1]], np.r_[r[0], r[:-1]]]), 0)  # conservative ...
        kernel = np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)
        return np.convolve(np.pad(r, 3, mode="edge"), kernel / kernel.sum(), mode="valid")  # ... and smooth

    upper_wall = wall_radius(UPPER_EDGE_M * 1e3 * scale - 0.5, 12.0 * scale)
    lower_wall = wall_radius(-11.0 * scale, LOWER_EDGE_M * 1e3 * scale + 0.5)
    if upper_wall is None or lower_wall is None:
        return None
    upper_r = upper_wall - TEETH_GAP_M * scale
    radii = (upper_r, np.minimum(lower_wall - TEETH_GAP_M * scale, upper_r - TEETH_OVERJET_M * scale))

    def make_curve(r_phi: np.ndarray):
        fine = np.linspace(phi[0], phi[-1], 4001)
        r = np.interp(fine, phi, r_phi)
        xz = centre + r[:, None] * np.stack([np.sin(fine), np.cos(fine)], 1)
        seg = np.linalg.norm(np.diff(xz, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s -= s[len(s) // 2]
        tangent = np.gradient(xz, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
        normal *= np.sign(np.sum(normal * (xz - centre), axis=1, keepdims=True))

        def curve(arc):
            p = np.stack([np.interp(arc, s, xz[:, i]) for i in range(2)], 1)
            n = np.stack([np.interp(arc, s, normal[:, i]) for i in range(2)], 1)
            return p, n / np.linalg.norm(n, axis=1, keepdims=True)

        return curve, float(s[-1])

    verts, uv, faces, upper, bounds, kinds = [], [], [], [], [], []
    half_lengths = []
    specs = ((_UPPER_TEETH, radii[0], UPPER_EDGE_M, True), (_LOWER_TEETH, radii[1], LOWER_EDGE_M, False))
    cols = []
    for teeth, r_phi, edge, is_upper in specs:
        curve, avail = make_curve(r_phi)
        arc, params, b = _tooth_columns(teeth, scale, avail)
        strip, q = _arch_strip(arc, params, curve, y_lip + edge * scale, scale, is_upper)
        cols.append((arc, strip, q))
        bounds.append(b)
        kinds.append(np.array([t[3] for t in teeth]))
        half_lengths.append(b[-1])
    half_length = 1.02 * max(half_lengths)
    offset = 0
    for (arc, strip, q), is_upper in zip(cols, (True, False), strict=True):
        C, R = strip.shape[:2]
        verts.append(strip.reshape(-1, 3))
        u = np.repeat(0.5 + arc / (2 * half_length), R)
        v0 = 0.5 if is_upper else 0.0
        v = np.tile(v0 + 0.5 * (_TEETH_TEX_ROWS[0] + _TEETH_TEX_ROWS[1] * q), C)
        uv.append(np.stack([u, v], 1))
        f = _strip_faces(C, R, 0)
        # outward winding: the lip side's middle (row 6) faces away from the arch's centre (+z at the midline)
        flat = strip.reshape(-1, 3)
        front = f[np.all(np.isin(f, np.arange(C * R).reshape(C, R)[C // 2 - 1 : C // 2 + 1, 5:8]), axis=1)]
        n = np.cross(flat[front[:, 1]] - flat[front[:, 0]], flat[front[:, 2]] - flat[front[:, 0]])
        if n[:, 2].sum() < 0:
            f = f[:, ::-1]
        faces.append(f + offset)
        upper.append(np.full(C * R, is_upper))
        offset += C * R
    rest = np.concatenate(verts)
    faces = np.concatenate(faces)
    upper = np.concatenate(upper)
    # anchors: the skull's quiet vertices above the lips, the jaw's below them
    W = model.lbs_weights.astype(np.float64)
    motion = np.linalg.norm(model.expr_basis.astype(np.float64), axis=2)  # (E, V)
    jaw_expr = [i for i, name in enumerate(model.expr_names) if name.startswith("jaw")]
    lip_motion = np.delete(motion, jaw_expr, axis=0).max(0) if len(jaw_expr) < len(motion) else np.zeros(len(W))
    on_eye = np.zeros(len(W), bool)
    for name in EYE_PARTS:
        on_eye[np.unique(model.faces[_part(model, name)])] = True
    jaw_deltas = model.expr_basis[jaw_expr].astype(np.float64)
    # the skull's: the most static under every expression, over the head (σ 55 mm: anchors all round the
    # teeth, or the fit extrapolates the nose's small motions); the jaw's: rigid under the jaw's expressions
    groups = (
        (upper, (W[:, head] >= 0.99) & (motion.max(0) < 2.5 * mm) & ~on_eye, None, 55 * mm),
        (~upper, (W[:, jaw] >= 0.6) & (mean[:, 1] < y_lip - 5 * mm) & (lip_motion < 4.0 * mm), jaw_deltas, 30 * mm),
    )
    chosen = []
    for members, sel, deltas, sigma in groups:  # each arch's anchors: weighted by closeness, the far ones left out
        idx = np.flatnonzero(sel)
        importance = np.exp(-0.5 * (np.linalg.norm(mean[idx] - rest[members].mean(0), axis=1) / sigma) ** 2)
        idx = idx[importance > 0.05]
        if len(idx) >= 24 and deltas is not None:  # those the jaw's expressions move most rigidly together
            idx = _most_rigid(mean, deltas, idx)
        elif len(idx) >= 24:  # those no expression moves much
            idx = idx[motion.max(0)[idx] <= np.quantile(motion.max(0)[idx], 0.4)]
        if len(idx) < 12:
            return None
        importance = np.exp(-0.5 * (np.linalg.norm(mean[idx] - rest[members].mean(0), axis=1) / sigma) ** 2)
        chosen.append((members, idx, importance))
    anchors = np.unique(np.concatenate([idx for _, idx, _ in chosen]))
    weights = np.zeros((len(rest), len(anchors)))
    for members, idx, importance in chosen:
        cols_idx = np.searchsorted(anchors, idx)
        weights[np.ix_(np.flatnonzero(members), cols_idx)] = _affine_weights(mean[idx], importance, rest[members])
    return Teeth(
        anchors=anchors,
        weights=weights,
        faces=faces.astype(np.int64),
        uv=np.concatenate(uv).astype(np.float32),
        upper=upper,
        rest=rest,
        bounds=(bounds[0], bounds[1]),
        kinds=(kinds[0], kinds[1]),
        half_length=float(half_length),
        scale=scale,
    )


def teeth_texture(teeth: Teeth, size: int = 256) -> np.ndarray:
    """(size, size, 3) sRGB teeth texture (row 0 is v = 1): the upper arch in the top half, the lower in the
    bottom half; u along the arch (the midline at 0.5), each half's rows across the strip from the tongue
    side's gum over the incisal edge to the lip side's gum. Enamel (yellower at the neck, greyer and
    translucent at the edge), dark gaps between teeth, gums, and the mouth's shadow on the back teeth."""
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1.0 - c)
    img = np.zeros((size, size, 3))
    for is_upper, bounds, kinds in ((True, teeth.bounds[0], teeth.kinds[0]), (False, teeth.bounds[1], teeth.kinds[1])):
        half = v >= 0.5 if is_upper else v < 0.5
        q = ((v - (0.5 if is_upper else 0.0)) / 0.5 - _TEETH_TEX_ROWS[0]) / _TEETH_TEX_ROWS[1]
        a = np.abs((u - 0.5) * 2.0 * teeth.half_length)  # arc distance from the midline
        k = np.clip(np.searchsorted(bounds, a, side="right") - 1, 0, len(kinds) - 1)
        gap = np.minimum(a - bounds[k], bounds[k + 1] - a)  # distance to the nearest tooth boundary
        gap = np.where(a < 1e-9, 1.0, gap)  # ... the midline column is one
        gap = np.minimum(gap, np.abs(a))  # the two central incisors meet at the midline
        kind = np.asarray(kinds)[k]
        tint = 1.0 + 0.035 * np.sin(2.3 * k + (0.0 if is_upper else 1.1))  # no two teeth quite alike
        enamel = np.array(ENAMEL_SRGB)[None, None] * tint[..., None]
        enamel = enamel * np.where(kind[..., None] >= 1, np.array([0.98, 0.95, 0.88]), 1.0)
        neck = _smoothstep(0.62, 0.78, q)  # lip side towards the gum: yellower
        tip = 1.0 - _smoothstep(0.4, 0.55, q)  # towards the edge: greyer, translucent
        col = enamel * (1.0 - 0.12 * neck[..., None] * np.array([0.0, 0.4, 1.0]))
        col = col + (np.array([0.62, 0.64, 0.68]) - col) * (0.55 * tip * (q > 0.3))[..., None]
        col = col * np.where(q < 0.3, 0.55, 1.0)[..., None]  # the tongue side: in the mouth's shade
        mm = 1e-3 * teeth.scale
        dark = 1.0 - 0.8 * np.exp(-((gap / (0.3 * mm)) ** 2)) - 0.25 * np.exp(-((gap / (1.1 * mm)) ** 2))
        col = col * dark[..., None]
        gum_lip = _smoothstep(0.79, 0.82, q)
        gum_tongue = 1.0 - _smoothstep(0.08, 0.12, q)
        gum = np.array(GUM_SRGB)[None, None] * (1.0 - 0.35 * _smoothstep(0.85, 1.0, q))[..., None]
        col = col + (gum - col) * np.maximum(gum_lip, gum_tongue)[..., None]
        shade = 1.0 - 0.6 * _smoothstep(10.0 * mm, 40.0 * mm, a)  # back teeth sit in the mouth's shadow
        col = col * (shade * (1.0 if is_upper else 0.9))[..., None]
        img = np.where(half[..., None], col, img)
    return np.clip(img, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- textures
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def check_iris(iris_srgb: object) -> np.ndarray:
    """An iris colour as a (3,) float array of sRGB values in [0, 1]; raises ``ValueError`` otherwise."""
    arr = np.asarray(iris_srgb, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"iris_srgb: expected 3 sRGB values in [0, 1], got {iris_srgb!r}")
    return arr


def eye_texture(assets: FaceAssets, iris_srgb=DEFAULT_IRIS_SRGB, size: int = 512) -> np.ndarray:
    """(size, size, 3) sRGB eye texture in [0, 1] (row 0 is v = 1): sclera, iris, limbal ring, pupil."""
    iris_rgb = check_iris(iris_srgb)
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1.0 - c)
    du, dv = u - 0.5, v - 0.5
    theta = np.degrees(_eye_theta(np.hypot(du, dv)))
    phi = np.arctan2(dv, du)
    s = theta / assets.iris_deg  # 1 at the iris edge
    p = assets.pupil_deg / assets.iris_deg
    aa = 1.5 * _FRONT_DEG / _FRONT_R / size / assets.iris_deg  # about one texel, in iris radii
    # iris: radial fibres, a lighter collarette, darker towards the limbus
    fibres = 0.5 + 0.5 * np.sin(41.0 * phi + 2.5 * np.sin(7.0 * phi) + 6.0 * s)
    fibres2 = 0.5 + 0.5 * np.sin(23.0 * phi - 3.0 * np.sin(5.0 * phi + 1.0))
    shade = 0.78 + 0.22 * fibres * fibres2 + 0.25 * np.exp(-(((s - (p + 0.18)) / 0.08) ** 2))
    limbus = 1.0 - 0.62 * _smoothstep(1.0 - LIMBUS_WIDTH - 0.1, 1.0, s)
    iris = np.clip(iris_rgb[None, None] * (shade * limbus)[..., None], 0.0, 1.0)
    sclera = np.array(SCLERA_SRGB)[None, None] * (1.0 - 0.08 * _smoothstep(1.0, 3.5, s))[..., None]
    img = sclera
    img = img + (iris - img) * (1.0 - _smoothstep(1.0 - aa, 1.0 + aa, s))[..., None]
    img = img + (np.array(PUPIL_SRGB)[None, None] - img) * (1.0 - _smoothstep(p - aa, p + aa, s))[..., None]
    # the upper lid shades the top of the eye (and a little the bottom): an eye is never evenly lit
    up = s * np.sin(phi)
    img = img * (1.0 - 0.3 * _smoothstep(-0.3, 1.3, up) - 0.1 * _smoothstep(0.3, 1.6, -up))[..., None]
    return np.clip(img, 0.0, 1.0)


def _mouth_row_depth(size: int) -> np.ndarray:
    """(size,) depth fraction (of :data:`MOUTH_DEPTH_M`) behind the lips of :func:`mouth_texture`'s rows."""
    return np.clip((1.0 - (np.arange(size) + 0.5) / size - 0.02) / 0.96, 0.0, 1.0)


def mouth_texture(size: int = 64) -> np.ndarray:
    """(size, size, 3) sRGB oral-interior texture (row 0 is v = 1; v is the depth behind the lips)."""
    depth = _mouth_row_depth(size)
    stops = np.array([t for t, _ in _MOUTH_STOPS])
    cols = np.array([c for _, c in _MOUTH_STOPS])
    row = np.stack([np.interp(depth, stops, cols[:, k]) for k in range(3)], -1)
    return np.repeat(row[:, None], size, axis=1).clip(0.0, 1.0)


def asset_atlas(assets: FaceAssets, iris_srgb=DEFAULT_IRIS_SRGB, size: int = 256) -> np.ndarray:
    """(size, 3·size, 3) sRGB: :func:`eye_texture` | :func:`mouth_texture` | :func:`teeth_texture` side by side
    (one renderer texture; the teeth's third is black for a model without teeth)."""
    teeth = teeth_texture(assets.teeth, size) if assets.teeth is not None else np.zeros((size, size, 3))
    return np.concatenate([eye_texture(assets, iris_srgb, size), mouth_texture(size), teeth], axis=1)


# ------------------------------------------------------------------------------------- mouth occlusion
def slit_light(gap_m, depth_m) -> np.ndarray:
    """The share of an even (sky-like) light that reaches a surface ``depth_m`` behind the lips through their
    opening, ``gap_m`` high.

    The SH light of the renderer lights every surface as if nothing hid it, so the teeth behind lips a few
    millimetres apart came out white through the gap, where a photo shows them in the mouth's shadow. The mouth
    is a long horizontal slit: a surface behind it sees the sky only within α = atan(gap / (2·depth)) of the
    slit's normal, and the cosine-weighted share of the hemisphere inside such a wedge is
    sin α = gap / √(gap² + 4·depth²): 1 at the lips (depth 0), 0.27 for teeth 5.3 mm behind lips 3 mm apart,
    0.69 for lips 10 mm apart, 0.88 at 20 mm (a wide smile), 0 for closed lips.
    """
    g = np.maximum(np.asarray(gap_m, np.float64), 0.0)
    d = np.maximum(np.asarray(depth_m, np.float64), 0.0)
    return np.where(d > 0.0, g / np.sqrt(np.maximum(g * g + 4.0 * d * d, 1e-18)), 1.0)


def mouth_light(assets: FaceAssets, gap_m: float, size: int) -> tuple[np.ndarray, float]:
    """The occlusion of the mouth for lips ``gap_m`` apart (:func:`slit_light`): ``(rows, teeth)``, the (size,)
    factor on :func:`mouth_texture`'s rows (by their depth) and the teeth's (at ``teeth_depth_m``); both
    multiply linear colour."""
    rows = slit_light(gap_m, _mouth_row_depth(size) * MOUTH_DEPTH_M)
    return rows, float(slit_light(gap_m, assets.teeth_depth_m))


def atlas_light(assets: FaceAssets, gaps_m: np.ndarray, size: int) -> np.ndarray:
    """(B, size, 3·size) factors on :func:`asset_atlas` (linear colour) for (B,) lip gaps: 1 on the eyes,
    :func:`mouth_light` on the mouth and the teeth."""
    gaps = np.atleast_1d(np.asarray(gaps_m, np.float64))
    out = np.ones((len(gaps), size, 3 * size))
    for b, gap in enumerate(gaps):
        rows, teeth = mouth_light(assets, float(gap), size)
        out[b, :, size : 2 * size] = rows[:, None]
        out[b, :, 2 * size :] = teeth
    return out


def atlas_corner_uv(model: geo.FaceModelArrays) -> tuple[np.ndarray, np.ndarray]:
    """Per-face material and atlas coordinates for :func:`asset_atlas`.

    Returns:
        material: (F,) int: 0 skin (the albedo map), 1 eyes, 2 mouth; uv: (F, 3, 2) atlas coordinates (zero on
        skin). Eye coordinates lie in the atlas' left third, the mouth's in its middle third (the teeth's,
        :func:`teeth_atlas_uv`, in its right third).
    """
    a = face_assets(model)
    material = np.zeros(len(model.faces), np.int64)
    uv = np.zeros((len(model.faces), 3, 2), np.float32)
    material[a.eye_faces] = 1
    uv[a.eye_faces] = np.stack([a.eye_uv[..., 0] / 3.0, a.eye_uv[..., 1]], -1)
    material[a.mouth_faces] = 2
    uv[a.mouth_faces] = np.stack([(1.0 + a.mouth_uv[..., 0]) / 3.0, a.mouth_uv[..., 1]], -1)
    return material, uv


def teeth_atlas_uv(teeth: Teeth) -> np.ndarray:
    """(Ft, 3, 2) :func:`asset_atlas` coordinates of the teeth triangles' corners (material 3)."""
    uv = teeth.uv[teeth.faces]
    return np.stack([(2.0 + uv[..., 0]) / 3.0, uv[..., 1]], -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- albedo
def iris_colour(model: geo.FaceModelArrays, albedo_srgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """The iris colour an albedo map holds at the eyes' lid openings, or the default.

    The albedo pipelines put the eye where the skin layout has the lid opening (generated maps learned it from
    the painted synthetic albedo; /reconstruct unwraps the photo's eye there). Inside each iris disc the
    texels between the 15th and the 55th luminance percentile (leaving out pupil and lashes below, sclera and
    highlights above) give a median colour; it is used when it is an iris colour: darker than sclera
    (luminance ≤ 0.45) and not black (≥ 0.04), else :data:`DEFAULT_IRIS_SRGB`.

    Args:
        albedo_srgb: (H, W, 3) sRGB albedo in [0, 1] in the model's UV layout (row 0 is v = 1).

    Returns:
        ``(iris_srgb (3,), measured)``: the colour and whether it came from the map.
    """
    a = face_assets(model)
    img = np.asarray(albedo_srgb, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"albedo_srgb: expected (H, W, 3), got {img.shape}")
    samples = [img[rows, cols] for rows, cols in _iris_discs(a, *img.shape[:2])]
    if not samples or sum(len(s) for s in samples) < 4:
        return np.array(DEFAULT_IRIS_SRGB), False
    px = np.concatenate(samples)
    lum = px @ LUMA
    lo, hi = np.percentile(lum, [15, 55])
    band = px[(lum >= lo) & (lum <= hi)]
    colour = np.median(band if len(band) else px, axis=0)
    y = float(colour @ LUMA)
    if not 0.04 <= y <= 0.45:
        return np.array(DEFAULT_IRIS_SRGB), False
    return np.clip(colour, 0.0, 1.0), True


IRIS_HUE_BAND = (5.0, 35.0)  # see IRIS_LEVEL_BAND
IRIS_LEVEL_BAND = (20.0, 50.0)
"""(With IRIS_HUE_BAND.) Luminance percentiles of a photo's eye-opening pixels that :func:`photo_iris_colour`
reads the iris's hue and its level from: below them the pupil and the lash line, above them the lids and the
sclera. Chosen on synthetic renders of known iris colour (stream 20261125, the localiser's eye contours):
``benchmarks/iris_colour.py --seed 20261125 --bands``; the benchmark's default stream is another."""
IRIS_LUMINANCE = (0.10, 0.45)
"""sRGB luminance range of a painted iris (:func:`paint_iris`): within what :func:`iris_colour` accepts; the lower
bound is about the darkest brown irises' and keeps the pupil (0.02) visible on them (the face-assets benchmark's
pupil check): a photo's eyes sit in the lids' and brows' shade, and 013's dark eyes measure near black."""
_EYE_LANDMARKS = (slice(36, 42), slice(42, 48))  # the 68-point layout's two eye contours


def eye_pixels(image: np.ndarray, landmarks: np.ndarray, shrink: float = 1.0) -> np.ndarray:
    """(N, C) the pixels of ``image`` (H, W, C) whose centres (integer coordinates) lie inside the two eye contours of
    its (68, 2) landmarks, each contour scaled by ``shrink`` about its centre (below 1: the lid margins left out)."""
    H, W = image.shape[:2]
    pixels = []
    for part in _EYE_LANDMARKS:
        contour = landmarks[part]
        centre = contour.mean(0)
        contour = centre + shrink * (contour - centre)
        x0, y0 = np.maximum(np.floor(contour.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(contour.max(0)).astype(int), [W - 1, H - 1])
        if x1 < x0 or y1 < y0:
            continue
        yy, xx = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
        inside = geo.inside_polygon(np.stack([xx.ravel(), yy.ravel()], 1), contour)
        pixels.append(image[yy.ravel()[inside], xx.ravel()[inside]])
    return np.concatenate(pixels) if pixels else np.zeros((0, *image.shape[2:]))


def photo_iris_colour(image_srgb: np.ndarray, landmarks: np.ndarray, min_pixels: int = 12) -> np.ndarray | None:
    """The iris colour (sRGB) a photo shows between the lids of its 68 landmarks' eyes, or None.

    The pixels inside both eye contours (36–41, 42–47; each shrunk to 85 % about its centre, so the lid margins
    stay out) are sorted by luminance; the iris has the hue of the median colour of the :data:`IRIS_HUE_BAND`
    percentiles and the (linear) luminance of the :data:`IRIS_LEVEL_BAND`'s: the darkest are pupil and lashes, the
    bright half sclera and lid. The eye-opening texels of an unwrapped photo (what :func:`iris_colour` reads)
    rarely hold it: a fitted opening a pixel or two off the photo's holds the lids, and generated maps hold the
    generator's eyes. None with fewer than ``min_pixels`` pixels (eyes closed, turned away, too small).

    Args:
        image_srgb: (H, W, 3) the photo, uint8 or floats in [0, 1].
        landmarks: (68, 2) its landmarks (x, y) in pixels.
    """
    img = np.asarray(image_srgb)
    img = img / 255.0 if img.dtype == np.uint8 else np.asarray(img, np.float64)
    points = np.asarray(landmarks, np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or points.shape != (68, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"image_srgb (H, W, 3) and landmarks (68, 2) expected, got {img.shape}, {points.shape}")
    px = eye_pixels(img, points, 0.85)
    if len(px) < min_pixels:
        return None
    luma = px @ LUMA

    def band(percentiles: tuple[float, float]) -> np.ndarray:
        lo, hi = np.percentile(luma, percentiles)
        return color.srgb_to_linear(np.median(px[(luma >= lo) & (luma <= hi)], axis=0))

    hue, level = band(IRIS_HUE_BAND), band(IRIS_LEVEL_BAND)
    return color.linear_to_srgb(np.clip(hue * (float(level @ LUMA) / max(float(hue @ LUMA), 1e-6)), 0.0, 1.0))


def paint_iris(model: geo.FaceModelArrays, albedo_srgb: np.ndarray, iris_srgb: np.ndarray) -> np.ndarray:
    """A copy of an sRGB albedo map with the eyes' iris discs of the skin layout (where :func:`iris_colour` reads)
    set to ``iris_srgb``, its luminance brought within :data:`IRIS_LUMINANCE` (hue kept; a near-black colour's hue,
    mostly noise, blended towards the default brown). Those texels sit under the eyeballs: the skin never shows
    them, only the exported iris colour changes."""
    a = face_assets(model)
    out = np.array(albedo_srgb, dtype=np.float64, copy=True)
    colour = check_iris(np.clip(iris_srgb, 0.0, 1.0))
    y = float(colour @ LUMA)
    lo, hi = IRIS_LUMINANCE
    if y > hi:
        colour = colour * (hi / y)
    elif y < lo:  # a near-black measurement has no reliable hue: towards the default brown at the lowest level
        brown = np.array(DEFAULT_IRIS_SRGB) * (lo / float(np.array(DEFAULT_IRIS_SRGB) @ LUMA))
        t = y / lo
        colour = t * colour * (lo / max(y, 1e-6)) + (1.0 - t) * brown
    colour = np.clip(colour, 0.0, 1.0)
    for rows, cols in _iris_discs(a, *out.shape[:2]):
        out[rows, cols] = colour
    return out


def _iris_discs(a: FaceAssets, H: int, W: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of the texels of an (H, W) map inside each eye's iris disc of the skin layout."""
    discs = []
    for (cu, cv), r in zip(a.iris_uv, a.iris_uv_radius, strict=True):
        if r <= 0:
            continue
        cols = np.arange(int(np.floor((cu - r) * W)), int(np.ceil((cu + r) * W)) + 1)
        rows = np.arange(int(np.floor((1 - cv - r) * H)), int(np.ceil((1 - cv + r) * H)) + 1)
        cc, rr = np.meshgrid(cols, rows)
        inside = ((cc + 0.5) / W - cu) ** 2 + ((1 - (rr + 0.5) / H) - cv) ** 2 <= r * r
        discs.append((np.clip(rr[inside], 0, H - 1), cc[inside] % W))
    return discs


def fill_neck(model: geo.FaceModelArrays, albedo: np.ndarray) -> np.ndarray:
    """The albedo with the neck below the neck line one uniform skin colour, faded in over the rows above.

    Generated maps never learned the texels around the neck opening (they were outside the layout's skin
    when the bundle trained) and photos rarely show them; the cylindrical layout also folds there (the neck's
    front passes the vertical axis). Below :attr:`FaceAssets.neck_v` every texel takes the median colour of
    the front half of the rows just above the line; over the next ``2 · NECK_MARGIN_V`` of v the map fades
    from that colour back to its own.

    Args:
        albedo: (H, W, C) map in the model's UV layout (row 0 is v = 1).

    Returns:
        A new array of the same shape and dtype (unchanged when the model has no open neck boundary).
    """
    a = face_assets(model)
    out = np.array(albedo, copy=True)
    if a.neck_v is None:
        return out
    H, W = out.shape[:2]
    v = 1.0 - (np.arange(H) + 0.5) / H
    fade_top = a.neck_v + 2.0 * NECK_MARGIN_V
    ref_rows = (v >= a.neck_v) & (v <= fade_top)
    if not ref_rows.any():
        return out
    u = (np.arange(W) + 0.5) / W
    ref = out[ref_rows][:, (u > 0.3) & (u < 0.7)].reshape(-1, *out.shape[2:]).astype(np.float64)
    lum = ref.mean(-1) if ref.ndim == 2 else ref
    skin = lum > np.percentile(lum, 10)  # leave out texels outside the skin (black in generated maps)
    ref = ref[skin] if skin.any() else ref  # a uniform map has no darker tenth: its median is its colour
    colour = np.median(ref, axis=0)
    weight = np.clip((fade_top - v) / (fade_top - a.neck_v), 0.0, 1.0)  # 1 at and below the line
    weight = weight * weight * (3.0 - 2.0 * weight)
    w = weight.reshape(H, *([1] * (out.ndim - 1)))
    blended = out.astype(np.float64) * (1.0 - w) + colour * w
    return blended.astype(out.dtype) if out.dtype.kind == "f" else np.rint(blended).astype(out.dtype)


# ---------------------------------------------------------------------------------------------- export
# The export textures depend only on the model's assets, the iris colour (quantised to what an 8-bit PNG keeps)
# and the size; they and their PNGs cost ~0.2 s per mesh, so the last few are kept (values, not views: read-only).
_EXPORT_CACHE: OrderedDict[tuple, tuple[object, np.ndarray | bytes]] = OrderedDict()
_EXPORT_CACHE_ENTRIES = 16


def _export_cached(key: tuple, owner: object, make) -> np.ndarray | bytes:
    """``make()`` once per ``key`` while ``owner`` (kept alive by the entry, so its id is not reused) is cached."""
    hit = _EXPORT_CACHE.get(key)
    if hit is not None and hit[0] is owner:
        _EXPORT_CACHE.move_to_end(key)
        return hit[1]
    value = make()
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    _EXPORT_CACHE[key] = (owner, value)
    while len(_EXPORT_CACHE) > _EXPORT_CACHE_ENTRIES:
        _EXPORT_CACHE.popitem(last=False)
    return value


def _texture_png(texture: np.ndarray) -> bytes:
    return _export_cached(("png", id(texture)), texture, lambda: formats.albedo_png(texture))


@dataclass(frozen=True, eq=False)
class ExportPart:
    """One extra primitive of an exported face: its mesh, material name, texture and vertex source.

    Attributes:
        name: material / primitive name (``eyes``, ``mouth``).
        mesh: the primitive's mesh (its own vertices and texture coordinates).
        texture_srgb: (S, S, 3) its base-colour texture in [0, 1].
        vertex: (N,) coarse vertex of each mesh vertex (for morph targets: ``expr_basis[:, vertex]``).
        roughness: glTF roughness of the material (the wet eye and mouth are glossier than skin).
        morph_basis: (E, N, 3) the part's own expression deltas where they are not ``expr_basis[:, vertex]``
            (the teeth: :meth:`Teeth.deltas`), else None.
        colour_factor: on the texture's linear colour, as the material's base-colour factor (the teeth's
            :func:`mouth_light`: a factor, not a re-encoded 512² texture per lip gap).
    """

    name: str
    mesh: geo.MeshData
    texture_srgb: np.ndarray
    vertex: np.ndarray
    roughness: float
    morph_basis: np.ndarray | None = None
    colour_factor: float = 1.0


def _part_mesh(
    model: geo.FaceModelArrays, positions: np.ndarray, normals: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray
) -> tuple[geo.MeshData, np.ndarray]:
    """A part's mesh from per-coarse-vertex positions/normals (V, 3): one vertex per (vertex, uv) pair."""
    corners = model.faces[faces]  # (Fp, 3)
    key = np.concatenate([corners.reshape(-1, 1).astype(np.float64), np.round(corner_uv.reshape(-1, 2), 6)], 1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    vertex = uniq[:, 0].astype(np.int64)
    mesh = geo.MeshData(
        positions[vertex].astype(np.float32),
        normals[vertex].astype(np.float32),
        uniq[:, 1:].astype(np.float32),
        inverse.reshape(-1, 3).astype(np.int64),
    )
    return mesh, vertex


def export_parts(
    model: geo.FaceModelArrays, positions: np.ndarray, normals: np.ndarray, iris_srgb=DEFAULT_IRIS_SRGB,
    eye_size: int = 512,
    verts: np.ndarray | None = None,
    shape: np.ndarray | None = None,
) -> list[ExportPart]:  # fmt: skip
    """The ``eyes`` and ``mouth`` primitives from per-coarse-vertex ``positions`` and ``normals`` (V, 3), and
    the ``teeth`` (:class:`Teeth`) when ``verts`` (V, 3), the coarse vertices the positions came from, is given
    (the teeth are made from vertices the detailed mesh resamples). With ``verts`` the mouth's texture and the
    teeth's colour factor are darkened for how far their lips are apart (:func:`mouth_light`), as a photo shows
    them; with ``shape`` (the head's identity code) the teeth are fitted behind its lips (:func:`head_teeth`)."""
    a = face_assets(model)
    step, rows, teeth_light = None, np.ones(64), 1.0
    if verts is not None:  # the lip gap in steps of GAP_STEP_M, so that the darkened mouth textures (PNGs) are shared
        step = int(round(float(lips.vertex_lip_gap(model, np.asarray(verts)[None])[0]) / GAP_STEP_M))
        rows, teeth_light = mouth_light(a, step * GAP_STEP_M, 64)
    parts = []
    mesh, vertex = _part_mesh(model, positions, normals, a.eye_faces, a.eye_uv)
    iris = tuple(np.round(check_iris(iris_srgb) * 255.0) / 255.0)
    eyes = _export_cached(("eyes", id(a), iris, eye_size), a, lambda: eye_texture(a, iris, eye_size))
    parts.append(ExportPart("eyes", mesh, eyes, vertex, 0.15))
    if len(a.mouth_faces):
        mesh, vertex = _part_mesh(model, positions, normals, a.mouth_faces, a.mouth_uv)
        texture = _export_cached(("mouth", 64, step), None, lambda: _lit(mouth_texture(64), rows[:, None, None]))
        parts.append(ExportPart("mouth", mesh, texture, vertex, 0.5))
    if verts is not None and a.teeth is not None:
        parts.append(teeth_part(model, verts, teeth_light, shape))
    return parts


def _lit(texture_srgb: np.ndarray, factor) -> np.ndarray:
    """An sRGB texture with its linear colour times ``factor``."""
    return color.linear_to_srgb(color.srgb_to_linear(texture_srgb) * factor).clip(0.0, 1.0)


def teeth_part(
    model: geo.FaceModelArrays, verts: np.ndarray, light: float = 1.0, shape: np.ndarray | None = None
) -> ExportPart:
    """The ``teeth`` primitive (:class:`Teeth`, fitted to the head of identity ``shape`` when given:
    :func:`head_teeth`) of the coarse vertices ``verts`` (V, 3), with its own morph basis and ``light`` (the factor
    on the texture's linear colour) as its colour factor. Raises ``ValueError`` for a model without teeth."""
    teeth = head_teeth(model, shape)
    if teeth is None:
        raise ValueError("face model: no teeth (no mouth cavity or no jaw joint)")
    pos = teeth.vertices(np.asarray(verts, np.float64))
    normals = geo.vertex_normals(pos[None], teeth.faces)[0]
    mesh = geo.MeshData(pos.astype(np.float32), normals.astype(np.float32), teeth.uv.astype(np.float32), teeth.faces)
    none = np.full(len(pos), -1, np.int64)  # no coarse vertex: the morphs are the teeth's own
    base = face_assets(model).teeth  # fitting moves the arches, not their teeth: one texture for every head
    texture = _export_cached(("teeth", id(base), 512), base, lambda: teeth_texture(base, 512))
    return ExportPart("teeth", mesh, texture, none, 0.35, teeth.deltas(model.expr_basis), float(light))


def split_detailed(
    model: geo.FaceModelArrays,
    mesh: geo.MeshData,
    resolution: int,
    iris_srgb=DEFAULT_IRIS_SRGB,
    verts: np.ndarray | None = None,
    shape: np.ndarray | None = None,
) -> tuple[geo.MeshData, np.ndarray, list[ExportPart]]:
    """Split a :func:`facecore.geometry.detailed_mesh` into the skin and the eye / mouth primitives.

    The detailed mesh appends the coarse triangles it does not subdivide (eyeballs, mouth cavity, the skin
    inside the mouth) with their coarse vertices; those leave the skin and become :func:`export_parts`.

    Returns:
        ``(skin, keep, parts)``: the skin mesh, ``keep`` (N',) the detailed-mesh vertex each skin vertex came
        from (index morph targets from :func:`facecore.geometry.detailed_vertex_field` with it), and the parts.
    """
    a = face_assets(model)
    s = geo.mesh_sampling(model, resolution)
    n_points, n_point_faces = len(s.face), len(s.faces)
    kept_uv = geo.kept_uv_vertices(model, s)
    if len(mesh.positions) != n_points + len(kept_uv):
        raise ValueError(f"mesh: not a detailed_mesh of this model at resolution {resolution}")
    positions = np.zeros((model.n_verts, 3), np.float32)
    normals = np.zeros((model.n_verts, 3), np.float32)
    positions[model.uv_vertex[kept_uv]] = mesh.positions[n_points:]
    normals[model.uv_vertex[kept_uv]] = mesh.normals[n_points:]
    drop = np.zeros(len(mesh.faces), bool)
    drop[n_point_faces:] = np.isin(s.kept_faces, np.concatenate([a.eye_faces, a.mouth_faces]))
    faces = mesh.faces[~drop]
    keep = np.unique(faces)
    remap = np.full(len(mesh.positions), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    skin = geo.MeshData(mesh.positions[keep], mesh.normals[keep], mesh.uv[keep], remap[faces])
    parts = export_parts(model, positions, normals, iris_srgb, verts=verts, shape=shape)
    return skin, keep, parts


def export_primitives(
    model: geo.FaceModelArrays,
    mesh: geo.MeshData,
    resolution: int,
    albedo_srgb: np.ndarray,
    morph_targets: dict[str, np.ndarray] | None = None,
    verts: np.ndarray | None = None,
    shape: np.ndarray | None = None,
) -> tuple[geo.MeshData, dict[str, np.ndarray] | None, list[formats.MaterialPart], np.ndarray]:
    """What the OBJ / GLB writers need for a face with its eyes and mouth as their own primitives.

    Args:
        mesh: the detailed mesh (:func:`facecore.geometry.detailed_mesh` at ``resolution``).
        albedo_srgb: (H, W, 3) the skin albedo (the iris colour is read from it, :func:`iris_colour`).
        morph_targets: name → (N, 3) deltas over ``mesh`` (e.g. the expression basis), or None.
        verts: (V, 3) the coarse vertices ``mesh`` was made from: with them, the teeth are a primitive too.
        shape: (K,) the head's identity code: its teeth fitted behind its lips (:func:`head_teeth`).

    Returns:
        ``(skin, skin_morph_targets, parts, iris_srgb)`` for ``formats.obj_files`` / ``formats.glb_bytes``.
    """
    iris, _ = iris_colour(model, albedo_srgb)
    skin, keep, parts = split_detailed(model, mesh, resolution, iris, verts, shape)
    skin_targets = None if morph_targets is None else {k: np.asarray(d)[keep] for k, d in morph_targets.items()}
    index = {n: i for i, n in enumerate(model.expr_names)}
    out = []
    for part in parts:
        targets = None
        if morph_targets is not None:
            targets = {}
            for k in morph_targets:
                if k not in index:
                    raise ValueError(f"morph_targets: {k!r} is not an expression of the face model")
                basis = part.morph_basis[index[k]] if part.morph_basis is not None else None
                targets[k] = (basis if basis is not None else model.expr_basis[index[k]][part.vertex]).astype(
                    np.float32
                )
        out.append(
            formats.MaterialPart(
                part.name, part.mesh, _texture_png(part.texture_srgb), part.roughness, targets, part.colour_factor
            )
        )
    return skin, skin_targets, out, iris
