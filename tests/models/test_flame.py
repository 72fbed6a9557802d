"""FLAME loader: a tiny synthetic model pickled in the official layout (chumpy objects, sparse regressor)."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from facecore.geometry import decode_vertices
from models.face.flame import FLAME_IDENTITY_COMPONENTS, JOINT_NAMES, load_flame
from models.face.loaders import load_face_model
from models.face.uv import cylindrical_uv

N_EXPR_FILE = 10
CENTRE = np.array([0.02, 0.0, -0.03])  # the head is off the vertical axis, as a real scan may be


class Ch:
    """What real chumpy pickles: class ``chumpy.ch.Ch`` with its ``__dict__`` (caches removed) as state."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, np.float64)
        self._dirty_vars: set[str] = set()
        self._itr = None
        self._depends_on_deps: dict = {}
        self._make_dense = False
        self._make_sparse = False


class add:  # noqa: N801 - chumpy's class name
    """A chumpy expression node: pickles its operands, never its value."""

    def __init__(self, a: Ch, b: Ch) -> None:
        self.a, self.b = a, b


Ch.__module__ = "chumpy.ch"
add.__module__ = "chumpy.ch_ops"


class Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _f32(a: np.ndarray) -> np.ndarray:
    """float64 values that float32 holds exactly (FLAME stores float64; the schema float32)."""
    return np.asarray(a, np.float32).astype(np.float64)


def _uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere, poles on ±y, outward counter-clockwise triangles."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    s, c = np.sin(lat)[:, None], np.cos(lat)[:, None]
    ring = np.stack([s * np.sin(lon), c * np.ones(n_lon), s * np.cos(lon)], -1).reshape(-1, 3)
    pts = np.concatenate([[[0, 1.0, 0]], ring, [[0, -1.0, 0]]])
    bottom = len(pts) - 1
    faces = []
    for j in range(n_lon):
        k = (j + 1) % n_lon
        faces.append([0, 1 + j, 1 + k])
        faces.append([bottom, 1 + (n_lat - 2) * n_lon + k, 1 + (n_lat - 2) * n_lon + j])
        for i in range(n_lat - 2):
            a, b = 1 + i * n_lon + j, 1 + i * n_lon + k
            faces += [[a, a + n_lon, b], [b, a + n_lon, b + n_lon]]
    return pts, np.array(faces)


