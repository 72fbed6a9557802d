"""Read a user-supplied FLAME model pickle into the face-model schema, without chumpy or running its code.

FLAME's licence forbids shipping the model, so users point :func:`load_flame` at their own download. The
official files are Python 2 pickles (protocol 0–2, latin1 strings) of a dict whose ``shapedirs`` (and
sometimes other arrays) are chumpy ``Ch`` objects. They are read with a restricted unpickler: chumpy classes
become inert stand-ins that keep their pickled state (a leaf ``Ch`` pickles ``__dict__`` minus its caches,
so the value is the ndarray under ``'x'``), scipy.sparse matrices become stand-ins densified from
``data/indices/indptr``, numpy's own reconstruction functions are allowed, and any other global is refused.

Layout relied on (FLAME 2020 ``generic_model.pkl`` and FLAME 2023; the same as smplx's FLAME class):

- ``v_template`` (V, 3) metres, +y up, face towards +z: already our frame.
- ``shapedirs`` (V, 3, 300 + E): the first 300 components are identity (unit variance), the rest expression.
- ``J_regressor`` (5, V) sparse, ``weights`` (V, 5), ``f`` (F, 3), ``kintree_table`` (2, 5) with the tree
  global → neck → {jaw, eyeball, eyeball} (checked). Which eyeball joint is the subject's left is decided
  from geometry (larger x), and the joints are reordered to :data:`JOINT_NAMES` if needed.
- ``posedirs`` (pose-corrective blendshapes) has no place in the schema and is dropped (logged).
"""

from __future__ import annotations

import codecs
import functools
import logging
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from facecore.geometry import N_LANDMARKS, FaceModelArrays
from models.face.uv import cylindrical_uv
from models.safe_pickle import PicklePolicy, RestrictedUnpickler

logger = logging.getLogger(__name__)

FLAME_IDENTITY_COMPONENTS = 300  # identity block at the start of every FLAME release's shapedirs
JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")
PART_NAMES = ("skin", "eyeball_left", "eyeball_right")
LICENCE = "FLAME licence (user-supplied file, not redistributable)"
EYEBALL_WEIGHT = 0.99  # a triangle whose corners are all skinned above this to an eye joint is eyeball
# (J, 3, 2) axis-angle bounds in radians, rows in JOINT_NAMES order; x opens the jaw (positive = open).
JOINT_LIMITS = np.array(
    [
        [[-np.pi, np.pi]] * 3,
        [[-0.9, 0.9], [-1.4, 1.4], [-0.7, 0.7]],
        [[0.0, 0.5], [-0.1, 0.1], [-0.05, 0.05]],
        [[-0.6, 0.6], [-0.6, 0.6], [-0.1, 0.1]],
        [[-0.6, 0.6], [-0.6, 0.6], [-0.1, 0.1]],
    ]
)
_FLAME_PARENTS = [0, 1, 1, 1]  # parents of FLAME joints 1..4 (joint 0 is the root)


# ---------------------------------------------------------------------------------------------- unpickling
class _Captured:
    """Stand-in for a foreign class: keeps constructor arguments and pickled state, runs none of its code."""

    foreign_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Captured:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        """The pickled ``__dict__`` (merged with slot state when the state is a ``(dict, slots)`` pair)."""
        parts = self.state if isinstance(self.state, tuple) else (self.state,)
        return {k: v for part in parts if isinstance(part, dict) for k, v in part.items()}


class _Chumpy(_Captured):
    def array(self) -> np.ndarray:
        for candidate in (self.state_dict().get("x"), self.state, *self.args[:1]):
            if isinstance(candidate, _Chumpy):
                return candidate.array()
            if isinstance(candidate, np.ndarray):
                return candidate
        raise ValueError(
            f"{self.foreign_name} object stores no array (an unevaluated chumpy expression); "
            "only stored values can be read without chumpy"
        )


class _Sparse(_Captured):
    def array(self) -> np.ndarray:
        s = self.state_dict()
        shape = tuple(int(n) for n in s.get("_shape", s.get("shape")))
        if "indptr" in s:
            major = np.repeat(np.arange(len(s["indptr"]) - 1), np.diff(s["indptr"]))
            rows, cols = (s["indices"], major) if "csc" in self.foreign_name else (major, s["indices"])
        else:
            rows, cols = s["coords"] if "coords" in s else (s["row"], s["col"])
        dense = np.zeros(shape)
        np.add.at(dense, (np.asarray(rows), np.asarray(cols)), np.asarray(s["data"], dtype=np.float64))
        return dense


