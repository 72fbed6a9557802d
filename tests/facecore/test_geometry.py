"""numpy geometry of the service: schema validation, decode errors, UV sampling and the detailed mesh."""

from __future__ import annotations

import numpy as np
import pytest

from facecore import geometry as geo

DEFAULT = __import__("pathlib").Path(__file__).parents[2] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="module")
def arrays() -> geo.FaceModelArrays:
    return geo.FaceModelArrays.load(DEFAULT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": np.full(150, np.nan)}, "shape: contains NaN"),
        ({"shape": np.zeros(151)}, "shape: has 151 coefficients, the model has 150"),
        ({"shape": np.zeros((2, 3, 4))}, "shape: expected shape"),
        ({"shape": "abc"}, "shape: not a numeric array"),
        ({"expression": np.full(51, np.inf)}, "expression: contains NaN or inf"),
        ({"pose": np.zeros((4, 3))}, "pose: expected shape"),
        ({"pose": np.full((5, 3), np.nan)}, "pose: contains NaN"),
        ({"shape": np.zeros((2, 150)), "expression": np.zeros((3, 51))}, "batch size 2 does not match 3"),
    ],
)
def test_decode_rejects_bad_codes(arrays, kwargs, message):
    with pytest.raises(ValueError, match=message):
        geo.decode_vertices(arrays, **kwargs)


def test_validate_names_the_broken_field(arrays, tmp_path):
    data = dict(np.load(DEFAULT, allow_pickle=False))
    broken = dict(data, expr_basis=data["expr_basis"][:, :10])
    np.savez(tmp_path / "bad.npz", **broken)
    with pytest.raises(ValueError, match=r"bad\.npz: field 'expr_basis' has shape"):
        geo.FaceModelArrays.load(tmp_path / "bad.npz")
    missing = {k: v for k, v in data.items() if k != "landmark_bary"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match="missing field 'landmark_bary'"):
        geo.FaceModelArrays.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable face-model npz"):
        geo.FaceModelArrays.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        geo.FaceModelArrays.load(tmp_path / "nope.npz")


def test_save_load_round_trip(arrays, tmp_path):
    arrays.save(tmp_path / "m.npz")
    again = geo.FaceModelArrays.load(tmp_path / "m.npz")
    for name in ("mean", "shape_basis", "faces", "uv", "uv_faces", "landmark_faces", "joint_limits"):
        np.testing.assert_array_equal(getattr(again, name), getattr(arrays, name))
    assert again.expr_names == arrays.expr_names and again.metadata["name"] == "anny-head"


def test_uv_sampling_covers_the_skin_without_overlap(arrays):
    s = geo.uv_sampling(arrays, 128)
    assert s.grid.shape == (129, 129)
    valid = s.grid >= 0
    assert 0.5 < valid.mean() < 1.0  # the skin fills most of the cylindrical layout
    assert np.all(arrays.face_part[s.face] == 0)
    assert np.allclose(s.bary.sum(1), 1, atol=1e-5) and s.bary.min() >= 0
    # each valid grid point lies inside its triangle in UV space
    tri_uv = arrays.uv[arrays.uv_faces[s.face]]
    recon = np.einsum("nk,nkc->nc", s.bary, tri_uv)
    diff = recon - s.uv
    diff[:, 0] -= np.round(diff[:, 0])  # u is periodic: seam triangles also cover the other side
    assert np.abs(diff).max() < 1e-5
    assert geo.uv_sampling(arrays, 128) is s  # cached
    with pytest.raises(ValueError, match="resolution"):
        geo.uv_sampling(arrays, 8)


