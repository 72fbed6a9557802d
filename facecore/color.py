"""Colour: the sRGB transfer functions (IEC 61966-2-1) and 8-bit quantisation, numpy only.

The one numpy definition; ``training.data.skin`` has the torch twin (differentiable, same formulas).
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] → linear (input clamped to [0, 1])."""
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear values in [0, 1] → sRGB encoding (input clamped to [0, 1])."""
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 (clamped, round half up)."""
    return np.floor(np.clip(x01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