_SPARSE_NAMES = {f"{fmt}_{kind}" for fmt in ("csc", "csr", "coo") for kind in ("matrix", "array")}


@functools.cache
def _stand_in(base: type[_Captured], foreign_name: str) -> type[_Captured]:
    return type(base.__name__, (base,), {"foreign_name": foreign_name, "__module__": __name__})


def _reconstructor(cls: Any, base: Any, state: Any) -> _Captured:
    """Safe ``copyreg._reconstructor`` (protocol 0/1 pickles): only builds stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, _Captured)) or base is not object or state is not None:
        raise pickle.UnpicklingError(f"refusing copyreg reconstruction of {cls!r}")
    return cls.__new__(cls)


def _safe_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.zeros(0).__reduce__()[0]  # numpy's own names, whatever the numpy version
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = reconstruct
        allowed[module, "scalar"] = scalar
    for module in ("__builtin__", "builtins"):
        allowed[module, "set"] = set
        allowed[module, "object"] = object
    for module in ("copy_reg", "copyreg"):
        allowed[module, "_reconstructor"] = _reconstructor
    allowed["_codecs", "encode"] = codecs.encode  # how Python 3 writes bytes at protocol < 3
    return allowed


def _foreign_stand_in(module: str, name: str) -> type[_Captured] | None:
    """chumpy values and scipy.sparse matrices become inert stand-ins; anything else is not one."""
    if module.split(".")[0] == "chumpy":
        return _stand_in(_Chumpy, f"{module}.{name}")
    if module.startswith("scipy.sparse") and name in _SPARSE_NAMES:
        return _stand_in(_Sparse, f"{module}.{name}")
    return None


def _refusal(module: str, name: str) -> str:
    return (
        f"refusing to load global {f'{module}.{name}'!r}: only numpy arrays, scipy.sparse matrices and chumpy "
        "values are allowed in a FLAME file"
    )


_POLICY = PicklePolicy(allowed=_safe_globals(), refusal=_refusal, stand_in=_foreign_stand_in)


def _unpickle(f: BinaryIO, path: Path) -> Any:
    try:
        return RestrictedUnpickler(f, _POLICY, encoding="latin1").load()
    except Exception as exc:  # refused globals, truncated or foreign files: name the file
        raise ValueError(f"{path}: cannot read the pickle ({exc})") from exc


def _to_array(value: Any) -> np.ndarray:
    return value.array() if isinstance(value, _Chumpy | _Sparse) else np.asarray(value)


# ---------------------------------------------------------------------------------------------- side files
def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _load_landmark_embedding(path: Path, n_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """DECA's ``landmark_embedding.npy`` (a pickled dict in a .npy) → (68,) faces, (68, 3) barycentrics."""
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            _, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not a .npy file ({exc})") from exc
        if not dtype.hasobject:
            raise ValueError(f"{path}: expected a pickled dict (DECA's landmark_embedding.npy), not {dtype}")
        embedding = _unpickle(f, path)
    embedding = embedding.item() if isinstance(embedding, np.ndarray) else embedding
    keys = ("full_lmk_faces_idx", "full_lmk_bary_coords")
    if not isinstance(embedding, dict) or not all(k in embedding for k in keys):
        raise ValueError(f"{path}: expected a dict with keys {keys}")
    faces = _to_array(embedding[keys[0]]).reshape(-1).astype(np.int64)
    bary = _to_array(embedding[keys[1]]).reshape(-1, 3).astype(np.float32)
    if len(faces) != N_LANDMARKS or len(bary) != N_LANDMARKS:
        raise ValueError(f"{path}: expected {N_LANDMARKS} landmarks, got {len(faces)} and {len(bary)}")
    if faces.min() < 0 or faces.max() >= n_faces:
        raise ValueError(f"{path}: landmark triangles outside the model's {n_faces} triangles")
    return faces, bary


