"""facecore.refine: the landmark subset decodes as the whole head does, and the refinement finds the landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from facecore import geometry as geo
from facecore import refine
from facecore.bundle import load_bundle
from service.settings import EMBEDDED_BUNDLE


@pytest.fixture(scope="module")
def model():
    return load_bundle(EMBEDDED_BUNDLE).face_model


def random_codes(model, rng):
    pose = np.zeros((model.n_joints, 3))
    pose[0] = rng.normal(0, [0.15, 0.4, 0.05])
    pose[model.joint_names.index("jaw"), 0] = rng.uniform(0, 0.2)
    return {
        "shape": rng.normal(0, 0.5, model.n_shape),
        "expression": rng.uniform(0, 0.4, model.n_expr),
        "pose": pose,
        "camera": np.array([rng.uniform(7, 10), rng.normal(0, 0.05), rng.normal(0, 0.05)]),
    }


def test_the_landmark_subset_decodes_like_the_whole_head(model):
    rng = np.random.default_rng(0)
    lm = refine.landmark_model(model)
    assert len(lm.vertices) < model.n_verts // 10
    batch = [random_codes(model, rng) for _ in range(3)]
    got = lm.landmarks(*(np.stack([c[k] for c in batch]) for k in ("shape", "expression", "pose")))
    for i, c in enumerate(batch):
        verts = geo.decode_vertices(model, c["shape"], c["expression"], c["pose"]).astype(np.float64)
        np.testing.assert_allclose(got[i], geo.landmarks_3d(model, verts)[0], atol=2e-6)  # float32 decode


def test_refinement_moves_a_perturbed_fit_onto_the_landmarks(model):
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(4):
        truth = random_codes(model, rng)
        lmk = refine.landmark_model(model).landmarks(truth["shape"], truth["expression"], truth["pose"])
        target = geo.project_points(lmk, truth["camera"], 64)
        start = dict(truth)
        start["expression"] = np.clip(truth["expression"] + rng.normal(0, 0.15, model.n_expr), 0, 1)
        start["pose"] = truth["pose"] + np.r_[[rng.normal(0, 0.08, 3)], np.zeros((model.n_joints - 1, 3))]
        start["camera"] = truth["camera"] * [1.06, 1, 1] + [0, 0.04, -0.03]
        out, err = refine.refine(model, start, target, 64)
        errors.append((err["before"], err["after"]))
        assert np.array_equal(out["shape"], truth["shape"])  # identity is the identity head's
        gaze = [i for i, n in enumerate(model.expr_names) if n.startswith("eyeLook")]
        assert np.array_equal(out["expression"][gaze], start["expression"][gaze])
        assert out["expression"].min() >= 0 and out["expression"].max() <= 1
        got = geo.project_points(
            refine.landmark_model(model).landmarks(out["shape"], out["expression"], out["pose"]), out["camera"], 64
        )
        iod = np.linalg.norm(target[36] - target[45])
        assert np.linalg.norm(got - target, axis=1).mean() / iod == pytest.approx(err["after"], rel=1e-6)
    before, after = np.array(errors).T
    assert before.min() > 0.15 and after.max() < 0.05 * before.min()  # to ~0.005: the priors pull a little


def test_the_closed_lips_prior_closes_a_slightly_open_mouth_and_keeps_an_open_one(model):
    from facecore import mouth

    lm = refine.landmark_model(model)
    jaw = model.joint_names.index("jaw")
    gaps = {}
    for opening in (0.02, 0.15):  # jaw rotation (rad): lips a couple of millimetres apart / wide open
        truth = {
            "shape": np.zeros(model.n_shape),
            "expression": np.zeros(model.n_expr),
            "pose": np.zeros((model.n_joints, 3)),
            "camera": np.array([8.0, 0.0, 0.0]),
        }
        truth["pose"][jaw, 0] = opening
        target = geo.project_points(
            lm.landmarks(truth["shape"], truth["expression"], truth["pose"]), truth["camera"], 96
        )
        start = {**truth, "camera": truth["camera"] * [1.03, 1, 1]}
        for weight in (0.0, refine.RefineConfig().closed_lips_weight):
            out, _ = refine.refine(model, start, target, 96, refine.RefineConfig(closed_lips_weight=weight))
            gaps[opening, weight] = 1000 * mouth.lip_gap(model, out["shape"], out["expression"], out["pose"])
        gaps[opening, "truth"] = 1000 * mouth.lip_gap(model, truth["shape"], truth["expression"], truth["pose"])
    small, wide = gaps[0.02, "truth"], gaps[0.15, "truth"]
    assert 1.0 < small < 4.0 and wide > 10.0, gaps
    assert gaps[0.02, 0.0] == pytest.approx(small, abs=0.3)  # without the prior the landmarks' gap is met
    assert gaps[0.02, 2.0] < 0.5 * small  # with it the lips close ...
    assert gaps[0.15, 2.0] > 0.85 * wide  # ... unless the landmarks show a clearly open mouth


def test_eye_apertures_measure_the_lids_over_the_eye_width():
    points = np.zeros((68, 2))
    for a, b, upper, lower in refine.EYES:  # a 30-wide eye, lids 6 and 12 apart
        points[a], points[b] = [0, 0], [30, 0]
        points[list(upper)] = [[10, -3], [20, -3]]
        points[list(lower)] = [[10, 3], [20, 9]]
    np.testing.assert_allclose(refine.eye_apertures(points), [0.3, 0.3])
    np.testing.assert_allclose(refine.eye_apertures(np.stack([points, 2 * points])), [[0.3, 0.3]] * 2)


def test_the_eye_opening_term_opens_an_eye_the_encoder_fitted_narrowed(model):
    """The encoder's blink drawn too far (a narrowed eye) pulls the lids only a fraction of σ off the target's 68
    points, which the expression prior outweighs; the eyes' opening, a difference of lid points whose common
    errors cancel, is fitted as a measurement of its own."""
    lm = refine.landmark_model(model)
    blink = [model.expr_names.index(n) for n in ("eyeBlinkLeft", "eyeBlinkRight")]
    truth = {
        "shape": np.zeros(model.n_shape),
        "expression": np.zeros(model.n_expr),
        "pose": np.zeros((model.n_joints, 3)),
        "camera": np.array([8.0, 0.0, 0.0]),
    }
    target = geo.project_points(lm.landmarks(truth["shape"], truth["expression"], truth["pose"]), truth["camera"], 96)
    start = {**truth, "expression": truth["expression"].copy()}
    start["expression"][blink] = 0.35
    opening = {}
    for sigma in (0.0, refine.RefineConfig().eye_aperture_sigma):
        out, _ = refine.refine(model, start, target, 96, refine.RefineConfig(eye_aperture_sigma=sigma))
        head = geo.project_points(lm.landmarks(out["shape"], out["expression"], out["pose"]), out["camera"], 96)
        opening[sigma] = refine.eye_apertures(head)
    want = refine.eye_apertures(target)
    assert sigma > 0
    narrowed = want - opening[0.0]
    assert narrowed.min() > 0.03  # without the term the prior keeps the eyes visibly narrowed ...
    assert (want - opening[sigma]).max() < 0.5 * narrowed.min()  # ... with it they open most of the way