def _synthetic_flame() -> dict:
    """~190-vertex head + two eyeballs in FLAME's layout; FLAME joint 3 is the subject's RIGHT eye here."""
    rng = np.random.default_rng(0)
    head, head_f = _uv_sphere(12, 16)
    eye, eye_f = _uv_sphere(3, 4)
    parts = [(0.1 * head, head_f)] + [(0.012 * eye + [x, 0.02, 0.08], eye_f) for x in (-0.03, 0.03)]
    verts, faces, owner = [], [], []
    for i, (v, f) in enumerate(parts):
        faces.append(f + sum(len(p[0]) for p in parts[:i]))
        verts.append(v + CENTRE)
        owner += [i] * len(v)
    verts, faces, owner = np.concatenate(verts), np.concatenate(faces), np.array(owner)
    V = len(verts)
    weights = np.zeros((V, 5))
    weights[owner == 0, :3] = rng.dirichlet(np.ones(3), (owner == 0).sum())
    weights[owner == 1, 3] = 1.0
    weights[owner == 2, 4] = 1.0
    regressor = np.where(rng.random((5, V)) < 0.05, rng.random((5, V)), 0.0)
    regressor /= regressor.sum(1, keepdims=True)
    return {
        "v_template": _f32(verts),
        "shapedirs": Ch(_f32(1e-3 * rng.standard_normal((V, 3, FLAME_IDENTITY_COMPONENTS + N_EXPR_FILE)))),
        "posedirs": rng.standard_normal((V, 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(_f32(regressor)),
        "weights": _f32(weights),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        "f": faces.astype(np.uint32),
        "J": rng.standard_normal((5, 3)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def _dump(path: Path, obj: object, protocol: int = 2) -> Path:
    """Pickle with ``chumpy.ch`` / ``chumpy.ch_ops`` importable only while writing (as where FLAME was)."""
    modules = {"chumpy": types.ModuleType("chumpy")}
    for cls in (Ch, add):
        modules[cls.__module__] = types.ModuleType(cls.__module__)
        setattr(modules[cls.__module__], cls.__name__, cls)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.fixture(scope="module")
def flame(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The source arrays and the files: model (.pkl), landmark embedding (.npy)."""
    root = tmp_path_factory.mktemp("flame")
    src = _synthetic_flame()
    rng = np.random.default_rng(1)
    bary = rng.dirichlet(np.ones(3), 68)
    lmk = {
        "full_lmk_faces_idx": rng.integers(0, len(src["f"]), (1, 68)),
        "full_lmk_bary_coords": bary[None],
        "static_lmk_faces_idx": np.zeros(51, np.int64),
    }
    np.save(root / "landmark_embedding.npy", lmk, allow_pickle=True)  # how DECA's file was written
    return {"src": src, "pkl": _dump(root / "generic_model.pkl", src), "lmk": root / "landmark_embedding.npy"}


def _load(flame: dict, **kwargs) -> object:
    return load_flame(flame["pkl"], landmark_embedding_path=flame["lmk"], n_expr=N_EXPR_FILE, **kwargs)


@pytest.mark.parametrize("protocol", [0, 2])
def test_arrays_round_trip_exactly(flame: dict, tmp_path: Path, protocol: int, caplog) -> None:
    src = flame["src"]
    pkl = _dump(tmp_path / "generic_model.pkl", src, protocol)
    with caplog.at_level(logging.WARNING, logger="models.face.flame"):
        model = load_flame(pkl, landmark_embedding_path=flame["lmk"], n_expr=N_EXPR_FILE)
    assert "chumpy" not in sys.modules
    assert sum("posedirs" in r.getMessage() for r in caplog.records) == 1
    sd = src["shapedirs"].x
    np.testing.assert_array_equal(model.mean, src["v_template"])
    np.testing.assert_array_equal(model.shape_basis, sd[:, :, :FLAME_IDENTITY_COMPONENTS].transpose(2, 0, 1))
    np.testing.assert_array_equal(model.expr_basis, sd[:, :, FLAME_IDENTITY_COMPONENTS:].transpose(2, 0, 1))
    np.testing.assert_array_equal(model.faces, src["f"])
    # FLAME joint 3 is the right eye in this file: the loader reorders to (..., eye_left, eye_right).
    order = [0, 1, 2, 4, 3]
    assert model.joint_names == JOINT_NAMES
    np.testing.assert_array_equal(model.joint_parents, [-1, 0, 1, 1, 1])
    np.testing.assert_array_equal(model.joint_regressor, src["J_regressor"].toarray()[order])
    np.testing.assert_array_equal(model.lbs_weights, src["weights"][:, order])
    assert model.expr_names[0] == "flame_expr_000" and model.n_expr == N_EXPR_FILE
    np.testing.assert_array_equal(model.shape_prior_mean, 0.0)
    np.testing.assert_array_equal(model.shape_prior_chol, np.eye(FLAME_IDENTITY_COMPONENTS))
    eye_x = [model.mean[model.faces[model.face_part == i]][..., 0].mean() for i in (1, 2)]
    assert (model.face_part == 1).sum() == (model.face_part == 2).sum() == 16  # each eyeball's triangles
    assert model.part_names == ("skin", "eyeball_left", "eyeball_right")
    assert eye_x[0] > CENTRE[0] > eye_x[1]
    assert model.metadata["name"] == "FLAME" and model.metadata["source"] == "generic_model.pkl"
    assert "not redistributable" in model.metadata["licence"]


def test_landmark_embedding_loads(flame: dict) -> None:
    model = _load(flame)
    lmk = np.load(flame["lmk"], allow_pickle=True).item()
    np.testing.assert_array_equal(model.landmark_faces, lmk["full_lmk_faces_idx"][0])
    np.testing.assert_allclose(model.landmark_bary, lmk["full_lmk_bary_coords"][0], rtol=1e-6)


def test_truncation_keeps_leading_components(flame: dict) -> None:
    model = load_flame(flame["pkl"], landmark_embedding_path=flame["lmk"], n_shape=5, n_expr=3)
    sd = flame["src"]["shapedirs"].x
    assert (model.n_shape, model.n_expr) == (5, 3)
    np.testing.assert_array_equal(model.shape_basis, sd[:, :, :5].transpose(2, 0, 1))
    np.testing.assert_array_equal(model.expr_basis, sd[:, :, 300:303].transpose(2, 0, 1))
    assert model.shape_prior_chol.shape == (5, 5)


@pytest.mark.parametrize("counts", [{"n_shape": 301}, {"n_shape": 0}, {"n_expr": N_EXPR_FILE + 1}])
def test_component_counts_out_of_range(flame: dict, counts: dict) -> None:
    with pytest.raises(ValueError, match="n_shape|n_expr"):
        load_flame(flame["pkl"], landmark_embedding_path=flame["lmk"], **counts)


def test_cylindrical_uv_is_centred_on_the_head(flame: dict) -> None:
    model = _load(flame)
    assert model.metadata["uv_layout"] == "cylindrical"
    skin = model.uv_faces[model.face_part == 0]
    front = np.argmax(model.mean[:, 2] - 10 * np.abs(model.mean[:, 1] - CENTRE[1]))  # front of the equator
    u_front = model.uv[np.flatnonzero(model.uv_vertex == front)[0], 0]
    assert abs(u_front - 0.5) < 0.01  # the face is in the middle of the map, not skewed by the x/z offset
    np.testing.assert_array_equal(model.uv_vertex[model.uv_faces], model.faces)
    assert skin.size and 0 <= model.uv[:, 1].min() and model.uv[:, 1].max() <= 1
    assert -0.25 < model.uv[:, 0].min() and model.uv[:, 0].max() < 1.25  # seam copies: u is periodic


@pytest.mark.parametrize("kind", ["npz", "obj"])
def test_uv_from_flame_texture_file(flame: dict, tmp_path: Path, kind: str) -> None:
    src = flame["src"]
    vt, ft, _ = cylindrical_uv(src["v_template"] * [1, 1, -1], src["f"].astype(np.int64))  # seams split
    path = tmp_path / f"head_template.{kind}"
    if kind == "npz":
        np.savez(path, vt=vt, ft=ft)
    else:
        lines = [f"v {x} {y} {z}" for x, y, z in src["v_template"]]
        lines += [f"vt {u!r} {v!r}" for u, v in vt.tolist()]
        corners = np.stack([src["f"] + 1, ft + 1], -1)  # (F, 3, 2) 1-based v/vt
        lines += ["f " + " ".join(f"{a}/{b}" for a, b in tri) for tri in corners]
        path.write_text("\n".join(lines) + "\n")
    model = _load(flame, uv_path=path)
    np.testing.assert_array_equal(model.uv[model.uv_faces], vt[ft])
    np.testing.assert_array_equal(model.uv_vertex[model.uv_faces], src["f"])
    assert model.metadata["uv_layout"] == path.name


def test_uv_vertex_shared_by_two_geometry_vertices_is_refused(flame: dict, tmp_path: Path) -> None:
    faces = flame["src"]["f"].astype(np.int64)
    ft = faces.copy()
    ft[0, 0] = faces[0, 1]  # one texture vertex now stands for two geometry vertices
    np.savez(tmp_path / "uv.npz", vt=np.zeros((faces.max() + 1, 2)), ft=ft)
    with pytest.raises(ValueError, match="exactly one"):
        _load(flame, uv_path=tmp_path / "uv.npz")


def test_landmark_embedding_is_required(flame: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="landmark_embedding_path is required"):
        load_flame(flame["pkl"])
    with pytest.raises(FileNotFoundError, match="landmark embedding file not found"):
        load_flame(flame["pkl"], landmark_embedding_path=tmp_path / "missing.npy")


def test_foreign_global_is_refused_and_not_run(flame: dict, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    pkl = _dump(tmp_path / "evil.pkl", dict(flame["src"], bs_style=Exploit(target)))
    with pytest.raises(ValueError, match=r"refusing to load global '(posix|os|nt)\.system'"):
        load_flame(pkl, landmark_embedding_path=flame["lmk"], n_expr=N_EXPR_FILE)
    assert not target.exists()


def test_chumpy_expression_without_stored_value_is_named(flame: dict, tmp_path: Path) -> None:
    src = flame["src"]
    expression = add(Ch(src["v_template"]), Ch(src["v_template"]))
    pkl = _dump(tmp_path / "expr.pkl", dict(src, v_template=expression))
    with pytest.raises(ValueError, match=r"'v_template'.*chumpy\.ch_ops\.add.*stores no array"):
        load_flame(pkl, landmark_embedding_path=flame["lmk"], n_expr=N_EXPR_FILE)


def test_save_and_reload_through_load_face_model(flame: dict, tmp_path: Path) -> None:
    model = load_face_model(flame["pkl"], landmark_embedding_path=flame["lmk"], n_expr=N_EXPR_FILE)
    model.save(tmp_path / "flame.npz")
    again = load_face_model(tmp_path / "flame.npz")
    for name in ("mean", "shape_basis", "expr_basis", "faces", "uv", "landmark_bary", "joint_regressor"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name), err_msg=name)
    assert again.joint_names == model.joint_names and again.part_names == model.part_names
    assert again.metadata["name"] == "FLAME"


def test_decode_is_mean_plus_basis(flame: dict) -> None:
    model = _load(flame)
    beta = np.random.default_rng(2).standard_normal(model.n_shape)
    expected = model.mean + np.einsum("k,kvc->vc", beta, model.shape_basis.astype(np.float64))
    np.testing.assert_allclose(decode_vertices(model, beta)[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [("model.obj", ValueError, r"unsupported.*\.npz.*\.pkl"), ("gone.npz", FileNotFoundError, "gone.npz")],
)
def test_load_face_model_errors(tmp_path: Path, name: str, error: type, match: str) -> None:
    (tmp_path / "model.obj").write_text("v 0 0 0\n")
    with pytest.raises(error, match=match):
        load_face_model(tmp_path / name)