def _read_obj_uv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OBJ → vt (T, 2), texture triangles (F, 3), geometry triangles (F, 3), all 0-based."""
    vt, ft, fv = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if parts and parts[0] == "vt":
            vt.append([float(parts[1]), float(parts[2])])
        elif parts and parts[0] == "f":
            corners = [c.split("/") for c in parts[1:]]
            if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                raise ValueError(f"{path}:{lineno}: expected a textured triangle (f v/vt v/vt v/vt)")
            fv.append([int(c[0]) for c in corners])
            ft.append([int(c[1]) for c in corners])
    vt_arr = np.array(vt, np.float64).reshape(-1, 2)
    return vt_arr, np.array(ft, np.int64).reshape(-1, 3) - 1, np.array(fv, np.int64).reshape(-1, 3) - 1


def _load_uv(path: Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLAME's texture-space file (.npz with 'vt', 'ft', or an .obj) → (uv, uv_faces, uv_vertex)."""
    if path.suffix.lower() == ".obj":
        vt, ft, fv = _read_obj_uv(path)
        if not np.array_equal(fv, faces):
            raise ValueError(f"{path}: the OBJ's triangles differ from the model's (not FLAME's template?)")
    elif path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "vt" not in z.files or "ft" not in z.files:
                raise ValueError(f"{path}: expected arrays 'vt' and 'ft', found {z.files}")
            vt, ft = z["vt"].astype(np.float64), z["ft"].astype(np.int64)
    else:
        raise ValueError(f"{path}: UV layout must be an .npz (vt, ft) or an .obj")
    if ft.shape != faces.shape:
        raise ValueError(f"{path}: texture triangles have shape {ft.shape}, the model's {faces.shape}")
    if ft.min() < 0 or ft.max() >= len(vt):
        raise ValueError(f"{path}: texture triangle indices outside the {len(vt)} texture vertices")
    used, inverse = np.unique(ft.ravel(), return_inverse=True)  # drop texture vertices no triangle uses
    uv_faces = inverse.reshape(ft.shape)
    uv_vertex = np.empty(len(used), np.int64)
    uv_vertex[uv_faces.ravel()] = faces.ravel()
    if not np.array_equal(uv_vertex[uv_faces], faces):
        raise ValueError(f"{path}: a texture vertex serves several vertices; each must map to exactly one")
    return vt[used].astype(np.float32), uv_faces, uv_vertex


