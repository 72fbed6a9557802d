"""facecore.localise: the crop conventions of the landmark graph, round-tripped through an oracle graph."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from facecore import detect, localise


def face_points(rng: np.random.Generator, yaw_shift: float = 0.0) -> np.ndarray:
    """68 plausible iBUG points of a face ~120 px wide in a 400-px photo (the template's frontal layout, moved)."""
    from facecore.detect import ALIGN_TEMPLATE

    base = ALIGN_TEMPLATE * 300 + 50  # eye centres and nose bottom in pixels
    pts = rng.normal(base.mean(0), 40, size=(68, 2))
    pts[[36, 39]] = base[0] + [[-12, 0], [12, 0]]
    pts[[42, 45]] = base[1] + [[-12, 0], [12, 0]]
    pts[33] = base[2] + [yaw_shift, 0]
    return pts


def oracle(truth: np.ndarray, matrices: list[np.ndarray]):
    """A landmarks graph that answers the true points in the units of the crop it was given."""

    async def run_graph(name, inputs):
        assert name == localise.GRAPH and inputs[localise.GRAPH_INPUT].dtype == np.float32
        side = inputs[localise.GRAPH_INPUT].shape[-1]
        px = detect.transform_points(truth, matrices[-1])
        return {localise.GRAPH_OUTPUT: localise.pixels_to_units(px, side)[None].astype(np.float32)}

    return run_graph


def test_an_oracle_graph_gives_back_the_true_points_and_reframes_on_them(monkeypatch):
    rng = np.random.default_rng(0)
    truth = face_points(rng, yaw_shift=25.0)  # the nose 25 px off the eyes' middle: a turned head
    image = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    rough = np.array([[250, 160], [170, 160], [150, 166], [90, 166], [130, 250.0]])  # dlib order, 30 px off
    matrices: list[np.ndarray] = []
    crop = localise.crop

    def recording_crop(img, anchors, size, scale):
        patch, matrix = crop(img, anchors, size, scale)
        matrices.append(matrix)
        return patch, matrix

    monkeypatch.setattr(localise, "crop", recording_crop)
    found = asyncio.run(localise.localise(oracle(truth, matrices), image, rough, 96, passes=2))
    np.testing.assert_allclose(found, truth, atol=1e-4)
    # pass 1 framed the rough anchors, pass 2 the anchors of pass 1's answer (the truth's)
    np.testing.assert_allclose(matrices[0], detect.anchors_matrix(detect.alignment_anchors(rough), 96, 1.4), atol=1e-6)
    np.testing.assert_allclose(matrices[1], detect.anchors_matrix(detect.alignment_anchors(truth), 96, 1.4), atol=1e-6)


def test_units_and_pixels_are_inverse_and_centre_on_the_crop():
    assert localise.units_to_pixels(np.array([0.0, 0.0]), 96).tolist() == [47.5, 47.5]
    assert localise.units_to_pixels(np.array([-0.5, 0.5]), 96).tolist() == [-0.5, 95.5]  # the crop's outer edges
    p = np.random.default_rng(1).normal(size=(68, 2))
    np.testing.assert_allclose(localise.pixels_to_units(localise.units_to_pixels(p, 80), 80), p)


def test_graph_input_is_nchw_float_in_unit_range():
    crops = np.full((2, 8, 8, 3), 255, np.uint8)
    crops[1, :, :, 2] = 0
    x = localise.graph_input(crops)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32
    assert x[0].min() == 1.0 and x[1, 2].max() == 0.0 and x[1, 0].min() == 1.0


def test_warp_crop_is_align_face_given_its_matrix():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 360, 3), dtype=np.uint8)
    points = face_points(rng)
    aligned = detect.align_face(image, points, 64, 1.3)
    again = detect.warp_crop(image, aligned.matrix, 64)
    assert np.array_equal(aligned.crop, again.crop)
    with pytest.raises(ValueError):
        detect.warp_crop(image, np.zeros((2, 3)), 64)
