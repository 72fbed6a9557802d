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
* **Neck** — :func:`fill_neck` extends the skin colour just above the neck opening down to it, so the
  neck ends cleanly in every albedo (generated maps never learned texels there; photos rarely show them).

Consumers: ``models.render.MeshRenderer.from_face_model`` (training, synthetic renders, benchmarks: the
eye and mouth textures side by side in one atlas, :func:`asset_atlas`), ``service.pipeline`` (GLB / OBJ+MTL
with separate ``eyes`` and ``mouth`` primitives and materials, :func:`export_parts`) and the viewer (shows
the GLB's materials). numpy only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facecore import formats
from facecore import geometry as geo

EYE_PARTS = ("eyeball_left", "eyeball_right")
MOUTH_PART = "mouth_interior"
DEFAULT_IRIS_SRGB = (0.38, 0.25, 0.14)  # hazel brown: the commonest iris colour, used when none is measured
SCLERA_SRGB = (0.86, 0.83, 0.79)
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
    mouth = _part(model, MOUTH_PART)
    if len(mouth):
        mouth = np.union1d(mouth, _inner_mouth_skin(model, mean))
        mv = mean[model.faces[mouth]]  # (Fm, 3, 3)
        z_lip = mv[..., 2].max()
        half = max(float(np.abs(mv[..., 0]).max()), 1e-6)
        depth = np.clip((z_lip - mv[..., 2]) / MOUTH_DEPTH_M, 0.0, 1.0)
        mouth_uv = np.stack([0.5 + 0.45 * mv[..., 0] / half, 0.02 + 0.96 * depth], -1)
    else:
        mouth_uv = np.zeros((0, 3, 2))
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
    )


def _inner_mouth_skin(model: geo.FaceModelArrays, mean: np.ndarray, size: int = 512) -> np.ndarray:
    """Skin triangles inside the mouth: between the mouth corners, the chin and the upper lip, behind the lips
    and hidden at rest from the front (the floor of the mouth and the lips' inner sides, which the cylindrical
    layout folds under the lips' own texels, so they would show lip colour when the jaw opens)."""
    skin = np.flatnonzero(model.face_part == 0)
    centre = mean[model.faces[skin]].mean(1)
    lm = geo.landmarks_3d(model, mean[None])[0]
    half = 0.5 * abs(lm[54, 0] - lm[48, 0]) + 0.004
    near = (np.abs(centre[:, 0] - 0.5 * (lm[48, 0] + lm[54, 0])) < half) & (centre[:, 2] < lm[48:68, 2].max())
    near &= (centre[:, 1] > lm[8, 1] + 0.008) & (centre[:, 1] < lm[51, 1])
    # orthographic z-buffer of the rest head seen from the front
    origin = mean[:, :2].min(0)
    scale = (size - 1) / max(float((mean[:, :2].max(0) - origin).max()), 1e-9)
    px = (mean[:, :2] - origin) * scale
    px[:, 1] = size - 1 - px[:, 1]
    node, tri, bary = geo.rasterize_nodes(px[model.faces], mean[model.faces, 2], size, size)
    zbuf = np.full(size * size, -np.inf)
    zbuf[node] = np.einsum("nk,nk->n", bary, mean[model.faces[tri], 2])
    at = np.clip(np.rint(px[model.faces[skin]].mean(1)).astype(np.int64), 0, size - 1)
    hidden = centre[:, 2] < zbuf[at[:, 1] * size + at[:, 0]] - 0.001
    return skin[near & hidden]


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


def mouth_texture(size: int = 64) -> np.ndarray:
    """(size, size, 3) sRGB oral-interior texture (row 0 is v = 1; v is the depth behind the lips)."""
    depth = (1.0 - (np.arange(size) + 0.5) / size - 0.02) / 0.96  # row → depth fraction
    stops = np.array([t for t, _ in _MOUTH_STOPS])
    cols = np.array([c for _, c in _MOUTH_STOPS])
    row = np.stack([np.interp(depth, stops, cols[:, k]) for k in range(3)], -1)
    return np.repeat(row[:, None], size, axis=1).clip(0.0, 1.0)


