"""The registration benchmark finds the features it claims to (issue 14, item 3): a map whose lips are moved by a
known shift, with a redder blotch beside them, gives back that shift."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import albedo_registration as reg  # noqa: E402

from facecore import geometry as geo  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "face" / "data" / "anny_head.npz"


@pytest.fixture(scope="module")
def model():
    return geo.FaceModelArrays.load(DEFAULT)


def skin_map(lm: np.ndarray, lips_shift: tuple[float, float], blotch: bool) -> np.ndarray:
    """(S, S, 3) skin with lips (the layout's polygon, moved), dark pupils and nostrils at their texels."""
    img = Image.new("RGB", (reg.SIZE, reg.SIZE), (200, 150, 125))
    draw = ImageDraw.Draw(img)
    draw.polygon([(float(x + lips_shift[0]), float(y + lips_shift[1])) for x, y in lm[48:60]], fill=(190, 95, 95))
    for idx in (range(36, 42), range(42, 48)):
        x, y = lm[list(idx)].mean(0)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(40, 30, 25))
    nose = lm[31:36].mean(0)
    for i in (31, 35):  # one each side, their midpoint at the nose base's centre (what the benchmark compares to)
        x, y = (lm[i] + nose) / 2
        draw.ellipse((x - 2, y - 1.5, x + 2, y + 1.5), fill=(90, 60, 50))
    if blotch:  # a round flush, redder than the lips, on the cheek beside the nose
        x, y = lm[31] + np.array([-9.0, 2.0])
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(230, 80, 80))
    return np.asarray(img, np.float64) / 255.0


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.0, -2.0), (-5.0, 1.0)])
def test_lips_are_found_where_they_are_not_where_the_reddest_blotch_is(model, shift):
    lm = reg.landmark_texels(model)
    found = reg.feature_offsets(skin_map(lm, shift, blotch=True), model)
    assert np.abs(found["lips"] - np.array(shift)).max() < 0.6
    for name in ("right pupil", "left pupil", "nostrils"):  # drawn at their landmark centres
        assert np.hypot(*found[name]) < 1.5, (name, found[name])