def _edge_use(points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coincident points merged (1e-9 m): the merged index of each point, and how many triangles use each edge."""
    _, weld = np.unique(np.round(points / 1e-9).astype(np.int64), axis=0, return_inverse=True)
    f = weld.reshape(-1)[faces]
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    return weld.reshape(-1), np.unique(edges, axis=0, return_counts=True)[1]


def test_mesh_sampling_subdivides_every_skin_triangle(arrays):
    s = geo.mesh_sampling(arrays, 256)
    assert s.level == geo.subdivision_level(arrays, 256) == 4
    assert geo.mesh_sampling(arrays, 256) is s and geo.mesh_sampling(arrays, 250) is s  # cached by level
    # about as many vertices as the 256² UV grid puts on the skin
    assert 0.8 < len(s.face) / len(geo.uv_sampling(arrays, 256).face) < 1.25
    # kept as they are: all non-skin triangles and the skin inside the mouth, nothing else
    inner = geo.inner_mouth_skin(arrays)
    assert 50 < len(inner) < 400 and np.all(arrays.face_part[inner] == 0)
    assert np.array_equal(s.kept_faces, np.union1d(np.flatnonzero(arrays.face_part != 0), inner))
    # level² small triangles per subdivided coarse triangle, barycentrics on the 1/level lattice
    assert len(s.faces) == (len(arrays.faces) - len(s.kept_faces)) * s.level**2
    assert np.allclose(s.bary.sum(1), 1, atol=1e-6) and s.bary.min() >= 0
    assert np.abs(s.bary * s.level - np.round(s.bary * s.level)).max() < 1e-5
    # displacement weight: 0 on the coarse vertices shared with kept triangles, 1 away from them
    assert s.weight.min() == 0.0 and s.weight.max() == 1.0 and np.mean(s.weight == 1.0) > 0.9
    with pytest.raises(ValueError, match="resolution"):
        geo.mesh_sampling(arrays, 8)


def test_detailed_mesh_offsets_along_normals(arrays):
    verts = geo.decode_vertices(arrays)[0]
    flat = geo.detailed_mesh(arrays, verts, None, resolution=128)
    s = geo.mesh_sampling(arrays, 128)
    n = len(s.face)
    # without displacement the vertices lie on the coarse triangles
    on_surface = np.einsum("nk,nkc->nc", s.bary, verts[arrays.faces[s.face]])
    assert np.abs(flat.positions[:n] - on_surface).max() < 1e-6
    # a constant 2 mm displacement moves every vertex 2 mm × its weight along the interpolated normal
    disp = np.full((64, 64), 0.002)
    bumped = geo.detailed_mesh(arrays, verts, disp, resolution=128)
    vn = geo.vertex_normals(verts, arrays.faces)
    nrm = np.einsum("nk,nkc->nc", s.bary, vn[arrays.faces[s.face]])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    expected = 0.002 * s.weight[:, None] * nrm
    assert np.abs(bumped.positions[:n] - flat.positions[:n] - expected).max() < 1e-6
    assert np.allclose(np.linalg.norm(bumped.positions[:n] - flat.positions[:n], axis=1)[s.weight == 1], 0.002)
    # the kept coarse triangles do not move: the skin meets them where its weight is 0
    assert np.array_equal(bumped.positions[n:], flat.positions[n:])
    # outward: the head gets bigger
    assert np.ptp(bumped.positions[:n, 0]) > np.ptp(flat.positions[:n, 0])
    # the mesh is well formed: indices in range, normals unit, eyeballs and cavity kept as coarse faces
    assert flat.faces.max() < len(flat.positions) and flat.faces.min() >= 0
    assert np.allclose(np.linalg.norm(flat.normals, axis=1), 1, atol=1e-4)
    assert len(flat.faces) == len(s.faces) + len(s.kept_faces)


@pytest.mark.parametrize("resolution", [96, 256])
def test_detailed_mesh_is_as_closed_as_the_coarse_mesh(arrays, resolution):
    """No triangle bridges the layers the cylindrical layout folds together (jaw over neck, crown, ears), the
    subdivided skin is as closed as the coarse one, and the displaced surface has no crack (at the seam, or
    where it meets the eyes' and mouth's coarse triangles)."""
    rng = np.random.default_rng(0)
    verts = geo.decode_vertices(arrays, arrays.sample_shape(rng))[0].astype(np.float64)
    s = geo.mesh_sampling(arrays, resolution)
    L = s.level
    u = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    disp = 0.001 * np.sin(3 * u)[None, :] * np.cos(5 * u[:, None] / 2)  # periodic in u, like a head's map
    mesh = geo.detailed_mesh(arrays, verts, disp, resolution)
    p = mesh.positions.astype(np.float64)
    coarse_edge = np.linalg.norm(verts[arrays.faces] - verts[np.roll(arrays.faces, 1, 1)], axis=2).max()
    assert np.linalg.norm(p[s.faces] - p[np.roll(s.faces, 1, 1)], axis=2).max() < 1.2 * coarse_edge / L
    # merge the points that are one point of the coarse surface (seam copies, shared edges)
    kept_uv = np.unique(arrays.uv_faces[s.kept_faces])
    base = np.concatenate(
        [np.einsum("nk,nkc->nc", s.bary, verts[arrays.faces[s.face]]), verts[arrays.uv_vertex[kept_uv]]]
    )
    weld, use = _edge_use(base, mesh.faces)
    # displaced, they still coincide: no crack
    spread = np.zeros(weld.max() + 1)
    first = np.full(weld.max() + 1, -1)
    first[weld[::-1]] = np.arange(len(weld))[::-1]
    np.maximum.at(spread, weld, np.linalg.norm(p - p[first[weld]], axis=1))
    assert spread.max() < 1e-6
    # every edge used by two triangles, except: the coarse mesh's open edges (the neck opening), each now L
    # edges, and the T-junctions where L subdivided edges meet one kept coarse edge (points on that edge)
    _, coarse_use = _edge_use(verts, arrays.faces)
    f = arrays.faces
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, inverse = np.unique(edges, axis=0, return_inverse=True)
    kept = np.isin(np.tile(np.arange(len(f)), 3), s.kept_faces)
    touches_kept = np.bincount(inverse.reshape(-1), kept) > 0
    touches_split = np.bincount(inverse.reshape(-1), ~kept) > 0
    junctions = int((touches_kept & touches_split).sum()) if L > 1 else 0
    assert use.max() == 2
    assert (use == 1).sum() == L * (coarse_use == 1).sum() + (L + 1) * junctions
    assert 20 < junctions < 200


def test_sample_map_wraps_u(arrays):
    img = np.arange(8.0)[None, :].repeat(4, 0)  # columns 0..7
    uv = np.array([[0.0, 0.5], [1.0, 0.5], [-0.25, 0.5], [0.75, 0.5], [1 / 16, 0.5]])
    wrapped = geo.sample_map(img, uv, wrap_u=True)
    assert wrapped[0] == wrapped[1] == 3.5  # halfway between column 7 and column 0
    assert wrapped[2] == wrapped[3] == 5.5
    assert wrapped[4] == 0.0
    assert np.array_equal(geo.sample_map(img, uv[:2]), [0.0, 7.0])  # clamped without wrap


def test_detailed_mesh_rejects_bad_input(arrays):
    verts = geo.decode_vertices(arrays)[0]
    with pytest.raises(ValueError, match="verts: expected shape"):
        geo.detailed_mesh(arrays, verts[:10])
    with pytest.raises(ValueError, match="displacement: contains NaN"):
        geo.detailed_mesh(arrays, verts, np.full((8, 8), np.nan), resolution=64)
    with pytest.raises(ValueError, match="displacement: expected a"):
        geo.detailed_mesh(arrays, verts, np.zeros((8, 8, 3)), resolution=64)


def test_limit_shape_pulls_only_heads_outside_the_prior(arrays):
    model = arrays
    rng = np.random.default_rng(0)
    draws = model.sample_shape(rng, 20_000)
    limited = model.limit_shape(draws)
    moved = np.abs(limited - draws).max(1) > 1e-9
    assert 5 <= moved.sum() <= 60  # about 0.1 % of the prior's own heads lie beyond its 99.9 % radius
    far = model.shape_prior_mean + 50.0 * (draws[0] - model.shape_prior_mean)
    eps = np.linalg.solve(model.shape_prior_chol.astype(np.float64), model.limit_shape(far) - model.shape_prior_mean)
    assert np.linalg.norm(eps) == pytest.approx(geo.prior_radius(model.n_shape), rel=1e-6)
    assert geo.prior_radius(150) == pytest.approx(14.466, abs=0.005)  # scipy's chi(150).ppf(0.999): 14.466
