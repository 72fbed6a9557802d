"""Face-model arrays and numpy geometry: codes → vertices, normals and the detailed (displaced) mesh.

This module is the single definition of the face-model file schema (``face_model.npz``). Training reads it
through :class:`models.face.FaceModel` (torch); the service decodes it here with numpy only. Both must agree
(``tests/models/test_face_model.py`` checks parity).

Conventions (right-handed, metres): +y up, +z out of the face (the face looks along +z), +x towards the
subject's left. Pose is axis-angle per joint, applied by linear blend skinning around shape-dependent joint
centres; the first joint is the root ("global") rotation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MOUTH_PART = "mouth_interior"  # the face-model part of the oral cavity
N_LANDMARKS = 68

# Arrays stored in the npz, with (dtype kind, shape spec); letters are symbolic sizes checked for consistency.
_ARRAY_SPECS: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "mean": ("f", ("V", 3)),
    "shape_basis": ("f", ("K", "V", 3)),
    "shape_prior_mean": ("f", ("K",)),
    "shape_prior_chol": ("f", ("K", "K")),
    "expr_basis": ("f", ("E", "V", 3)),
    "faces": ("i", ("F", 3)),
    "face_part": ("i", ("F",)),
    "uv": ("f", ("T", 2)),
    "uv_faces": ("i", ("F", 3)),
    "uv_vertex": ("i", ("T",)),
    "landmark_faces": ("i", (N_LANDMARKS,)),
    "landmark_bary": ("f", (N_LANDMARKS, 3)),
    "joint_parents": ("i", ("J",)),
    "joint_regressor": ("f", ("J", "V")),
    "lbs_weights": ("f", ("V", "J")),
    "joint_limits": ("f", ("J", 3, 2)),
}
_NAME_LISTS = ("expr_names", "joint_names", "part_names")


@dataclass(frozen=True, eq=False)
class FaceModelArrays:
    """All arrays of a linear morphable face model (the ``face_model.npz`` schema).

    Shapes: V vertices, K identity components, E expression blendshapes, F triangles, T UV vertices,
    J joints.

    Attributes:
        mean: (V, 3) neutral mean head, metres.
        shape_basis: (K, V, 3) identity basis; coefficient units are standard deviations of the wide
            sampling the basis was built from (so the span is wide and a coefficient of 3 is unusual but legal).
        shape_prior_mean: (K,) mean of the *generation prior* (plausible adult heads) in basis coordinates.
        shape_prior_chol: (K, K) lower Cholesky factor of the generation prior's covariance.
        expr_basis: (E, V, 3) expression blendshapes; a weight of 1 is the full action.
        expr_names: E names (ARKit names where they exist).
        faces: (F, 3) triangles, counter-clockwise seen from outside.
        face_part: (F,) index into ``part_names`` (``skin`` is part 0; eyeballs etc. follow).
        part_names: names of the parts.
        uv: (T, 2) texture coordinates in [0, 1], v up (OBJ/OpenGL convention).
        uv_faces: (F, 3) triangles into ``uv``.
        uv_vertex: (T,) geometry vertex of each UV vertex (seam vertices are duplicated in UV space).
        landmark_faces: (68,) triangle of each iBUG-68 landmark.
        landmark_bary: (68, 3) barycentric coordinates of each landmark in its triangle.
        joint_names: J names; joint 0 is the root ("global").
        joint_parents: (J,) parent index, -1 for the root; parents precede children.
        joint_regressor: (J, V) joint centres as linear combinations of the (unposed) vertices.
        lbs_weights: (V, J) skinning weights, rows sum to 1.
        joint_limits: (J, 3, 2) lower/upper bound of each axis-angle component.
        metadata: name, licence, source and build facts.
    """

    mean: np.ndarray
    shape_basis: np.ndarray
    shape_prior_mean: np.ndarray
    shape_prior_chol: np.ndarray
    expr_basis: np.ndarray
    expr_names: tuple[str, ...]
    faces: np.ndarray
    face_part: np.ndarray
    part_names: tuple[str, ...]
    uv: np.ndarray
    uv_faces: np.ndarray
    uv_vertex: np.ndarray
    landmark_faces: np.ndarray
    landmark_bary: np.ndarray
    joint_names: tuple[str, ...]
    joint_parents: np.ndarray
    joint_regressor: np.ndarray
    lbs_weights: np.ndarray
    joint_limits: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def n_verts(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shape_basis.shape[0])

    @property
    def n_expr(self) -> int:
        return int(self.expr_basis.shape[0])

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, path: str | Path) -> FaceModelArrays:
        """Load and validate an npz of this schema; raises ``ValueError`` naming the file and field."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"face model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/format errors carry no file name
            raise ValueError(f"{path}: not a readable face-model npz ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, np.ndarray]) -> FaceModelArrays:
        if "metadata" not in data:
            raise ValueError("missing field 'metadata'")
        metadata = json.loads(str(data["metadata"]))
        version = metadata.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"field 'metadata.schema_version' is {version!r}, this code reads {SCHEMA_VERSION}")
        kwargs: dict[str, Any] = {"metadata": metadata}
        for name in _ARRAY_SPECS:
            if name not in data:
                raise ValueError(f"missing field '{name}'")
            arr = np.asarray(data[name])
            kwargs[name] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)
        for name in _NAME_LISTS:
            if name not in data:
                raise ValueError(f"missing field '{name}'")
            kwargs[name] = tuple(str(s) for s in np.asarray(data[name]).tolist())
        model = cls(**kwargs)
        model.validate()
        return reattach_neck_band(model)

    def save(self, path: str | Path, *, float16: tuple[str, ...] = ()) -> None:
        """Write the npz; arrays named in ``float16`` are stored as float16 (others float32)."""
        self.validate()
        out: dict[str, np.ndarray] = {}
        for name in _ARRAY_SPECS:
            arr = getattr(self, name)
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float16 if name in float16 else np.float32)
            else:
                arr = arr.astype(np.int32)
            out[name] = arr
        for name in _NAME_LISTS:
            out[name] = np.array(getattr(self, name), dtype=np.str_)
        meta = dict(self.metadata, schema_version=SCHEMA_VERSION)
        out["metadata"] = np.array(json.dumps(meta, sort_keys=True))
        np.savez_compressed(Path(path), **out)

    def validate(self) -> None:
        """Check every array's dtype, shape and the cross-field invariants; raise ``ValueError`` naming the field."""
        sizes: dict[str, int] = {}
        for name, (kind, spec) in _ARRAY_SPECS.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"field '{name}' must be a numpy array, got {type(arr).__name__}")
            if arr.dtype.kind not in (("f",) if kind == "f" else ("i", "u")):
                raise ValueError(f"field '{name}' has dtype {arr.dtype}, expected {'float' if kind == 'f' else 'int'}")
            if arr.ndim != len(spec):
                raise ValueError(f"field '{name}' has shape {arr.shape}, expected {len(spec)} dims {spec}")
            for dim, want in zip(arr.shape, spec, strict=True):
                if isinstance(want, int):
                    if dim != want:
                        raise ValueError(f"field '{name}' has shape {arr.shape}, expected {spec}")
                elif sizes.setdefault(want, dim) != dim:
                    raise ValueError(
                        f"field '{name}' has shape {arr.shape}: size {want}={dim} disagrees with {sizes[want]}"
                    )
            if kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"field '{name}' contains NaN or inf")
        lists = {"expr_names": "E", "joint_names": "J"}
        for name, sym in lists.items():
            if len(getattr(self, name)) != sizes[sym]:
                raise ValueError(f"field '{name}' has {len(getattr(self, name))} names, expected {sizes[sym]}")
        if len(set(self.expr_names)) != len(self.expr_names):
            raise ValueError("field 'expr_names' has duplicates")
        V, T = sizes["V"], sizes["T"]
        for name, hi in (("faces", V), ("uv_faces", T), ("uv_vertex", V)):
            arr = getattr(self, name)
            if arr.size and (arr.min() < 0 or arr.max() >= hi):
                raise ValueError(f"field '{name}' has indices outside [0, {hi})")
        if not np.array_equal(self.uv_vertex[self.uv_faces], self.faces):
            raise ValueError("field 'uv_vertex' does not map 'uv_faces' onto 'faces'")
        if self.face_part.min() < 0 or self.face_part.max() >= len(self.part_names):
            raise ValueError("field 'face_part' has indices outside 'part_names'")
        if not self.part_names or self.part_names[0] != "skin":
            raise ValueError("field 'part_names' must start with 'skin'")
        if self.landmark_faces.min() < 0 or self.landmark_faces.max() >= sizes["F"]:
            raise ValueError("field 'landmark_faces' has indices outside the faces")
        if not np.allclose(self.landmark_bary.sum(1), 1.0, atol=1e-3):
            raise ValueError("field 'landmark_bary' rows must sum to 1")
        parents = self.joint_parents
        if parents[0] != -1 or any(not (0 <= p < j) for j, p in enumerate(parents[1:], start=1)):
            raise ValueError("field 'joint_parents' must have the root first and parents before children")
        if not np.allclose(self.lbs_weights.sum(1), 1.0, atol=1e-3):
            raise ValueError("field 'lbs_weights' rows must sum to 1")
        if np.any(self.joint_limits[..., 0] > self.joint_limits[..., 1]):
            raise ValueError("field 'joint_limits' has lower bounds above upper bounds")

    # ------------------------------------------------------------------ helpers
    def expression_vector(self, weights: dict[str, float]) -> np.ndarray:
        """(E,) expression weights from a ``{name: weight}`` dict; unknown names raise ``ValueError``."""
        out = np.zeros(self.n_expr, np.float32)
        index = {n: i for i, n in enumerate(self.expr_names)}
        for name, value in weights.items():
            if name not in index:
                raise ValueError(f"expression: unknown name {name!r}; known names: {', '.join(self.expr_names)}")
            if not np.isfinite(value):
                raise ValueError(f"expression: weight of {name!r} is not finite")
            out[index[name]] = value
        return out

    def limit_shape(self, code: np.ndarray, max_radius: float | None = None) -> np.ndarray:
        """(…, K) identity codes whose prior-whitened radius ``‖ε‖`` (``code = prior_mean + prior_chol · ε``) exceeds
        ``max_radius`` pulled back along ``ε`` onto it; None: the radius 99.9 % of the prior's own draws stay within
        (:func:`prior_radius`)."""
        code = np.asarray(code, np.float64)
        eps = (code - self.shape_prior_mean) @ _prior_whitening(self).T
        limit = prior_radius(self.n_shape) if max_radius is None else max_radius
        return pull_within(code, self.shape_prior_mean, np.linalg.norm(eps, axis=-1, keepdims=True), limit)

    def sample_shape(self, rng: np.random.Generator, n: int = 1, scale: float = 1.0) -> np.ndarray:
        """(n, K) identity codes drawn from the generation prior (``scale`` multiplies its spread)."""
        eps = rng.standard_normal((n, self.n_shape)).astype(np.float32)
        return self.shape_prior_mean[None] + scale * eps @ self.shape_prior_chol.T


