"""localiser_compare's score and verdict: the error is in eye distances, and "better" needs two standard errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import localiser_compare as lc  # noqa: E402


def test_error_is_in_eye_corner_distances_over_visible_points():
    truth = np.zeros((68, 2))
    truth[36], truth[45] = (0.0, 0.0), (40.0, 0.0)  # eye corners 40 px apart
    pred = truth + [4.0, 0.0]  # every point 4 px off: 0.1 eye distances
    assert lc.nme(pred, truth) == 0.1
    pred[:34] += [0.0, 400.0]  # the hidden half far off: not counted
    visible = np.arange(68) >= 34
    assert np.isclose(lc.nme(pred, truth, visible), 0.1)


def test_better_only_beyond_two_standard_errors():
    rng = np.random.default_rng(0)
    old = rng.uniform(0.03, 0.08, 200)
    noise = rng.normal(0.0, 0.004, 200)
    d, se, better = lc.verdict(np.c_[old - 0.003 + noise, old])  # 0.003 better, se ≈ 0.0003
    assert better and np.isclose(d, -0.003, atol=0.001) and 0.0002 < se < 0.0004
    d, se, better = lc.verdict(np.c_[old + noise[::-1] * 0.1 - 0.0001 + noise, old])  # a tie within noise
    assert not better and abs(d) < 2 * se
    assert not lc.verdict(np.c_[old + 0.01, old])[2]  # worse
    assert not lc.verdict(np.array([[0.01, 0.02]]))[2]  # one render decides nothing