def asset_atlas(assets: FaceAssets, iris_srgb=DEFAULT_IRIS_SRGB, size: int = 256) -> np.ndarray:
    """(size, 2·size, 3) sRGB: :func:`eye_texture` | :func:`mouth_texture` side by side (one renderer texture)."""
    return np.concatenate([eye_texture(assets, iris_srgb, size), mouth_texture(size)], axis=1)


def atlas_corner_uv(model: geo.FaceModelArrays) -> tuple[np.ndarray, np.ndarray]:
    """Per-face material and atlas coordinates for :func:`asset_atlas`.

    Returns:
        material: (F,) int: 0 skin (the albedo map), 1 eyes, 2 mouth; uv: (F, 3, 2) atlas coordinates (zero on
        skin). Eye coordinates lie in the atlas' left half, the mouth's in its right half.
    """
    a = face_assets(model)
    material = np.zeros(len(model.faces), np.int64)
    uv = np.zeros((len(model.faces), 3, 2), np.float32)
    material[a.eye_faces] = 1
    uv[a.eye_faces] = np.stack([0.5 * a.eye_uv[..., 0], a.eye_uv[..., 1]], -1)
    material[a.mouth_faces] = 2
    uv[a.mouth_faces] = np.stack([0.5 + 0.5 * a.mouth_uv[..., 0], a.mouth_uv[..., 1]], -1)
    return material, uv


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
    H, W = img.shape[:2]
    samples = []
    for (cu, cv), r in zip(a.iris_uv, a.iris_uv_radius, strict=True):
        if r <= 0:
            continue
        cols = np.arange(int(np.floor((cu - r) * W)), int(np.ceil((cu + r) * W)) + 1)
        rows = np.arange(int(np.floor((1 - cv - r) * H)), int(np.ceil((1 - cv + r) * H)) + 1)
        cc, rr = np.meshgrid(cols, rows)
        inside = ((cc + 0.5) / W - cu) ** 2 + ((1 - (rr + 0.5) / H) - cv) ** 2 <= r * r
        cc, rr = cc[inside] % W, np.clip(rr[inside], 0, H - 1)
        samples.append(img[rr, cc])
    if not samples or sum(len(s) for s in samples) < 4:
        return np.array(DEFAULT_IRIS_SRGB), False
    px = np.concatenate(samples)
    lum = px @ np.array([0.2126, 0.7152, 0.0722])
    lo, hi = np.percentile(lum, [15, 55])
    band = px[(lum >= lo) & (lum <= hi)]
    colour = np.median(band if len(band) else px, axis=0)
    y = float(colour @ np.array([0.2126, 0.7152, 0.0722]))
    if not 0.04 <= y <= 0.45:
        return np.array(DEFAULT_IRIS_SRGB), False
    return np.clip(colour, 0.0, 1.0), True


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
@dataclass(frozen=True, eq=False)
class ExportPart:
    """One extra primitive of an exported face: its mesh, material name, texture and vertex source.

    Attributes:
        name: material / primitive name (``eyes``, ``mouth``).
        mesh: the primitive's mesh (its own vertices and texture coordinates).
        texture_srgb: (S, S, 3) its base-colour texture in [0, 1].
        vertex: (N,) coarse vertex of each mesh vertex (for morph targets: ``expr_basis[:, vertex]``).
        roughness: glTF roughness of the material (the wet eye and mouth are glossier than skin).
    """

    name: str
    mesh: geo.MeshData
    texture_srgb: np.ndarray
    vertex: np.ndarray
    roughness: float


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
    exclude: np.ndarray | None = None,
) -> list[ExportPart]:  # fmt: skip
    """The ``eyes`` and ``mouth`` primitives from per-coarse-vertex ``positions`` and ``normals`` (V, 3)."""
    a = face_assets(model)
    parts = []
    mesh, vertex = _part_mesh(model, positions, normals, a.eye_faces, a.eye_uv)
    parts.append(ExportPart("eyes", mesh, eye_texture(a, iris_srgb, eye_size), vertex, 0.15))
    keep = np.ones(len(a.mouth_faces), bool) if exclude is None else ~np.isin(a.mouth_faces, exclude)
    if keep.any():
        mesh, vertex = _part_mesh(model, positions, normals, a.mouth_faces[keep], a.mouth_uv[keep])
        parts.append(ExportPart("mouth", mesh, mouth_texture(64), vertex, 0.5))
    return parts


