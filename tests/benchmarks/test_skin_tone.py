"""skin_tone.shares: the photo's share of the least-squares combination of two noisy estimates of the skin tone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from skin_tone import shares  # noqa: E402


def test_shares_weigh_each_estimate_by_the_others_error():
    rng = np.random.default_rng(0)
    n = 20000
    # chroma: photo twice as precise as the map (σ 0.02 vs 0.04) → share 0.04² / (0.02² + 0.04²) = 0.8;
    # level: photo three times worse (σ 0.3 vs 0.1) → share 0.1
    photo = np.c_[rng.normal(0, 0.02, (n, 2)), rng.normal(0, 0.3, n)]
    generated = np.c_[rng.normal(0, 0.04, (n, 2)), rng.normal(0, 0.1, n)]
    chroma, level = shares(photo, generated)
    assert abs(chroma - 0.8) < 0.02 and abs(level - 0.1) < 0.02
    combined = generated + np.array([chroma, chroma, level]) * (photo - generated)
    assert ((combined**2).mean(0) < np.minimum((photo**2).mean(0), (generated**2).mean(0))).all()
    # a photo that is always right takes all of it; one with the map's own error (perfectly correlated) a half
    assert shares(np.zeros((10, 3)), generated[:10]) == (1.0, 1.0)
    assert shares(generated[:10], generated[:10]) == (0.5, 0.5)
