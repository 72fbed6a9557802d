"""Tests for facecore.formats: PNG encodings, normal maps, OBJ zip, GLB (checked by the Khronos validator)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from facecore.formats import (
    albedo_png,
    displacement_png,
    glb_bytes,
    normal_map_from_displacement,
    normal_map_png,
    obj_files,
    read_displacement_png,
    resample_texture,
    vertex_tangents,
    write_obj_zip,
)
from facecore.geometry import MeshData
from tests.helpers.gltf import assert_valid_gltf, run_gltf_validator


# ---------------------------------------------------------------------------------------------- fixtures
def band_mesh(n_lat: int = 16, n_lon: int = 24, radius: float = 0.1) -> MeshData:
    """A sphere band (latitude ±60°) with a duplicated seam: (n_lat+1)·(n_lon+1) vertices, v up.

    u follows longitude (seam at the back, u = 0.5 faces +z), v follows latitude; triangles are
    counter-clockwise seen from outside, as in ``facecore.geometry``.
    """
    v = np.linspace(1.0, 0.0, n_lat + 1)  # row 0 is v = 1 (top)
    u = np.linspace(0.0, 1.0, n_lon + 1)
    uu, vv = np.meshgrid(u, v)
    lat = (vv - 0.5) * (2 * np.pi / 3)
    lon = (uu - 0.5) * 2 * np.pi
    normals = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1).reshape(-1, 3)
    grid = np.arange(uu.size).reshape(uu.shape)
    a, b, c, d = grid[:-1, :-1].ravel(), grid[:-1, 1:].ravel(), grid[1:, :-1].ravel(), grid[1:, 1:].ravel()
    faces = np.concatenate([np.stack([c, d, a], 1), np.stack([a, d, b], 1)]).astype(np.int64)
    uv = np.stack([uu.ravel(), vv.ravel()], 1)
    return MeshData((radius * normals).astype(np.float32), normals.astype(np.float32), uv.astype(np.float32), faces)


@pytest.fixture(scope="module")
def mesh() -> MeshData:
    return band_mesh()


@pytest.fixture(scope="module")
def albedo() -> bytes:
    rng = np.random.default_rng(0)
    return albedo_png(rng.random((64, 128, 3)))


@pytest.fixture(scope="module")
def normal_png() -> bytes:
    yy, xx = np.mgrid[0:64, 0:128]
    disp = 2e-4 * np.sin(xx / 128 * 4 * np.pi) * np.cos(yy / 64 * 2 * np.pi)
    return normal_map_png(normal_map_from_displacement(disp, 1e-3, wrap_u=True))


def decode_png(data: bytes) -> tuple[np.ndarray, dict]:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img), dict(img.info)


# ---------------------------------------------------------------------------------------------- albedo PNG
def test_albedo_png_uint8_is_lossless_and_tagged_srgb() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    pixels, info = decode_png(albedo_png(rgb))
    np.testing.assert_array_equal(pixels, rgb)
    assert info["srgb"] == 0  # the sRGB chunk, perceptual intent
    assert info["gamma"] == pytest.approx(0.45455)


def test_albedo_png_float_quantises_to_nearest_code() -> None:
    values = np.array([[[0.0, 0.5, 1.0], [-0.2, 1.3, 0.25]]])
    pixels, _ = decode_png(albedo_png(values))
    np.testing.assert_array_equal(pixels, [[[0, 128, 255], [0, 255, 64]]])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4)),
        np.zeros((4, 4, 4)),
        np.zeros((0, 4, 3)),
        np.full((4, 4, 3), np.nan),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4, 3), bool),
        [[[0.0, 0.0, 0.0]]],
    ],
    ids=["2d", "rgba", "empty", "nan", "uint16", "bool", "list"],
)
def test_albedo_png_rejects_bad_input(bad: object) -> None:
    with pytest.raises(ValueError, match="albedo"):
        albedo_png(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ displacement PNG
def test_displacement_png_round_trip_within_half_a_step() -> None:
    disp = np.random.default_rng(2).uniform(-2e-3, 1.5e-3, (32, 48))
    png, sidecar = displacement_png(disp)
    scale = sidecar["displacement_scale_m"]
    assert scale == pytest.approx(np.abs(disp).max() / 32767)
    assert sidecar["displacement_offset"] == 32768
    json.dumps(sidecar)  # the sidecar is JSON-ready
    codes, info = decode_png(png)
    assert codes.dtype == np.uint16 and codes.shape == disp.shape
    assert float(info["displacement_scale_m"]) == scale  # exact: repr round-trips
    assert int(info["displacement_offset"]) == 32768
    back = read_displacement_png(png)
    assert back.dtype == np.float32 and back.shape == disp.shape
    float32_rounding = float(np.spacing(np.float32(np.abs(disp).max())))
    assert np.abs(back - disp).max() <= scale / 2 + float32_rounding


def test_displacement_png_given_scale_and_zero_map() -> None:
    disp = np.zeros((4, 5))
    disp[1, 2] = 1e-4
    png, sidecar = displacement_png(disp, scale=1e-7)
    assert sidecar["displacement_scale_m"] == 1e-7
    codes, _ = decode_png(png)
    assert codes[1, 2] == 32768 + 1000 and codes[0, 0] == 32768
    np.testing.assert_allclose(read_displacement_png(png), disp, atol=5e-8)
    flat_png, flat_sidecar = displacement_png(np.zeros((3, 3)))
    assert flat_sidecar["displacement_scale_m"] > 0
    np.testing.assert_array_equal(read_displacement_png(flat_png), 0.0)


def test_displacement_png_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="disp"):
        displacement_png(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="disp"):
        displacement_png(np.zeros((2, 2, 1)))
    with pytest.raises(ValueError, match="exceeds the range"):
        displacement_png(np.full((2, 2), 1e-2), scale=1e-7)
    for bad_scale in (0.0, -1.0, float("nan"), "1e-6", True):
        with pytest.raises(ValueError, match="scale"):
            displacement_png(np.zeros((2, 2)), scale=bad_scale)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16-bit"):
        read_displacement_png(albedo_png(np.zeros((2, 2, 3))))
    with pytest.raises(ValueError, match="metadata"):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((2, 2), np.uint16)).save(buf, format="PNG")
        read_displacement_png(buf.getvalue())
    with pytest.raises(ValueError, match="not PNG"):
        read_displacement_png(b"GIF89a....")


# ---------------------------------------------------------------------------------------------- normal maps
def test_flat_displacement_gives_neutral_normal_colour() -> None:
    normals = normal_map_from_displacement(np.full((6, 7), 3e-3), 1e-3)
    assert normals.shape == (6, 7, 3) and normals.dtype == np.float32
    np.testing.assert_allclose(normals, np.broadcast_to([0, 0, 1], normals.shape))
    pixels, info = decode_png(normal_map_png(normals))
    assert (pixels == [128, 128, 255]).all()
    assert "srgb" not in info  # normal maps are linear data


def test_ramp_along_u_tilts_towards_minus_x() -> None:
    su, sv, slope = 2e-4, 5e-4, 0.5  # metres per texel in u and v; displacement rises 0.5 m per metre of u
    cols = np.arange(10)
    disp = np.tile(slope * su * cols, (6, 1))
    normals = normal_map_from_displacement(disp, (su, sv))
    expected = np.array([-slope, 0.0, 1.0]) / np.hypot(slope, 1.0)
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-6)


def test_ramp_along_v_is_green_up() -> None:
    su, sv, slope = 2e-4, 5e-4, 2.0
    v_distance = sv * (7 - np.arange(8))  # row 0 is the top of the image, v = 1
    disp = np.tile(slope * v_distance[:, None], (1, 5))
    normals = normal_map_from_displacement(disp, (su, sv))
    expected = np.array([0.0, -slope, 1.0]) / np.hypot(slope, 1.0)  # surface rising towards +v faces -Y
    np.testing.assert_allclose(normals, np.broadcast_to(expected, normals.shape), atol=1e-6)
    pixels, _ = decode_png(normal_map_png(normals))
    assert pixels[..., 1].max() < 128 and (pixels[..., 0] == 128).all()


def test_wrap_u_uses_the_opposite_column_at_the_seam() -> None:
    disp = np.tile(1e-3 * np.sin(np.arange(12) / 12 * 2 * np.pi), (3, 1))
    wrapped = normal_map_from_displacement(disp, 1e-3, wrap_u=True)
    open_edge = normal_map_from_displacement(disp, 1e-3)
    dh_dx = (disp[0, 1] - disp[0, -1]) / 2e-3
    np.testing.assert_allclose(wrapped[:, 0], np.broadcast_to([-dh_dx, 0, 1] / np.hypot(dh_dx, 1), (3, 3)), atol=1e-6)
    np.testing.assert_allclose(wrapped[:, 1:-1], open_edge[:, 1:-1])


def test_normal_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="texel_size_m"):
        normal_map_from_displacement(np.zeros((4, 4)), 0.0)
    with pytest.raises(ValueError, match="texel_size_m"):
        normal_map_from_displacement(np.zeros((4, 4)), (1e-3, -1e-3))
    with pytest.raises(ValueError, match="disp"):
        normal_map_from_displacement(np.zeros((1, 4)), 1e-3)
    with pytest.raises(ValueError, match="disp"):
        normal_map_from_displacement(np.array([[0.0, np.nan], [0.0, 0.0]]), 1e-3)
    with pytest.raises(ValueError, match="normals"):
        normal_map_png(np.zeros((4, 4, 2)))


# ---------------------------------------------------------------------------------------------- OBJ
def test_obj_zip_reloads_with_trimesh(mesh: MeshData, albedo: bytes, normal_png: bytes, tmp_path: Path) -> None:
    data = write_obj_zip(mesh, {"albedo": albedo, "normal": normal_png}, name="head")
    assert data == write_obj_zip(mesh, {"normal": normal_png, "albedo": albedo}, name="head")  # deterministic
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["head.obj", "head.mtl", "head_albedo.png", "head_normal.png"]
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        zf.extractall(tmp_path)
    mtl = (tmp_path / "head.mtl").read_text()
    for line in (
        "Kd 1 1 1",
        "illum 2",
        "map_Kd head_albedo.png",
        "norm head_normal.png",
        "map_Bump head_normal.png",
    ):
        assert line in mtl.splitlines()
    loaded = trimesh.load(tmp_path / "head.obj", process=False, force="mesh")
    assert len(loaded.vertices) == len(mesh.positions)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_allclose(loaded.vertices, mesh.positions, atol=1e-7)
    assert np.abs(loaded.visual.uv - mesh.uv).max() <= 1e-6
    image = loaded.visual.material.image
    assert image is not None and image.size == (128, 64)


def test_obj_without_normal_map_omits_it(mesh: MeshData, albedo: bytes) -> None:
    files = obj_files(mesh, {"albedo": albedo})
    assert list(files) == ["mesh.obj", "mesh.mtl", "mesh_albedo.png"]
    assert b"norm" not in files["mesh.mtl"] and b"map_Bump" not in files["mesh.mtl"]
    obj = files["mesh.obj"].decode().splitlines()
    assert obj[1:3] == ["mtllib mesh.mtl", "o mesh"] and "usemtl mesh" in obj
    i, j, k = mesh.faces[0] + 1
    assert f"f {i}/{i}/{i} {j}/{j}/{j} {k}/{k}/{k}" in obj


@pytest.mark.parametrize(
    ("textures", "name", "match"),
    [
        ({}, "mesh", "textures"),
        ({"albedo": b"png"}, "mesh", "not PNG"),
        ({"albedo": None}, "mesh", "albedo"),
        ({"albedo": "ALBEDO", "specular": "ALBEDO"}, "mesh", "roles"),
        ({"albedo": "ALBEDO"}, "../evil", "name"),
        ({"albedo": "ALBEDO"}, "two words", "name"),
    ],
)
def test_obj_rejects_bad_input(mesh: MeshData, albedo: bytes, textures: dict, name: str, match: str) -> None:
    textures = {k: albedo if v == "ALBEDO" else v for k, v in textures.items()}
    with pytest.raises(ValueError, match=match):
        write_obj_zip(mesh, textures, name=name)


# ---------------------------------------------------------------------------------------------- GLB
def arkit_targets(mesh: MeshData) -> dict[str, np.ndarray]:
    p = mesh.positions
    return {
        "jawOpen": np.where(p[:, 1:2] < 0, [0.0, -0.01, 0.0], 0.0).astype(np.float32),
        "mouthSmileLeft": (0.002 * mesh.normals * (p[:, :1] > 0)).astype(np.float32),
        "eyeBlinkRight": np.zeros_like(p),
    }


@pytest.mark.parametrize("variant", ["plain", "normal_map", "morph_targets"])
def test_glb_passes_khronos_validator_and_reloads(
    variant: str, mesh: MeshData, albedo: bytes, normal_png: bytes, tmp_path: Path
) -> None:
    kwargs: dict = {}
    if variant != "plain":
        kwargs["normal_png"] = normal_png
    if variant == "morph_targets":
        kwargs["morph_targets"] = arkit_targets(mesh)
    data = glb_bytes(mesh, albedo, **kwargs)
    assert data == glb_bytes(mesh, albedo, **kwargs)  # deterministic
    path = tmp_path / f"{variant}.glb"
    path.write_bytes(data)

    report = assert_valid_gltf(path)
    info = report["info"]
    assert info["drawCallCount"] == 1 and info["totalVertexCount"] == len(mesh.positions)
    assert info["hasMorphTargets"] == (variant == "morph_targets")

    scene = trimesh.load(path, process=False)
    assert sum(len(g.vertices) for g in scene.geometry.values()) == len(mesh.positions)


def test_validator_script_fails_on_errors(mesh: MeshData, albedo: bytes, tmp_path: Path) -> None:
    gltf = pygltflib.GLTF2.load_from_bytes(glb_bytes(mesh, albedo))
    gltf.accessors[gltf.meshes[0].primitives[0].attributes.POSITION].max = [0.0, 0.0, 0.0]  # wrong bound
    path = tmp_path / "broken.glb"
    path.write_bytes(b"".join(gltf.save_to_bytes()))
    returncode, report = run_gltf_validator(path)
    assert returncode == 1 and report["issues"]["numErrors"] > 0
    assert "ACCESSOR_MAX_MISMATCH" in {m["code"] for m in report["issues"]["messages"]}


def test_glb_structure(mesh: MeshData, albedo: bytes, normal_png: bytes) -> None:
    targets = arkit_targets(mesh)
    data = glb_bytes(mesh, albedo, normal_png, targets, name="face")
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    gltf = pygltflib.GLTF2.load_from_bytes(data)
    blob = gltf.binary_blob()
    assert gltf.buffers[0].byteLength == len(blob) and len(blob) % 4 == 0
    assert all(view.byteOffset % 4 == 0 for view in gltf.bufferViews)

    def read(index: int) -> np.ndarray:
        acc = gltf.accessors[index]
        view = gltf.bufferViews[acc.bufferView]
        dtype = np.uint32 if acc.componentType == pygltflib.UNSIGNED_INT else np.float32
        width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
        raw = blob[view.byteOffset + (acc.byteOffset or 0) : view.byteOffset + view.byteLength]
        return np.frombuffer(raw, dtype).reshape(acc.count, width)

    (gmesh,) = gltf.meshes
    (prim,) = gmesh.primitives
    np.testing.assert_array_equal(read(prim.indices).reshape(-1, 3), mesh.faces)
    np.testing.assert_array_equal(read(prim.attributes.POSITION), mesh.positions)
    uv = read(prim.attributes.TEXCOORD_0)
    np.testing.assert_allclose(uv, np.stack([mesh.uv[:, 0], 1 - mesh.uv[:, 1]], 1))  # glTF is v down
    assert gltf.accessors[prim.attributes.POSITION].min == mesh.positions.min(0).tolist()
    assert gmesh.extras == {"targetNames": ["jawOpen", "mouthSmileLeft", "eyeBlinkRight"]}
    assert gmesh.weights == [0.0, 0.0, 0.0]
    for target, delta in zip(prim.targets, targets.values(), strict=True):
        acc = gltf.accessors[target["POSITION"]]
        np.testing.assert_array_equal(read(target["POSITION"]), delta)
        assert acc.min == delta.min(0).tolist() and acc.max == delta.max(0).tolist()
    np.testing.assert_array_equal(read(prim.attributes.TANGENT), vertex_tangents(mesh))
    material = gltf.materials[prim.material]
    assert material.pbrMetallicRoughness.metallicFactor == 0.0
    assert material.normalTexture is not None
    images = [gltf.images[gltf.textures[i].source] for i in (0, material.normalTexture.index)]
    for image, png in zip(images, (albedo, normal_png), strict=True):
        view = gltf.bufferViews[image.bufferView]
        assert image.mimeType == "image/png"
        assert blob[view.byteOffset : view.byteOffset + view.byteLength] == png


def plane_mesh(n: int = 6, size: float = 0.2) -> MeshData:
    """A flat n×n-quad grid in z = 0 facing +z, uv = position / size (v up)."""
    yy, xx = np.mgrid[n:-1:-1, 0 : n + 1] / n  # row 0 is the top (v = 1)
    grid = np.arange(xx.size).reshape(xx.shape)
    a, b, c, d = grid[:-1, :-1].ravel(), grid[:-1, 1:].ravel(), grid[1:, :-1].ravel(), grid[1:, 1:].ravel()
    faces = np.concatenate([np.stack([c, d, a], 1), np.stack([a, d, b], 1)]).astype(np.int64)
    uv = np.stack([xx.ravel(), yy.ravel()], 1)
    positions = np.concatenate([size * uv, np.zeros((len(uv), 1))], 1)
    normals = np.broadcast_to([0.0, 0.0, 1.0], positions.shape)
    return MeshData(positions.astype(np.float32), normals.astype(np.float32), uv.astype(np.float32), faces)


def test_vertex_tangents_follow_u_and_flip_with_mirrored_uv(mesh: MeshData) -> None:
    plane = plane_mesh()
    tangents = vertex_tangents(plane)
    assert tangents.shape == (len(plane.positions), 4) and tangents.dtype == np.float32
    np.testing.assert_allclose(tangents, np.broadcast_to([1.0, 0.0, 0.0, 1.0], tangents.shape), atol=1e-6)
    mirrored = vertex_tangents(replace(plane, uv=np.stack([1 - plane.uv[:, 0], plane.uv[:, 1]], 1)))
    np.testing.assert_allclose(mirrored, np.broadcast_to([-1.0, 0.0, 0.0, -1.0], tangents.shape), atol=1e-6)
    # On the curved band the frame is the smooth one up to the 15° facets: within a few degrees of d/d(lon).
    lon = (mesh.uv[:, 0].astype(np.float64) - 0.5) * 2 * np.pi
    along_u = np.stack([np.cos(lon), np.zeros_like(lon), -np.sin(lon)], 1)
    band = vertex_tangents(mesh)
    assert np.sum(band[:, :3] * along_u, axis=1).min() > np.cos(np.radians(10))
    np.testing.assert_array_equal(band[:, 3], 1.0)


def test_vertex_tangents_of_uv_degenerate_triangles_are_unit_and_orthogonal(mesh: MeshData) -> None:
    tangents = vertex_tangents(replace(mesh, uv=np.zeros_like(mesh.uv)))
    np.testing.assert_allclose(np.linalg.norm(tangents[:, :3], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(tangents[:, :3] * mesh.normals, axis=1), 0.0, atol=1e-6)


def replace(mesh: MeshData, **changes: np.ndarray) -> MeshData:
    return MeshData(**{**mesh.__dict__, **changes})


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("empty", "mesh.positions"),
        ("nan_positions", "mesh.positions"),
        ("short_uv", "mesh.uv"),
        ("float_faces", "mesh.faces"),
        ("face_out_of_range", "mesh.faces"),
        ("zero_normal", "mesh.normals"),
        ("morph_shape", "morph_targets"),
        ("morph_nan", "morph_targets"),
        ("morph_name", "morph_targets"),
        ("albedo_not_png", "albedo_png"),
        ("normal_not_png", "normal_png"),
        ("not_meshdata", "mesh"),
    ],
)
def test_glb_rejects_bad_input(mesh: MeshData, albedo: bytes, case: str, match: str) -> None:
    args: dict = {"mesh": mesh, "albedo_png": albedo}
    n = len(mesh.positions)
    if case == "empty":
        args["mesh"] = MeshData(*(np.zeros((0, k), np.float32) for k in (3, 3, 2)), np.zeros((0, 3), np.int64))
    elif case == "nan_positions":
        args["mesh"] = replace(mesh, positions=np.where(np.arange(n)[:, None] == 5, np.nan, mesh.positions))
    elif case == "short_uv":
        args["mesh"] = replace(mesh, uv=mesh.uv[:-1])
    elif case == "float_faces":
        args["mesh"] = replace(mesh, faces=mesh.faces.astype(np.float32))
    elif case == "face_out_of_range":
        args["mesh"] = replace(mesh, faces=mesh.faces + 1)
    elif case == "zero_normal":
        args["mesh"] = replace(mesh, normals=np.where(np.arange(n)[:, None] == 3, 0.0, mesh.normals))
    elif case == "morph_shape":
        args["morph_targets"] = {"jawOpen": np.zeros((n - 1, 3), np.float32)}
    elif case == "morph_nan":
        args["morph_targets"] = {"jawOpen": np.full((n, 3), np.nan, np.float32)}
    elif case == "morph_name":
        args["morph_targets"] = {"": np.zeros((n, 3), np.float32)}
    elif case == "albedo_not_png":
        args["albedo_png"] = b"\xff\xd8\xff\xe0 jpeg"
    elif case == "normal_not_png":
        args["normal_png"] = albedo[:40]  # truncated PNG
    elif case == "not_meshdata":
        args["mesh"] = (mesh.positions, mesh.faces)
    with pytest.raises(ValueError, match=match):
        glb_bytes(**args)


def test_resample_texture_sizes_and_values():
    ramp = np.tile(np.linspace(0.0, 1.0, 300, dtype=np.float32), (300, 1))
    rgb = np.stack([ramp, ramp.T, np.full_like(ramp, 0.25)], -1)
    up = resample_texture(rgb, 1024)
    assert up.shape == (1024, 1024, 3) and up.dtype == np.float32
    assert np.abs(up[..., 2] - 0.25).max() < 1e-5  # a constant stays constant
    assert np.abs(up[512, :, 0] - np.linspace(0, 1, 1024)).max() < 0.01  # a ramp stays a ramp
    down = resample_texture(ramp, 256)
    assert down.shape == (256, 256) and 0.0 <= down.min() and down.max() <= 1.0
    for bad in (255, 4097, 512.0, True):
        with pytest.raises(ValueError, match="texture_size"):
            resample_texture(ramp, bad)
    with pytest.raises(ValueError, match="texture: contains NaN"):
        resample_texture(np.full((8, 8), np.nan), 256)