def split_detailed(
    model: geo.FaceModelArrays, mesh: geo.MeshData, resolution: int, iris_srgb=DEFAULT_IRIS_SRGB
) -> tuple[geo.MeshData, np.ndarray, list[ExportPart]]:
    """Split a :func:`facecore.geometry.detailed_mesh` into the skin and the eye / mouth primitives.

    The detailed mesh appends the coarse triangles its UV grid does not cover (eyeballs, mouth, folds) with
    their coarse vertices; the eye and mouth triangles leave the skin and become :func:`export_parts`.

    Returns:
        ``(skin, keep, parts)``: the skin mesh, ``keep`` (N',) the detailed-mesh vertex each skin vertex came
        from (index morph targets from :func:`facecore.geometry.detailed_vertex_field` with it), and the parts.
    """
    a = face_assets(model)
    s = geo.uv_sampling(model, resolution)
    n_grid_verts, n_grid_faces = len(s.face), len(s.faces)
    hidden_uv = np.unique(model.uv_faces[s.hidden_faces])  # the order detailed_mesh appends them in
    if len(mesh.positions) != n_grid_verts + len(hidden_uv):
        raise ValueError(f"mesh: not a detailed_mesh of this model at resolution {resolution}")
    positions = np.zeros((model.n_verts, 3), np.float32)
    normals = np.zeros((model.n_verts, 3), np.float32)
    positions[model.uv_vertex[hidden_uv]] = mesh.positions[n_grid_verts:]
    normals[model.uv_vertex[hidden_uv]] = mesh.normals[n_grid_verts:]
    drop = np.zeros(len(mesh.faces), bool)
    drop[n_grid_faces:] = np.isin(s.hidden_faces, np.concatenate([a.eye_faces, a.mouth_faces]))
    # mouth triangles the UV grid covers stay in the skin (they own texels), the others move to the mouth
    in_skin = np.isin(a.mouth_faces, s.hidden_faces, invert=True) & (model.face_part[a.mouth_faces] == 0)
    faces = mesh.faces[~drop]
    keep = np.unique(faces)
    remap = np.full(len(mesh.positions), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    skin = geo.MeshData(mesh.positions[keep], mesh.normals[keep], mesh.uv[keep], remap[faces])
    return skin, keep, export_parts(model, positions, normals, iris_srgb, exclude=a.mouth_faces[in_skin])


def export_primitives(
    model: geo.FaceModelArrays,
    mesh: geo.MeshData,
    resolution: int,
    albedo_srgb: np.ndarray,
    morph_targets: dict[str, np.ndarray] | None = None,
) -> tuple[geo.MeshData, dict[str, np.ndarray] | None, list[formats.MaterialPart], np.ndarray]:
    """What the OBJ / GLB writers need for a face with its eyes and mouth as their own primitives.

    Args:
        mesh: the detailed mesh (:func:`facecore.geometry.detailed_mesh` at ``resolution``).
        albedo_srgb: (H, W, 3) the skin albedo (the iris colour is read from it, :func:`iris_colour`).
        morph_targets: name → (N, 3) deltas over ``mesh`` (e.g. the expression basis), or None.

    Returns:
        ``(skin, skin_morph_targets, parts, iris_srgb)`` for ``formats.obj_files`` / ``formats.glb_bytes``.
    """
    iris, _ = iris_colour(model, albedo_srgb)
    skin, keep, parts = split_detailed(model, mesh, resolution, iris)
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
                targets[k] = model.expr_basis[index[k]][part.vertex].astype(np.float32)
        out.append(
            formats.MaterialPart(part.name, part.mesh, formats.albedo_png(part.texture_srgb), part.roughness, targets)
        )
    return skin, skin_targets, out, iris