def prior_radius(k: int, z: float = 3.09) -> float:
    """The radius ``‖ε‖`` of k standard normal coordinates that a fraction Φ(z) of draws stay within (z 3.09: 0.999;
    the χ² quantile by Wilson and Hilferty's cube-root approximation: within 0.3 % for k ≥ 10, 0.01 % at 150)."""
    c = 2.0 / (9.0 * k)
    return float(np.sqrt(k * (1.0 - c + z * np.sqrt(c)) ** 3))


def pull_within(code: np.ndarray, mean: np.ndarray, radius: np.ndarray, max_radius: float) -> np.ndarray:
    """``code`` moved towards ``mean`` by the factor ``max_radius / radius`` where its (…, 1) ``radius`` is larger."""
    return mean + (code - mean) * np.minimum(1.0, max_radius / np.maximum(radius, 1e-12))


def reattach_neck_band(model: FaceModelArrays) -> FaceModelArrays:
    """Give back to the skin the outer neck faces a face-model build labelled ``mouth_interior``.

    Default face models built before the fix (``models.face.build_default``) took every skin face touching a
    vertex deep inside the head for the mouth cavity; besides the mouth and throat that caught a band of outer
    neck skin under the chin, which then sampled the cavity's one texel (a pink band with skin-coloured
    notches in every render). The cavity is the ``mouth_interior`` component that holds its front-most vertex
    (the lip line); faces of that part in any other component become skin again, with the cylindrical
    coordinates every other skin vertex has (u from the angle about +y, face at 0.5; v from height over the
    whole mean mesh, 1 % margins). Idempotent; a model without such faces is returned unchanged.
    """
    if "mouth_interior" not in model.part_names:
        return model
    part = model.part_names.index("mouth_interior")
    cav = np.flatnonzero(model.face_part == part)
    if len(cav) == 0:
        return model
    faces = model.faces[cav]
    label = vertex_components(faces, model.n_verts)
    comp = label[faces[:, 0]]
    front = faces.ravel()[np.argmax(model.mean[faces.ravel(), 2])]
    stray = cav[comp != label[front]]
    if len(stray) == 0:
        return model
    mean = model.mean.astype(np.float64)
    lo, hi = float(mean[:, 1].min()), float(mean[:, 1].max())
    corner_v = model.faces[stray]  # (S, 3)
    p = mean[corner_v]
    u = np.arctan2(p[..., 0], p[..., 2]) / (2.0 * np.pi) + 0.5
    v = 0.01 + 0.98 * (p[..., 1] - lo) / max(hi - lo, 1e-12)
    # a triangle straddling the seam gets its corners on the majority's side, except corners far from the
    # seam (near the vertical axis), exactly as the layout's builder (models.face.uv.cylindrical_uv) does
    wrap = (np.ptp(u, axis=1) > 0.5)[:, None]
    high = ((u > 0.5).sum(1) >= 2)[:, None]
    far = (u >= 0.25) & (u <= 0.75)
    u = np.where(wrap & high & (u < 0.5) & ~far, u + 1.0, u)
    u = np.where(wrap & ~high & (u > 0.5) & ~far, u - 1.0, u)
    corner_uv = np.stack([u, v], -1).reshape(-1, 2).astype(np.float32)
    # reuse a UV vertex of the same geometry vertex at the same place, else append one
    uv, uv_vertex = model.uv, model.uv_vertex
    rounded = np.round(uv, 5)
    known = {(int(g), float(c[0]), float(c[1])): t for t, (g, c) in enumerate(zip(uv_vertex, rounded, strict=True))}
    new_uv: list[np.ndarray] = []
    new_vertex: list[int] = []
    index = np.empty(len(corner_uv), np.int64)
    for k, (g, c) in enumerate(zip(corner_v.ravel(), corner_uv, strict=True)):
        key = (int(g), *map(float, np.round(c, 5)))
        t = known.get(key)
        if t is None:
            t = len(uv) + len(new_uv)
            known[key] = t
            new_uv.append(c)
            new_vertex.append(int(g))
        index[k] = t
    uv_faces = model.uv_faces.copy()
    uv_faces[stray] = index.reshape(-1, 3)
    face_part = model.face_part.copy()
    face_part[stray] = model.part_names.index("skin")
    if new_uv:
        uv = np.concatenate([uv, np.stack(new_uv)])
        uv_vertex = np.concatenate([uv_vertex, np.array(new_vertex, dtype=uv_vertex.dtype)])
    used, inverse = np.unique(uv_faces, return_inverse=True)  # drop UV points no face uses any more
    kwargs = {f.name: getattr(model, f.name) for f in fields(FaceModelArrays)}
    kwargs.update(face_part=face_part, uv=uv[used], uv_vertex=uv_vertex[used], uv_faces=inverse.reshape(-1, 3))
    kwargs["metadata"] = dict(model.metadata, neck_band_reattached=len(stray))
    repaired = FaceModelArrays(**kwargs)
    repaired.validate()
    return repaired


