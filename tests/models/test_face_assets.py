"""Eyes, mouth and neck render like a person's (issue 15): render checks on the embedded bundle's /generate and
/reconstruct outputs, and the exported GLB / OBJ carry the eye and mouth materials."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecore import assets as fa
from facecore import geometry as geo
from facecore.bundle import load_bundle
from models.face.model import FaceModel
from models.render.checks import LEFT_EYE, RIGHT_EYE, bottom_gaps, bottom_notches, eye_check, mouth_margin, render_face
from service import pipeline as P
from service.engine.sessions import open_sessions
from service.settings import EMBEDDED_BUNDLE
from tests.helpers.gltf import assert_valid_gltf

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
MIN_PUPIL_CONTRAST = 0.15  # luma: iris/sclera ring minus the pupil blob
MIN_MOUTH_MARGIN = 0.15  # luma: lips minus the open mouth's interior


@pytest.fixture(scope="module")
def served():
    bundle = load_bundle(EMBEDDED_BUNDLE)
    sessions = open_sessions(bundle, ["CPUExecutionProvider"], 1)

    async def run_graph(name, inputs):
        return sessions[name].run(inputs)

    return bundle, run_graph, FaceModel(bundle.face_model)


def _albedo(result: P.Result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB"), np.float64) / 255.0


def _generate(served, seed: int, outputs=("albedo",), blendshapes=False) -> P.Result:
    bundle, run_graph, _ = served
    req = P.MeshRequest(
        seed, None, None, 0.7, np.zeros(bundle.face_model.n_expr), None, 256, 64, outputs, blendshapes
    )  # fmt: skip
    return asyncio.run(P.generate(bundle, run_graph, req, P.Timer()))


def _eyes_ok(image, lm) -> list[float]:
    contrasts = []
    for eye in (LEFT_EYE, RIGHT_EYE):
        c = eye_check(image, lm[list(eye)])
        if c.pixels < 12:  # closed (blink): no visible eye region
            continue
        assert c.sides >= 3, c  # the blob sits inside the eye, lighter all around
        assert c.contrast >= MIN_PUPIL_CONTRAST, c
        contrasts.append(c.contrast)
    return contrasts


@pytest.mark.parametrize("seed", [0, 3])
def test_generated_faces_have_pupils_a_dark_mouth_and_a_clean_neck(served, seed):
    bundle, _, fm = served
    model = bundle.face_model
    result = _generate(served, seed)
    shape = np.array(result.meta["codes"]["shape"])
    albedo = _albedo(result)
    for yaw in (0.0, 0.35):
        pose = np.zeros((model.n_joints, 3))
        pose[0, 1] = yaw
        verts = geo.decode_vertices(model, shape[None], np.zeros((1, model.n_expr)), pose[None])[0]
        image, mask, lm = render_face(fm, verts, albedo, 256)
        assert len(_eyes_ok(image, lm)) == 2
        gaps, rows = bottom_gaps(mask)
        assert rows >= 5 and gaps == 0
        notches, band = bottom_notches(image, mask)
        assert notches <= 0.02 * band, (notches, band)
        # before (eyes and mouth from the albedo map): no pupil there
        before, _, _ = render_face(fm, verts, albedo, 256, assets=False)
        assert max(eye_check(before, lm[list(e)]).contrast for e in (LEFT_EYE, RIGHT_EYE)) < MIN_PUPIL_CONTRAST
    expression = model.expression_vector({"jawOpen": 0.5})
    verts = geo.decode_vertices(model, shape[None], expression[None])[0]
    image, _, lm = render_face(fm, verts, albedo, 256)
    lips, interior, margin = mouth_margin(image, lm)
    assert margin >= MIN_MOUTH_MARGIN, (lips, interior)


@pytest.mark.parametrize("photo", ["cc0-interfaces-001.jpg", "cc0-interfaces-013.jpg"])
def test_reconstructions_have_pupils(served, photo):
    bundle, run_graph, fm = served
    model = bundle.face_model
    image = P.decode_photo((PHOTOS / photo).read_bytes(), 50_000_000)
    req = P.ReconstructRequest("test", 256, 64, ("albedo",), False, "auto")
    result = asyncio.run(P.reconstruct(bundle, run_graph, req, image, P.Timer()))
    codes = result.meta["codes"]
    expression = np.array([codes["expression"].get(n, 0.0) for n in model.expr_names])
    pose = np.array([codes["pose"][n] for n in model.joint_names])
    pose[0] = 0.0  # the face's own articulation, seen from the front
    verts = geo.decode_vertices(model, np.array(codes["shape"])[None], expression[None], pose[None])[0]
    albedo = _albedo(result)
    iris, _ = fa.iris_colour(model, albedo)
    rendered, mask, lm = render_face(fm, verts, albedo, 256, iris_srgb=iris)
    assert len(_eyes_ok(rendered, lm)) >= 1
    gaps, _ = bottom_gaps(mask)
    assert gaps == 0


def test_exports_carry_eye_and_mouth_materials(served, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    result = _generate(served, 1, ("albedo", "obj", "glb"), blendshapes=True)
    files = result.files
    assert {"mesh_eyes.png", "mesh_mouth.png"} <= set(files)
    mtl = files["mesh.mtl"].decode()
    assert all(f"newmtl {m}" in mtl for m in ("mesh", "mesh_eyes", "mesh_mouth"))
    (tmp_path / "mesh.glb").write_bytes(files["mesh.glb"])
    report = assert_valid_gltf(tmp_path / "mesh.glb")
    assert report["info"]["materialCount"] == 3
    import pygltflib

    gltf = pygltflib.GLTF2.load_binary(tmp_path / "mesh.glb")
    prims = gltf.meshes[0].primitives
    assert [gltf.materials[p.material].name for p in prims] == ["face", "face_eyes", "face_mouth"]
    assert all(len(p.targets) == len(served[0].face_model.expr_names) for p in prims)  # morphs on every primitive
    scene = trimesh.load(io.BytesIO(files["mesh.glb"]), file_type="glb")
    assert len(scene.geometry) == 3
    obj_dir = tmp_path / "obj"
    obj_dir.mkdir()
    with zipfile.ZipFile(io.BytesIO(P.zip_files(files))) as zf:
        zf.extractall(obj_dir)
    obj = trimesh.load(obj_dir / "mesh.obj", force="scene", group_material=True)
    materials = {g.visual.material.name for g in obj.geometry.values()}
    assert {"mesh", "mesh_eyes", "mesh_mouth"} <= materials, materials
    for g in obj.geometry.values():
        assert g.visual.material.image is not None  # every material's texture loaded
    eyes = next(g for g in obj.geometry.values() if g.visual.material.name == "mesh_eyes")
    texture = np.asarray(eyes.visual.material.image.convert("RGB"), np.float64) / 255.0
    colours = eyes.visual.material.image.convert("RGB").getpixel((texture.shape[1] // 2, texture.shape[0] // 2))
    assert max(colours) < 20  # the pupil at the centre of the eye texture


def test_assets_follow_the_eye_joints_and_stay_torch_free():
    model = geo.FaceModelArrays.load(EMBEDDED_BUNDLE / "face_model.npz")
    a = fa.face_assets(model)
    assert 14 < a.iris_deg < 25 and 0.3 < a.pupil_deg / a.iris_deg < 0.5
    # the pupil is the eye texture's centre, which the eyeball's front pole takes at rest
    for name in fa.EYE_PARTS:
        faces = np.flatnonzero(model.face_part == model.part_names.index(name))
        idx = np.flatnonzero(np.isin(a.eye_faces, faces))
        corner = np.argmax(model.mean[model.faces[a.eye_faces[idx]]][..., 2])
        np.testing.assert_allclose(a.eye_uv[idx].reshape(-1, 2)[corner], [0.5, 0.5], atol=1e-6)
    # the neck band is skin again: no mouth-interior triangle outside the mouth's own component
    cav = np.unique(model.faces[model.face_part == model.part_names.index("mouth_interior")])
    assert model.mean[cav, 1].min() > -0.085
    assert model.metadata["neck_band_reattached"] > 100
    # the iris colour comes from the albedo where the eyes are, the default where they are not
    flat = np.full((256, 256, 3), 0.7)
    assert fa.iris_colour(model, flat)[1] is False
    painted = flat.copy()
    (cu, cv), r = a.iris_uv[0], a.iris_uv_radius[0]
    yy, xx = np.mgrid[0:256, 0:256]
    painted[((xx + 0.5) / 256 - cu) ** 2 + ((1 - (yy + 0.5) / 256) - cv) ** 2 < r * r] = (0.2, 0.35, 0.5)
    colour, measured = fa.iris_colour(model, painted)
    assert measured and np.allclose(colour, (0.2, 0.35, 0.5), atol=0.02)
