"""How open the mouth is, and the encoder's mouth opening calibrated against data with known truth.

Measured (``training.calibration`` on bundle 1.0, held-out synthetic renders through the service's detection and
alignment): the encoder's lip gap correlates only 0.2–0.4 with the truth and is ~9 mm too open on average, so
every /reconstruct showed teeth, closed-mouth photos included. A bundle may therefore carry a
:class:`MouthCalibration` (``manifest.json["mouth"]``): the truth's median lip gap given the encoder's, a line
fitted on held-out renders, which ``/reconstruct`` applies by scaling the mouth-opening codes
(:data:`OPENING_EXPRESSIONS` and the jaw joint's rotation) until the lip gap is the calibrated one. It never
opens a mouth further, and a bundle whose encoder measures the opening well gets a slope near 1 and keeps its
codes.

Lip gap: the distance between the inner lips' middle landmarks (iBUG 61–63 and 65–67), in metres.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from facecore import geometry as geo

UPPER, LOWER = [61, 62, 63], [67, 66, 65]
# the shapes that part the lips: the jaw, and the lips pulled off the teeth
OPENING_EXPRESSIONS = (
    "jawOpen",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
)
JAW = "jaw"


class MouthCalibration(BaseModel):
    """``gap = slope · encoder gap + intercept`` (metres), fitted on held-out renders with known truth
    (``training.calibration``)."""

    model_config = ConfigDict(extra="forbid")
    slope: float = Field(ge=0.0, le=2.0)
    intercept: float = Field(ge=-0.05, le=0.05)
    samples: int = Field(ge=1, description="held-out renders it was fitted on")
    rmse_encoder_m: float = Field(ge=0.0, description="lip-gap error of the encoder's codes on them")
    rmse_calibrated_m: float = Field(ge=0.0, description="and after the calibration (in-sample)")
    data: str = ""

    def target(self, gap: float) -> float:
        return self.slope * gap + self.intercept


def lip_gap(model: geo.FaceModelArrays, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Lip gap (metres) of one face, or (B,) of a batch: shape (K,) | (B, K), expression (E,) | (B, E), pose
    (J, 3) | (B, J, 3)."""
    single = np.ndim(shape) == 1
    verts = geo.decode_vertices(
        model, np.atleast_2d(shape), np.atleast_2d(expression), pose if not single else pose[None]
    )
    gap = vertex_lip_gap(model, verts)
    return gap[0] if single else gap


def vertex_lip_gap(model: geo.FaceModelArrays, verts: np.ndarray) -> np.ndarray:
    """(B,) lip gaps (metres) of (B, V, 3) vertices, posed or not."""
    return landmarks_lip_gap(geo.landmarks_3d(model, np.asarray(verts, np.float64)))


def landmarks_lip_gap(landmarks: np.ndarray) -> np.ndarray:
    """(...,) lip gaps of (..., 68, 3) landmarks: the distance between the inner lips' middle points."""
    return np.linalg.norm(landmarks[..., UPPER, :].mean(-2) - landmarks[..., LOWER, :].mean(-2), axis=-1)


def opening_scaled(
    model: geo.FaceModelArrays, expression: np.ndarray, pose: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """The codes with the mouth-opening ones (:data:`OPENING_EXPRESSIONS`, the jaw joint's rotation) times ``alpha``."""
    expression, pose = np.array(expression, np.float64), np.array(pose, np.float64)
    for name in OPENING_EXPRESSIONS:
        if name in model.expr_names:
            expression[model.expr_names.index(name)] *= alpha
    if JAW in model.joint_names:
        pose[model.joint_names.index(JAW)] *= alpha
    return expression, pose


def calibrate(
    model: geo.FaceModelArrays,
    calibration: MouthCalibration,
    shape: np.ndarray,
    expression: np.ndarray,
    pose: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The codes with the mouth opened as far as ``calibration`` says (never further than the encoder did).

    The gap is close to linear in the opening codes' scale α; two secant steps between α = 0 (the lips at
    rest for this shape and expression) and α = 1 (the encoder's) reach the target within a few µm.
    """
    closed, opened = (lip_gap(model, shape, *opening_scaled(model, expression, pose, a)) for a in (0.0, 1.0))
    target = calibration.target(float(opened))
    if opened - closed < 1e-5 or target >= opened:
        return np.asarray(expression, np.float64), np.asarray(pose, np.float64)
    alpha = float(np.clip((target - closed) / (opened - closed), 0.0, 1.0))
    got = lip_gap(model, shape, *opening_scaled(model, expression, pose, alpha))
    if 0.0 < alpha < 1.0 and abs(got - target) > 1e-5:  # one secant step from (α, got) towards (1, opened)
        alpha = float(np.clip(alpha + (target - got) * (1.0 - alpha) / max(opened - got, 1e-9), 0.0, 1.0))
    return opening_scaled(model, expression, pose, alpha)