def vertex_components(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """(n_verts,) label of each vertex's connected component over ``faces`` (the smallest vertex index in it;
    a vertex no face uses is its own component)."""
    label = np.arange(n_verts)
    for _ in range(len(faces)):
        low = label[faces].min(1)
        before = label.copy()
        np.minimum.at(label, faces.ravel(), np.repeat(low, 3))
        if np.array_equal(before, label):
            break
    return label


def fields_of_schema() -> tuple[str, ...]:
    """Names of all dataclass fields (used by loaders that build the schema from other formats)."""
    return tuple(f.name for f in fields(FaceModelArrays))


# ---------------------------------------------------------------------------------------------- decode
def _check_codes(name: str, arr: Any, width: int, batch: int | None) -> np.ndarray:
    try:
        x = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not a numeric array ({exc})") from exc
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (B, <= {width}), got {x.shape}")
    if x.shape[1] > width:
        raise ValueError(f"{name}: has {x.shape[1]} coefficients, the model has {width}")
    if batch is not None and x.shape[0] not in (1, batch):
        raise ValueError(f"{name}: batch size {x.shape[0]} does not match {batch}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    if x.shape[1] < width:
        x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    return x


def _batch_of(codes: Any | None, batched_ndim: int) -> int:
    return int(np.shape(codes)[0]) if codes is not None and np.ndim(codes) == batched_ndim else 1


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula. rotvec: (..., 3) → (..., 3, 3)."""
    theta = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    safe = np.where(theta < 1e-12, 1.0, theta)
    k = rotvec / safe
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    K = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], axis=-1).reshape(*rotvec.shape[:-1], 3, 3)
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    eye = np.broadcast_to(np.eye(3), K.shape)
    return eye + s * K + (1.0 - c) * (K @ K)


def decode_vertices(
    model: FaceModelArrays,
    shape: Any | None = None,
    expression: Any | None = None,
    pose: Any | None = None,
) -> np.ndarray:
    """Codes → posed vertices (float32).

    Args:
        model: the face model.
        shape: (B, <=K) or (K,) identity coefficients; fewer than K uses the leading components.
        expression: (B, <=E) or (E,) expression weights.
        pose: (B, J, 3) or (J, 3) axis-angle per joint (clamped to ``joint_limits``); None = rest pose.

    Returns:
        (B, V, 3) vertices in metres.
    """
    batch = max(_batch_of(shape, 2), _batch_of(expression, 2), _batch_of(pose, 3))
    beta = _check_codes("shape", np.zeros(model.n_shape) if shape is None else shape, model.n_shape, batch)
    psi = _check_codes("expression", np.zeros(model.n_expr) if expression is None else expression, model.n_expr, batch)
    # float32 matrix products on the stored bases (float64 codes would copy and convert ~2 M basis values on every
    # call: 20–40 ms instead of ~1), the sum in float64
    offsets = [
        (codes.astype(np.float32) @ basis.reshape(len(basis), -1)).reshape(-1, model.n_verts, 3)
        for codes, basis in ((beta, model.shape_basis), (psi, model.expr_basis))
    ]
    verts = model.mean[None].astype(np.float64) + offsets[0] + offsets[1]
    verts = np.broadcast_to(verts, (batch, *verts.shape[1:]))
    if pose is not None:
        theta = _check_pose(model, pose, batch)
        verts = skin(model, verts, theta)
    return verts.astype(np.float32)


def _check_pose(model: FaceModelArrays, pose: Any, batch: int) -> np.ndarray:
    try:
        theta = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pose: not a numeric array ({exc})") from exc
    if theta.ndim == 2:
        theta = theta[None]
    if theta.ndim != 3 or theta.shape[1:] != (model.n_joints, 3):
        raise ValueError(
            f"pose: expected shape (B, {model.n_joints}, 3) for joints {model.joint_names}, got {theta.shape}"
        )
    if theta.shape[0] not in (1, batch):
        raise ValueError(f"pose: batch size {theta.shape[0]} does not match {batch}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("pose: contains NaN or inf")
    return np.clip(theta, model.joint_limits[..., 0], model.joint_limits[..., 1])


def skin(model: FaceModelArrays, verts: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Linear blend skinning. verts: (B, V, 3) unposed, theta: (B, J, 3) (already clamped) → (B, V, 3)."""
    joints = np.einsum("jv,bvc->bjc", model.joint_regressor, verts)  # (B, J, 3)
    return skin_with_joints(model.joint_parents, model.lbs_weights, verts, joints, theta)


def skin_with_joints(
    parents: np.ndarray, lbs_weights: np.ndarray, verts: np.ndarray, joints: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """:func:`skin` given the rest joints (B, J, 3): any subset of vertices (with their ``lbs_weights`` rows)
    skins as it does in the whole head."""
    rot = axis_angle_to_matrix(theta)  # (B, J, 3, 3)
    B, J = joints.shape[:2]
    rot = np.broadcast_to(rot, (B, J, 3, 3))
    g_rot = np.empty((B, J, 3, 3))
    g_t = np.empty((B, J, 3))
    for j, p in enumerate(parents):
        if p < 0:
            g_rot[:, j] = rot[:, j]
            g_t[:, j] = joints[:, j]
        else:
            g_rot[:, j] = g_rot[:, p] @ rot[:, j]
            g_t[:, j] = g_t[:, p] + np.einsum("bij,bj->bi", g_rot[:, p], joints[:, j] - joints[:, p])
    # Transform relative to the rest pose: x -> G_rot (x - J_rest) + G_t
    rel_t = g_t - np.einsum("bjik,bjk->bji", g_rot, joints)
    w = lbs_weights.astype(np.float64)
    a_rot = np.einsum("vj,bjik->bvik", w, g_rot)
    a_t = np.einsum("vj,bji->bvi", w, rel_t)
    return np.einsum("bvik,bvk->bvi", a_rot, verts) + a_t


def landmarks_3d(model: FaceModelArrays, verts: np.ndarray) -> np.ndarray:
    """(B, V, 3) → (B, 68, 3) landmark positions from the barycentric embedding."""
    tri = verts[:, model.faces[model.landmark_faces]]  # (B, 68, 3, 3)
    return np.einsum("blkc,lk->blc", tri, model.landmark_bary)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. verts: (V, 3) or (B, V, 3) → same shape."""
    squeeze = verts.ndim == 2
    v = verts[None] if squeeze else verts
    tri = v[:, faces]  # (B, F, 3, 3)
    fn = np.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])  # (B, F, 3), |fn| = 2·area
    B, V = v.shape[:2]
    out = np.zeros((B, V, 3), dtype=np.float64)
    flat_idx = faces.reshape(-1)
    for b in range(B):
        contrib = np.repeat(fn[b], 3, axis=0)  # each face normal to its 3 corners
        for c in range(3):
            out[b, :, c] = np.bincount(flat_idx, weights=contrib[:, c], minlength=V)
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    out = out / np.maximum(norm, 1e-12)
    out = out.astype(verts.dtype if verts.dtype.kind == "f" else np.float32)
    return out[0] if squeeze else out


# ---------------------------------------------------------------------------------------------- detailed mesh
@dataclass(frozen=True, eq=False)
class UVSampling:
    """Where each point of a regular UV grid lies on the coarse surface (topology only, shape-independent): the
    texel corners of per-texel quantities (the detail normal map of ``models.displacement.UVGrid``).

    The grid has (R+1) × (R+1) points at texel *corners* (u = i/R, v = 1 - r/R), so the u = 0 and u = 1
    columns both exist. A point is valid when a
    skin triangle covers it in UV; where several do (the cylindrical projection folds, e.g. the jaw over
    the neck), the outermost one from the vertical axis wins, as a camera on the cylinder would see it.

    Attributes:
        resolution: R.
        grid: (R+1, R+1) index of the valid point at each grid node, -1 where invalid. Row 0 is v = 1.
        face: (N,) coarse triangle of each valid point.
        bary: (N, 3) barycentric coordinates in that triangle.
        uv: (N, 2) the point's texture coordinates.
        faces: (M, 3) triangles over the valid points, counter-clockwise seen from outside (where the layout
            folds they bridge layers: not a mesh to export, see :func:`detailed_mesh`).
    """

    resolution: int
    grid: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    uv: np.ndarray
    faces: np.ndarray


def _barycentric_2d(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points p in triangles (a, b, c); all (N, 2) → (N, 3). Degenerate → -1."""
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-14
    den = np.where(ok, den, 1.0)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    out = np.stack([1.0 - w1 - w2, w1, w2], axis=1)
    out[~ok] = -1.0
    return out


# keyed by id(model) *and* holding the model: an entry keeps its model alive, so a collected model's id, reused
# by another model, can never return the first one's entry; at most _CACHE_ENTRIES entries per cache are kept
_CACHE_ENTRIES = 8
_SAMPLING_CACHE: dict[tuple[int, int], tuple[FaceModelArrays, Any]] = {}
_TEXEL_CACHE: dict[tuple[int, int], tuple[FaceModelArrays, Any]] = {}
_MESH_CACHE: dict[tuple[int, int], tuple[FaceModelArrays, Any]] = {}
_INNER_MOUTH_CACHE: dict[tuple[int, int], tuple[FaceModelArrays, Any]] = {}


def _cached(cache: dict, model: FaceModelArrays, key: int, build: Callable[[], Any]) -> Any:
    hit = cache.get((id(model), key))
    if hit is None or hit[0] is not model:
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        hit = cache[(id(model), key)] = (model, build())
    return hit[1]


_WHITENING_CACHE: dict = {}


def _prior_whitening(model: FaceModelArrays) -> np.ndarray:
    """(K, K) the inverse of the generation prior's Cholesky factor (float64), computed once per model: a linear
    solve per call cost ~0.2 ms on an idle 2-core CPU and ~10 ms with its BLAS threads contending (/generate)."""
    return _cached(_WHITENING_CACHE, model, 0, lambda: np.linalg.inv(model.shape_prior_chol.astype(np.float64)))


def _check_resolution(resolution: Any, low: int) -> int:
    if not isinstance(resolution, int | np.integer) or not low <= int(resolution) <= 4096:
        raise ValueError(f"resolution: must be an integer in [{low}, 4096], got {resolution!r}")
    return int(resolution)


def uv_sampling(model: FaceModelArrays, resolution: int) -> UVSampling:
    """The (cached) :class:`UVSampling` of ``model`` at ``resolution`` (16..4096)."""
    R = _check_resolution(resolution, 16)
    return _cached(_SAMPLING_CACHE, model, R, lambda: _build_uv_sampling(model, R))


def rasterize_nodes(
    tri_xy: np.ndarray, tri_depth: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised z-buffer over the integer nodes of a grid (no Python loop per triangle or per node).

    Every node (x, y) with 0 <= x < width, 0 <= y < height that a triangle covers (boundary inclusive)
    takes the covering triangle of largest interpolated depth.

    Args:
        tri_xy: (F, 3, 2) triangle corners in grid units.
        tri_depth: (F, 3) depth of each corner; larger wins.
        width, height: grid size in nodes.

    Returns:
        node: (N,) covered node indices ``y * width + x``, tri: (N,) winning triangle, bary: (N, 3).
    """
    eps = 1e-7
    lo = np.ceil(tri_xy.min(1) - eps).astype(np.int64)
    hi = np.floor(tri_xy.max(1) + eps).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    nx = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    ny = np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    count = nx * ny
    cand = np.repeat(np.arange(len(tri_xy)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    gx = lo[cand, 0] + local % nx[cand]
    gy = lo[cand, 1] + local // nx[cand]
    t = tri_xy[cand]
    bary = _barycentric_2d(np.stack([gx, gy], 1).astype(np.float64), t[:, 0], t[:, 1], t[:, 2])
    inside = np.all(bary >= -1e-9, axis=1)
    cand, bary = cand[inside], bary[inside]
    node = gy[inside] * width + gx[inside]
    depth = np.einsum("ck,ck->c", bary, tri_depth[cand])
    order = np.lexsort((-depth, node))
    first = np.ones(len(order), bool)
    first[1:] = node[order][1:] != node[order][:-1]
    pick = order[first]
    bary = np.clip(bary[pick], 0.0, 1.0)
    bary /= bary.sum(1, keepdims=True)
    return node[pick], cand[pick], bary


def _skin_raster(
    model: FaceModelArrays, R: int, nodes: int, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise the skin's UV layout onto a ``nodes``² grid whose node (c, r) sits at uv
    ((c + offset) / R, 1 - (r + offset) / R); the outermost surface (largest distance from the vertical
    axis on the mean head) wins where the cylindrical projection folds. Returns (node, face, bary)."""
    skin = np.flatnonzero(model.face_part == 0)
    uv_tri = model.uv[model.uv_faces[skin]].astype(np.float64)
    # u is periodic: triangles reaching past the seam also cover the other side, shifted by one turn
    below, above = uv_tri[:, :, 0].min(1) < 0.0, uv_tri[:, :, 0].max(1) > 1.0
    shifted = [uv_tri]
    for shift, beyond in ((1.0, below), (-1.0, above)):
        copy = uv_tri[beyond].copy()
        copy[:, :, 0] += shift
        shifted.append(copy)
    uv_tri = np.concatenate(shifted)
    skin = np.concatenate([skin, skin[below], skin[above]])
    tri_xy = np.stack([uv_tri[..., 0] * R - offset, (1.0 - uv_tri[..., 1]) * R - offset], -1)
    mean = model.mean.astype(np.float64)
    radius = np.hypot(mean[:, 0], mean[:, 2])[model.faces[skin]]
    node, tri, bary = rasterize_nodes(tri_xy, radius, nodes, nodes)
    return node, skin[tri], bary


def texel_sampling(model: FaceModelArrays, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each texel *centre* of an R × R texture lies on the skin (cached).

    Returns:
        texel: (N,) flat index ``row * R + col`` of the covered texels (row 0 is v = 1), face: (N,) skin
        triangle, bary: (N, 3) barycentric coordinates.
    """
    R = _check_resolution(resolution, 8)

    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        node, face, bary = _skin_raster(model, R, R, 0.5)
        return node, face, bary.astype(np.float32)

    return _cached(_TEXEL_CACHE, model, R, build)


def _build_uv_sampling(model: FaceModelArrays, R: int) -> UVSampling:
    node, face_all, bary = _skin_raster(model, R, R + 1, 0.0)
    grid = np.full((R + 1) * (R + 1), -1, np.int64)
    grid[node] = np.arange(len(node))
    faces = _grid_triangles(grid.reshape(R + 1, R + 1))
    # drop covered nodes that no grid triangle uses (isolated points would get no normal)
    keep = np.zeros(len(node), bool)
    keep[faces.ravel()] = True
    renumber = np.cumsum(keep) - 1
    faces = renumber[faces]
    node, face, bary = node[keep], face_all[keep], bary[keep]
    grid[:] = -1
    grid[node] = np.arange(len(node))
    row, col = np.divmod(node, R + 1)
    uv = np.stack([col / R, 1.0 - row / R], 1)
    grid = grid.reshape(R + 1, R + 1)
    return UVSampling(R, grid, face, bary.astype(np.float32), uv.astype(np.float32), faces)


def _grid_triangles(grid: np.ndarray) -> np.ndarray:
    """Triangulate a grid of point indices (-1 = missing): 2 triangles per full quad, 1 per 3-corner quad.

    Row index grows downwards (v decreasing), column index grows with u; triangles are counter-clockwise
    in (u, v), which is counter-clockwise seen from outside for our cylindrical layout.
    """
    a = grid[:-1, :-1].ravel()  # top-left (u0, v1)
    b = grid[:-1, 1:].ravel()  # top-right (u1, v1)
    c = grid[1:, :-1].ravel()  # bottom-left (u0, v0)
    d = grid[1:, 1:].ravel()  # bottom-right (u1, v0)
    va, vb, vc, vd = a >= 0, b >= 0, c >= 0, d >= 0
    full = va & vb & vc & vd
    tris = [
        np.stack([c[full], d[full], a[full]], 1),
        np.stack([a[full], d[full], b[full]], 1),
    ]
    three = (va.astype(int) + vb + vc + vd) == 3
    for keep, tri in (
        (~va, (c, d, b)),
        (~vb, (c, d, a)),
        (~vc, (a, d, b)),
        (~vd, (c, b, a)),
    ):
        m = three & keep
        tris.append(np.stack([tri[0][m], tri[1][m], tri[2][m]], 1))
    return np.concatenate(tris).astype(np.int64)


@dataclass(frozen=True, eq=False)
class MeshSampling:
    """The vertices of :func:`detailed_mesh` as points on the coarse surface (topology only, shape-independent).

    Every skin triangle is split into ``level``² congruent triangles (the points of its barycentric lattice
    with step 1/level). Lattice points on a shared corner or edge are one point, so the detailed surface is as
    closed as the coarse one, with no triangle bridging two layers the cylindrical layout folds together (jaw
    over neck, crown, ears). Corners and edges are shared per *UV* vertex, so the mesh stays split where the
    texture coordinates are (the cylindrical seam), as :func:`coarse_mesh` is. Triangles kept as they are:
    every non-skin triangle (eyeballs, mouth cavity) and the skin inside the mouth (:func:`inner_mouth_skin`).

    Attributes:
        level: triangles per coarse edge (:func:`subdivision_level` of the requested resolution).
        face: (N,) coarse triangle of each point.
        bary: (N, 3) barycentric coordinates in that triangle.
        uv: (N, 2) the point's texture coordinates (u may reach past [0, 1] at the seam, as the coarse UVs do).
        lookup_uv: (N, 2) where the point reads the displacement map: ``uv``, or for copies of one surface
            point with different UVs (seam, poles) the same one for all copies.
        weight: (N,) how much of the displacement the point takes: 0 on the edges shared with a kept
            triangle (so the displaced skin meets the eyeballs' and mouth's coarse triangles without a crack),
            rising linearly to 1 one coarse triangle away.
        faces: (M, 3) triangles over the N points, oriented as their coarse triangle.
        kept_faces: (H,) the coarse triangles :func:`detailed_mesh` appends as they are.
    """

    level: int
    face: np.ndarray
    bary: np.ndarray
    uv: np.ndarray
    lookup_uv: np.ndarray
    weight: np.ndarray
    faces: np.ndarray
    kept_faces: np.ndarray


def subdivision_level(model: FaceModelArrays, resolution: int) -> int:
    """Triangles per coarse edge that give the skin about as many vertices as an R × R grid over its UV area."""
    skin = model.face_part == 0
    t = model.uv[model.uv_faces[skin]].astype(np.float64)
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    # a triangle split L times per edge brings ~L²/2 vertices; the grid has ~area·R² over the skin
    return max(1, int(round(resolution * np.sqrt(2.0 * area / max(int(skin.sum()), 1)))))


def mesh_sampling(model: FaceModelArrays, resolution: int) -> MeshSampling:
    """The (cached) :class:`MeshSampling` of ``model`` for a detailed mesh of resolution R (16..4096).

    Cached by level, not by R: the many resolutions a client may ask for share the few levels (1–8 up to 512)."""
    level = subdivision_level(model, _check_resolution(resolution, 16))
    return _cached(_MESH_CACHE, model, level, lambda: _build_mesh_sampling(model, level))


def _lattice(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The barycentric lattice of one triangle split ``level`` times per edge.

    Returns:
        weights: (P, 3) integer barycentric coordinates summing to ``level``; tris: (T, 3) lattice triangles
        (``level``² of them), counter-clockwise when the triangle's corners are.
    """
    L = level
    i, j = (a.ravel() for a in np.meshgrid(np.arange(L + 1), np.arange(L + 1), indexing="ij"))
    inside = i + j <= L
    i, j = i[inside], j[inside]
    index = np.full((L + 2, L + 2), -1, np.int64)
    index[i, j] = np.arange(len(i))
    up = i + j <= L - 1
    down = i + j <= L - 2
    tris = np.concatenate(
        [
            np.stack([index[i[up], j[up]], index[i[up] + 1, j[up]], index[i[up], j[up] + 1]], 1),
            np.stack([index[i[down] + 1, j[down]], index[i[down] + 1, j[down] + 1], index[i[down], j[down] + 1]], 1),
        ]
    )
    return np.stack([L - i - j, i, j], 1), tris


def _lattice_names(corners: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, 3) corner ids × (P, 3) lattice weights → (S·P, 6) names: (id, weight) of the corners sorted by id,
    corners of weight 0 left out (id -1). The same name in two triangles is the same point: a shared corner,
    or the same step along a shared edge."""
    ids = np.where(weights[None] > 0, corners[:, None, :], -1)  # (S, P, 3)
    w = np.broadcast_to(weights[None], ids.shape)
    order = np.argsort(ids, axis=2, kind="stable")
    return np.concatenate([np.take_along_axis(ids, order, 2), np.take_along_axis(w, order, 2)], 2).reshape(-1, 6)


def _build_mesh_sampling(model: FaceModelArrays, L: int) -> MeshSampling:
    keep = np.union1d(np.flatnonzero(model.face_part != 0), inner_mouth_skin(model))
    split = np.setdiff1d(np.arange(len(model.faces)), keep)
    weights, lattice_tris = _lattice(L)
    P = len(weights)
    # points are shared per UV vertex (the mesh splits where its texture coordinates do)
    _, first, inverse = np.unique(
        _lattice_names(model.uv_faces[split], weights), axis=0, return_index=True, return_inverse=True
    )
    face_of, lattice_of = np.divmod(first, P)
    face = split[face_of]
    bary = weights[lattice_of] / float(L)
    uv = np.einsum("nk,nkc->nc", bary, model.uv[model.uv_faces[face]].astype(np.float64))
    # copies of one surface point read the displacement at one place, or the surface would open between them:
    # the seam's copies are one point of the periodic map anyway, but near the poles of the cylindrical
    # projection (crown, under the chin) the layout gives some shared edges UVs half a turn apart
    _, group_first, group = np.unique(
        _lattice_names(model.uv_vertex[model.uv_faces[split]], weights)[first],
        axis=0,
        return_index=True,
        return_inverse=True,
    )
    lookup_uv = uv[group_first][group.reshape(-1)]
    # displacement weight: 0 at the coarse vertices the kept triangles touch, interpolated in between
    free = np.ones(model.n_verts)
    free[model.faces[keep].ravel()] = 0.0
    weight = np.einsum("nk,nk->n", bary, free[model.faces[face]])
    faces = inverse.reshape(len(split), P)[:, lattice_tris].reshape(-1, 3)
    return MeshSampling(
        L,
        face,
        bary.astype(np.float32),
        uv.astype(np.float32),
        lookup_uv.astype(np.float32),
        weight.astype(np.float32),
        faces,
        keep,
    )


def inner_mouth_skin(model: FaceModelArrays) -> np.ndarray:
    """Skin triangles inside the mouth (cached): between the mouth corners, the chin and the upper lip, behind
    the lips and hidden at rest from the front (the floor of the mouth and the lips' inner sides, which the
    cylindrical layout folds under the lips' own texels, so they would show lip colour when the jaw opens).
    Empty for a model without a mouth part (:data:`MOUTH_PART`)."""
    if MOUTH_PART not in model.part_names:
        return np.zeros(0, np.int64)
    return _cached(_INNER_MOUTH_CACHE, model, 0, lambda: _inner_mouth_skin(model, model.mean.astype(np.float64)))


def _inner_mouth_skin(model: FaceModelArrays, mean: np.ndarray, size: int = 512) -> np.ndarray:
    skin = np.flatnonzero(model.face_part == 0)
    centre = mean[model.faces[skin]].mean(1)
    lm = landmarks_3d(model, mean[None])[0]
    half = 0.5 * abs(lm[54, 0] - lm[48, 0]) + 0.004
    near = (np.abs(centre[:, 0] - 0.5 * (lm[48, 0] + lm[54, 0])) < half) & (centre[:, 2] < lm[48:68, 2].max())
    near &= (centre[:, 1] > lm[8, 1] + 0.008) & (centre[:, 1] < lm[51, 1])
    # orthographic z-buffer of the rest head seen from the front
    origin = mean[:, :2].min(0)
    scale = (size - 1) / max(float((mean[:, :2].max(0) - origin).max()), 1e-9)
    px = (mean[:, :2] - origin) * scale
    px[:, 1] = size - 1 - px[:, 1]
    node, tri, bary = rasterize_nodes(px[model.faces], mean[model.faces, 2], size, size)
    zbuf = np.full(size * size, -np.inf)
    zbuf[node] = np.einsum("nk,nk->n", bary, mean[model.faces[tri], 2])
    at = np.clip(np.rint(px[model.faces[skin]].mean(1)).astype(np.int64), 0, size - 1)
    hidden = centre[:, 2] < zbuf[at[:, 1] * size + at[:, 0]] - 0.001
    # only what the cavity reaches through such triangles: the back of the neck is hidden at mouth height too
    candidate = skin[near & hidden]
    reached = np.zeros(model.n_verts, bool)
    reached[model.faces[model.face_part == model.part_names.index(MOUTH_PART)]] = True
    inside = np.zeros(len(candidate), bool)
    while True:
        grow = ~inside & reached[model.faces[candidate]].any(1)
        if not grow.any():
            return np.sort(candidate[inside])
        inside |= grow
        reached[model.faces[candidate[grow]]] = True


@dataclass(frozen=True, eq=False)
class MeshData:
    """An engine-ready triangle mesh with one UV set (positions are unique per UV vertex).

    Attributes:
        positions: (N, 3) float32 metres.
        normals: (N, 3) float32 unit normals.
        uv: (N, 2) float32, v up.
        faces: (M, 3) int64, counter-clockwise seen from outside.
    """

    positions: np.ndarray
    normals: np.ndarray
    uv: np.ndarray
    faces: np.ndarray


def coarse_mesh(model: FaceModelArrays, verts: np.ndarray) -> MeshData:
    """The coarse mesh split at UV seams (one vertex per UV vertex). verts: (V, 3)."""
    verts = np.asarray(verts)
    if verts.shape != (model.n_verts, 3):
        raise ValueError(f"verts: expected shape ({model.n_verts}, 3), got {verts.shape}")
    normals = vertex_normals(verts.astype(np.float64), model.faces)
    idx = model.uv_vertex
    return MeshData(
        verts[idx].astype(np.float32),
        normals[idx].astype(np.float32),
        model.uv.astype(np.float32),
        model.uv_faces,
    )


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which points (N, 2) lie inside the closed polygon (K, 2) (even-odd crossing rule). For pixels,
    pass their centres: integer (x, y) is a pixel's centre in this project."""
    points = np.asarray(points, np.float64)
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if y0 == y1:
            continue
        inside ^= ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return inside


def project_points(points: np.ndarray, camera: np.ndarray, size: int) -> np.ndarray:
    """(N, 3) posed points → (N, 2) pixels of a ``size`` × ``size`` image by the weak-perspective camera ``(s, tx,
    ty)`` (``x_ndc = s·x + tx``, NDC spanning the image; x right, y down, pixel centres at integers)."""
    s, tx, ty = (float(v) for v in camera)
    x_ndc = s * points[:, 0] + tx
    y_ndc = s * points[:, 1] + ty
    return np.stack([(x_ndc + 1.0) / 2.0 * size - 0.5, (1.0 - y_ndc) / 2.0 * size - 0.5], 1)


def sample_map(image: np.ndarray, uv: np.ndarray, wrap_u: bool = False) -> np.ndarray:
    """Bilinear lookup of a (H, W) or (H, W, C) map at uv (N, 2) (v up, texel centres at half-integers).

    Rows clamp at the border. Columns clamp too, or with ``wrap_u`` are periodic (u and u ± 1 are the same
    point, column W-1 neighbours column 0: the cylindrical layout, whose seam triangles reach past [0, 1]).
    """
    H, W = image.shape[:2]
    y = np.clip((1.0 - uv[:, 1]) * H - 0.5, 0, H - 1)
    y0 = np.floor(y).astype(np.int64).clip(0, H - 2 if H > 1 else 0)
    y1 = np.minimum(y0 + 1, H - 1)
    if wrap_u:
        x = np.mod(uv[:, 0], 1.0) * W - 0.5
        x0 = np.floor(x).astype(np.int64)
        fx = x - x0
        x0, x1 = np.mod(x0, W), np.mod(x0 + 1, W)
    else:
        x = np.clip(uv[:, 0] * W - 0.5, 0, W - 1)
        x0 = np.floor(x).astype(np.int64).clip(0, W - 2 if W > 1 else 0)
        x1 = np.minimum(x0 + 1, W - 1)
        fx = x - x0
    fy = y - y0
    if image.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bot = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def detailed_vertex_field(model: FaceModelArrays, field: np.ndarray, resolution: int = 256) -> np.ndarray:
    """A per-vertex field of the coarse model carried onto the vertices of :func:`detailed_mesh`.

    The subdivided points interpolate it barycentrically, the appended kept coarse vertices copy it, so e.g.
    an expression blendshape (V, 3) becomes a morph target of the detailed mesh. (Displacement is not
    re-applied: a morph target moves the displaced surface by the coarse delta, a good approximation for
    displacements that are small next to the blendshape's spatial scale.)

    Args:
        field: (V, C) or (K, V, C) values per coarse vertex.

    Returns:
        (N, C) or (K, N, C) values per detailed-mesh vertex, in the field's float dtype.
    """
    field = np.asarray(field)
    batched = field.ndim == 3
    f = field if batched else field[None]
    if f.ndim != 3 or f.shape[1] != model.n_verts:
        raise ValueError(f"field: expected shape (V={model.n_verts}, C) or (K, V, C), got {field.shape}")
    s = mesh_sampling(model, resolution)
    tri = model.faces[s.face]
    dtype = f.dtype if f.dtype.kind == "f" else np.float64
    # one corner at a time: a (K, N, 3, C) gather of all three would be 3× the output's size (0.4 GB for the
    # 51 expression shapes at R = 512)
    subdivided = np.zeros((f.shape[0], len(tri), f.shape[2]), dtype)
    for k in range(3):
        subdivided += s.bary[:, k, None].astype(dtype) * f[:, tri[:, k]]
    out = np.concatenate([subdivided, f[:, model.uv_vertex[kept_uv_vertices(model, s)]].astype(dtype)], axis=1)
    return out if batched else out[0]


def kept_uv_vertices(model: FaceModelArrays, s: MeshSampling) -> np.ndarray:
    """UV vertices used by the kept coarse faces, in the order :func:`detailed_mesh` appends them."""
    return np.unique(model.uv_faces[s.kept_faces])


def detailed_mesh(
    model: FaceModelArrays,
    verts: np.ndarray,
    displacement: np.ndarray | None = None,
    resolution: int = 256,
) -> MeshData:
    """The detailed mesh: the coarse skin subdivided (see :class:`MeshSampling`) and offset along its normals.

    Each point becomes a vertex at its barycentric position on the coarse surface plus ``weight ·
    displacement(u, v)`` metres along the interpolated vertex normal (the map is periodic in u). The kept
    coarse triangles (eyeballs, mouth) are appended unchanged.

    Args:
        model: the face model.
        verts: (V, 3) posed coarse vertices.
        displacement: (H, W) displacement map in metres over the model's UV layout (row 0 is v = 1), or None.
        resolution: R; the skin gets about as many vertices as an R × R grid over its UV area.

    Returns:
        A :class:`MeshData` whose normals are the coarse surface's interpolated normals corrected by the
        change the displacement makes to the subdivided surface's normals (smooth shading, detail kept).
    """
    verts = np.asarray(verts, dtype=np.float64)
    if verts.shape != (model.n_verts, 3):
        raise ValueError(f"verts: expected shape ({model.n_verts}, 3), got {verts.shape}")
    if not np.all(np.isfinite(verts)):
        raise ValueError("verts: contains NaN or inf")
    s = mesh_sampling(model, resolution)
    vn = vertex_normals(verts, model.faces)
    tri = model.faces[s.face]  # (N, 3)
    base = np.einsum("nk,nkc->nc", s.bary, verts[tri])
    nrm = np.einsum("nk,nkc->nc", s.bary, vn[tri])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    pos = base
    if displacement is not None:
        disp = np.asarray(displacement, dtype=np.float64)
        if disp.ndim != 2 or min(disp.shape) < 2:
            raise ValueError(f"displacement: expected a (H, W) map, got shape {disp.shape}")
        if not np.all(np.isfinite(disp)):
            raise ValueError("displacement: contains NaN or inf")
        pos = base + (s.weight * sample_map(disp, s.lookup_uv, wrap_u=True))[:, None] * nrm
    # Append the kept coarse triangles with their own (seam-split) vertices.
    used = kept_uv_vertices(model, s)
    inverse = np.searchsorted(used, model.uv_faces[s.kept_faces])
    positions = np.concatenate([pos, verts[model.uv_vertex[used]]])
    uv = np.concatenate([s.uv, model.uv[used]])
    faces = np.concatenate([s.faces, inverse.reshape(-1, 3) + len(pos)])
    # Normals: the coarse surface's smooth (interpolated) normals, plus what the displacement changes. Normals
    # of the subdivided surface alone would show the coarse triangles as facets: its points lie on flat triangles.
    point_normals = nrm
    if pos is not base:
        point_normals = nrm + vertex_normals(pos, s.faces) - vertex_normals(base, s.faces)
        point_normals /= np.maximum(np.linalg.norm(point_normals, axis=1, keepdims=True), 1e-12)
    normals = np.concatenate([point_normals, vn[model.uv_vertex[used]]])
    return MeshData(positions.astype(np.float32), normals.astype(np.float32), uv.astype(np.float32), faces)