def _cylindrical_layout(mean: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cylindrical UVs around the vertical axis through the x/z bounding-box centre of the mean head."""
    centre = (mean.min(0) + mean.max(0)) / 2.0
    centre[1] = 0.0
    return cylindrical_uv(mean - centre, faces)


def _eyeballs(mean: np.ndarray, faces: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(F,) part index into PART_NAMES, and the FLAME joint order matching JOINT_NAMES (left eye first)."""
    x = []
    for j in (3, 4):
        rigid = weights[:, j] > EYEBALL_WEIGHT
        if not rigid.any():
            raise ValueError(f"FLAME joint {j} skins no vertex rigidly; expected an eyeball")
        x.append(mean[rigid, 0].mean())
    left, right = (3, 4) if x[0] > x[1] else (4, 3)  # +x is the subject's left
    face_part = np.zeros(len(faces), np.int64)
    for part, j in ((1, left), (2, right)):
        face_part[np.all(weights[faces, j] > EYEBALL_WEIGHT, axis=1)] = part
    return face_part, [0, 1, 2, left, right]


# ---------------------------------------------------------------------------------------------- loader
def load_flame(
    model_path: str | Path,
    *,
    landmark_embedding_path: str | Path | None = None,
    uv_path: str | Path | None = None,
    n_shape: int = FLAME_IDENTITY_COMPONENTS,
    n_expr: int = 100,
) -> FaceModelArrays:
    """Load an official FLAME model pickle as :class:`FaceModelArrays`.

    Args:
        model_path: FLAME's ``generic_model.pkl`` / ``flame2023.pkl`` (or any pickle of the same layout).
        landmark_embedding_path: DECA's ``landmark_embedding.npy`` (``full_lmk_faces_idx`` (1, 68),
            ``full_lmk_bary_coords`` (1, 68, 3)); required, the schema has 68 landmarks.
        uv_path: FLAME's texture-space layout, an .npz with ``vt`` (T, 2), ``ft`` (F, 3) or an .obj with
            ``vt`` and ``f v/vt`` lines; None builds the cylindrical layout.
        n_shape: leading identity components to keep (1..300).
        n_expr: leading expression components to keep.

    Returns:
        The model, with a zero-mean identity-covariance generation prior (FLAME's shape space is unit
        variance) and no pose correctives.

    Raises:
        FileNotFoundError: a given file is missing.
        ValueError: a file is unreadable, holds a refused global or does not have FLAME's layout.
    """
    if landmark_embedding_path is None:
        raise ValueError(
            "FLAME: landmark_embedding_path is required, the face-model schema has a 68-landmark embedding "
            "(e.g. DECA's landmark_embedding.npy with 'full_lmk_faces_idx' and 'full_lmk_bary_coords')"
        )
    if not 1 <= n_shape <= FLAME_IDENTITY_COMPONENTS or n_expr < 0:
        raise ValueError(
            f"FLAME: need 1 <= n_shape <= {FLAME_IDENTITY_COMPONENTS}, n_expr >= 0; got {n_shape}, {n_expr}"
        )
    model_path = _existing(model_path, "FLAME model")
    landmark_path = _existing(landmark_embedding_path, "landmark embedding")
    uv_path = None if uv_path is None else _existing(uv_path, "UV layout")

    with model_path.open("rb") as f:
        raw = _unpickle(f, model_path)
    if not isinstance(raw, dict):
        raise ValueError(f"{model_path}: expected a pickled dict (FLAME layout), got {type(raw).__name__}")

    def field(key: str) -> np.ndarray:
        if key not in raw:
            raise ValueError(f"{model_path}: missing FLAME field {key!r}")
        try:
            return _to_array(raw[key])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{model_path}: field {key!r}: {exc}") from exc

    mean = field("v_template").astype(np.float64)
    shapedirs = field("shapedirs")
    faces = field("f").astype(np.int64)
    weights = field("weights").astype(np.float64)
    regressor = field("J_regressor")
    kintree = field("kintree_table").astype(np.int64)
    if kintree.shape != (2, 5) or not np.array_equal(kintree[:, 1:], [_FLAME_PARENTS, [1, 2, 3, 4]]):
        raise ValueError(f"{model_path}: kintree_table {kintree.tolist()} is not FLAME's (neck, jaw, eyes)")
    V = len(mean)
    if weights.shape != (V, 5) or regressor.shape != (5, V):
        raise ValueError(f"{model_path}: weights {weights.shape}, J_regressor {regressor.shape}; V = {V}")
    if shapedirs.shape[:2] != mean.shape or n_expr > shapedirs.shape[-1] - FLAME_IDENTITY_COMPONENTS:
        raise ValueError(
            f"{model_path}: shapedirs has shape {shapedirs.shape}; need (V, 3, "
            f"{FLAME_IDENTITY_COMPONENTS} + E) with V = {V} and E >= n_expr = {n_expr}"
        )
    if "posedirs" in raw:
        logger.warning(
            "%s: dropping FLAME's pose-corrective blendshapes (posedirs); posed meshes use linear blend "
            "skinning only, an approximation for large jaw/neck rotations",
            model_path.name,
        )
    face_part, order = _eyeballs(mean, faces, weights)
    landmark_faces, landmark_bary = _load_landmark_embedding(landmark_path, len(faces))
    uv, uv_faces, uv_vertex = _load_uv(uv_path, faces) if uv_path else _cylindrical_layout(mean, faces)
    model = FaceModelArrays(
        mean=mean.astype(np.float32),
        shape_basis=np.transpose(shapedirs[:, :, :n_shape], (2, 0, 1)).astype(np.float32),
        shape_prior_mean=np.zeros(n_shape, np.float32),
        shape_prior_chol=np.eye(n_shape, dtype=np.float32),
        expr_basis=np.transpose(
            shapedirs[:, :, FLAME_IDENTITY_COMPONENTS : FLAME_IDENTITY_COMPONENTS + n_expr], (2, 0, 1)
        ).astype(np.float32),
        expr_names=tuple(f"flame_expr_{i:03d}" for i in range(n_expr)),
        faces=faces,
        face_part=face_part,
        part_names=PART_NAMES,
        uv=uv.astype(np.float32),
        uv_faces=uv_faces.astype(np.int64),
        uv_vertex=uv_vertex.astype(np.int64),
        landmark_faces=landmark_faces,
        landmark_bary=landmark_bary,
        joint_names=JOINT_NAMES,
        joint_parents=np.array([-1, *_FLAME_PARENTS], np.int64),
        joint_regressor=regressor[order].astype(np.float32),
        lbs_weights=weights[:, order].astype(np.float32),
        joint_limits=JOINT_LIMITS.astype(np.float32),
        metadata={
            "name": "FLAME",
            "licence": LICENCE,
            "source": model_path.name,
            "n_shape": n_shape,
            "n_expr": n_expr,
            "landmark_embedding": landmark_path.name,
            "uv_layout": "cylindrical" if uv_path is None else uv_path.name,
        },
    )
    try:
        model.validate()
    except ValueError as exc:
        raise ValueError(f"{model_path}: {exc}") from exc
    return model
