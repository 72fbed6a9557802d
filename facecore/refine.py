"""Serve-time refinement: the encoder's codes moved so the head's 68 landmarks fall on the localiser's (numpy).

The encoder reads a 64-px crop and places the head's features to a few pixels; the photo's texture is unwrapped
through that fit, so a feature that misses shows twice (the photo's eyes on the brow above the eye assets; teeth
under a closed mouth). With a landmark source in the bundle (:mod:`facecore.localise`) a few Levenberg–Marquardt
steps move the camera, the head's rotation, the jaw and the expression so that the projected landmarks meet the
found ones, each code held near the encoder's by a Gaussian prior (the encoder knows shading and context the 68
points do not). Identity stays the identity head's.

Only the ~200 vertices the landmarks sit on are decoded (the joints are regressed from the whole head, whose
regression is linear in the codes and precomputed), so one evaluation costs microseconds and the Jacobian is
taken by finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facecore import geometry as geo
from facecore.mouth import landmarks_lip_gap

#: expression shapes left to the encoder: gaze turns the eyeballs, which no landmark sees
FIXED_EXPRESSIONS_PREFIX = "eyeLook"
JAW_CONTOUR = slice(0, 17)


@dataclass(frozen=True)
class RefineConfig:
    """Noise and prior scales (landmark units: the eye-corner distance; angles in radians; expression weights).

    landmark_sigma: how far the found landmarks are from the truth (the localiser's held-out error).
    contour_factor: the jaw contour's σ is this many times larger (its points slide along the outline).
    expression_sigma, rotation_sigma, jaw_sigma: how far the refinement may move each code from the encoder's.
    closed_lips_sigma_m, closed_lips_weight: a heavy-tailed (Cauchy) prior on the lip gap ``g`` (metres, between
        the inner lips' landmarks), ``r² = weight² · log(1 + (g / σ)²)``: portraits mostly show closed lips, and the
        localiser, trained on renders, reads real closed lips a few millimetres open (the fixture photos: 0.02–0.04
        eye distances more than dlib's 68-point model), which showed the teeth; the cost grows only
        logarithmically, so a clearly open mouth stays open. Weight 0: no prior. Measured (60 renders of stream
        555; the fixture photos, head vs dlib's gap): closed mouths' (< 3 mm) gap RMSE 2.0 → 1.0 mm, open ones'
        4.2 → 5.1 mm, 68-landmark error 0.0555 → 0.0554; fixtures 001 +0.023 → −0.003, 006 +0.039 → +0.004,
        013 +0.017 → 0.000, 028 +0.018 → −0.005, 002 (a smile) +0.070 → +0.050 eye distances.
    eye_aperture_sigma: each eye's opening (:func:`eye_apertures`: the lids' distance / the eye's width) is also
        fitted to the target's, with this σ: the localiser's error of the opening on held-out renders (RMS 0.084
        on stream 555). Of 68 points the lids are 8, and a narrowed eye moves them only a fraction of
        ``landmark_sigma`` each, which the expression prior outweighed: the encoder's blink stayed, and fixture 028's
        left eye was fitted at 0.18 where the localiser found 0.29 (a render check's missing pupil); an eye
        narrower than the other (foreshortened) counts less, in proportion. Measured
        (``benchmarks/refine_ablation.py``, stream 556, 57 renders, eyes whose corners show): opening bias
        −0.024 → −0.009, mean error 0.064 → 0.058, 68-landmark error 0.0388 either way. 0: no term.
    iterations: Levenberg–Marquardt steps.
    """

    landmark_sigma: float = 0.05
    contour_factor: float = 2.0
    expression_sigma: float = 0.3
    rotation_sigma: float = 0.15
    jaw_sigma: float = 0.15
    closed_lips_sigma_m: float = 0.002
    closed_lips_weight: float = 2.0
    eye_aperture_sigma: float = 0.08
    iterations: int = 8


@dataclass
class LandmarkModel:
    """The part of a face model that its 68 landmarks need, in float64."""

    model: geo.FaceModelArrays
    vertices: np.ndarray = field(init=False)  # (n,) indices of the landmark triangles' vertices
    tri: np.ndarray = field(init=False)  # (68, 3) indices into ``vertices``
    mean: np.ndarray = field(init=False)
    shape_basis: np.ndarray = field(init=False)
    expr_basis: np.ndarray = field(init=False)
    joints_mean: np.ndarray = field(init=False)
    joints_shape: np.ndarray = field(init=False)
    joints_expr: np.ndarray = field(init=False)
    lbs: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        m = self.model
        corners = m.faces[m.landmark_faces]
        self.vertices, inverse = np.unique(corners, return_inverse=True)
        self.tri = inverse.reshape(corners.shape)
        self.mean = m.mean[self.vertices].astype(np.float64)
        self.shape_basis = m.shape_basis[:, self.vertices].astype(np.float64)
        self.expr_basis = m.expr_basis[:, self.vertices].astype(np.float64)
        reg = m.joint_regressor.astype(np.float64)
        self.joints_mean = reg @ m.mean.astype(np.float64)
        self.joints_shape = np.einsum("jv,kvc->kjc", reg, m.shape_basis.astype(np.float64))
        self.joints_expr = np.einsum("jv,evc->ejc", reg, m.expr_basis.astype(np.float64))
        self.lbs = m.lbs_weights[self.vertices].astype(np.float64)

    def landmarks(self, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """(..., 68, 3) posed landmarks of (..., K) shape, (..., E) expression, (..., J, 3) pose codes: what
        ``geo.landmarks_3d(decode_vertices(...))`` gives, on the subset."""
        m = self.model
        batch = np.broadcast_shapes(shape.shape[:-1], expression.shape[:-1], pose.shape[:-2])
        k, e = shape.shape[-1], expression.shape[-1]
        shape = np.broadcast_to(shape, (*batch, k)).reshape(-1, k)
        expression = np.broadcast_to(expression, (*batch, e)).reshape(-1, e)
        pose = np.broadcast_to(pose, (*batch, *pose.shape[-2:])).reshape(-1, *pose.shape[-2:])
        verts = (
            self.mean + np.tensordot(shape, self.shape_basis[:k], 1) + np.tensordot(expression, self.expr_basis[:e], 1)
        )
        joints = self.joints_mean + np.tensordot(shape, self.joints_shape[:k], 1)
        joints = joints + np.tensordot(expression, self.joints_expr[:e], 1)
        theta = np.clip(pose, m.joint_limits[..., 0], m.joint_limits[..., 1])
        posed = geo.skin_with_joints(m.joint_parents, self.lbs, verts, joints, theta)
        out = np.einsum("blkc,lk->blc", posed[:, self.tri], m.landmark_bary.astype(np.float64))
        return out.reshape(*batch, 68, 3)


_CACHE: dict = {}


def landmark_model(model: geo.FaceModelArrays) -> LandmarkModel:
    """The model's :class:`LandmarkModel`, built once (bounded like geometry's other per-model caches)."""
    return geo._cached(_CACHE, model, 0, lambda: LandmarkModel(model))


#: the 68 landmarks' eye contours: (outer corner, inner corner, upper lid ×2, lower lid ×2) for each eye
EYES = ((36, 39, (37, 38), (41, 40)), (42, 45, (43, 44), (47, 46)))


def eye_widths(points: np.ndarray) -> np.ndarray:
    """(..., 2) each eye's corner-to-corner distance of (..., 68, 2|3) landmarks."""
    return np.stack([np.linalg.norm(points[..., a, :] - points[..., b, :], axis=-1) for a, b, _, _ in EYES], -1)


def eye_apertures(points: np.ndarray) -> np.ndarray:
    """(..., 2) each eye's opening of (..., 68, 2|3) landmarks: the lids' mean distance over the corners' distance
    (0 for an eye whose corners coincide)."""
    gaps = [np.linalg.norm(points[..., u, :] - points[..., lo, :], axis=-1).mean(-1) for _, _, u, lo in EYES]
    width = eye_widths(points)
    return np.stack(gaps, -1) / np.where(width > 1e-9, width, np.inf)


def _ndc(points_px: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels → the weak-perspective camera's NDC (inverse of :func:`facecore.geometry.project_points`)."""
    x = (points_px[:, 0] + 0.5) / size * 2.0 - 1.0
    y = 1.0 - (points_px[:, 1] + 0.5) / size * 2.0
    return np.stack([x, y], 1)


def refine(
    model: geo.FaceModelArrays,
    codes: dict[str, Any],
    target_px: np.ndarray,
    size: int,
    config: RefineConfig = RefineConfig(),
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The codes (``shape``, ``expression`` in [0, 1], ``pose`` (J, 3), ``camera`` (s, tx, ty)) refined so the
    head's landmarks, projected into the ``size`` crop, meet ``target_px`` (68, 2) crop pixels.

    Returns the new codes (a copy; shape unchanged) and the landmark error before/after (mean distance / the
    target's outer-eye-corner distance)."""
    lm = landmark_model(model)
    names = model.joint_names
    g, jaw = names.index("global"), names.index("jaw")
    free_expr = np.array([not n.startswith(FIXED_EXPRESSIONS_PREFIX) for n in model.expr_names])
    shape = np.asarray(codes["shape"], np.float64)
    expr0 = np.asarray(codes["expression"], np.float64)
    pose0 = np.asarray(codes["pose"], np.float64)
    cam0 = np.asarray(codes["camera"], np.float64)
    target = _ndc(np.asarray(target_px, np.float64), size)
    iod = float(np.linalg.norm(target[36] - target[45]))
    sigma = np.full(68, config.landmark_sigma * iod)
    sigma[JAW_CONTOUR] *= config.contour_factor
    target_aperture = eye_apertures(target)
    # a foreshortened eye (a turned head's far side) measures its opening over a shorter width: its σ grows as
    # its width shrinks against the other eye's
    widths = eye_widths(target)
    aperture_weight = widths / max(float(widths.max()), 1e-9) / max(config.eye_aperture_sigma, 1e-9)

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(..., P) parameters → cameras (..., 3), poses (..., J, 3), expressions (..., E)."""
        pose = np.broadcast_to(pose0, (*p.shape[:-1], *pose0.shape)).copy()
        pose[..., g, :] = p[..., 3:6]
        pose[..., jaw, 0] = p[..., 6]
        expr = np.broadcast_to(expr0, (*p.shape[:-1], len(expr0))).copy()
        expr[..., free_expr] = np.clip(p[..., 7:], 0.0, 1.0)
        cam = np.concatenate([np.exp(p[..., :1]), p[..., 1:3]], -1)  # the scale as its log: never ≤ 0
        return cam, pose, expr

    def posed(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 68, 2) projected and (..., 68, 3) posed landmarks of (..., P) parameters."""
        cam, pose, expr = unpack(p)
        pts = lm.landmarks(shape, expr, pose)
        return cam[..., :1, None] * pts[..., :2] + cam[..., None, 1:], pts

    def project(p: np.ndarray) -> np.ndarray:
        return posed(p)[0]

    if not cam0[0] > 0:
        raise ValueError(f"camera: the scale must be positive, got {cam0[0]}")
    p0 = np.concatenate([[np.log(cam0[0])], cam0[1:], pose0[g], pose0[jaw, :1], expr0[free_expr]])
    prior_sigma = np.concatenate(
        [np.full(3, config.rotation_sigma), [config.jaw_sigma], np.full(int(free_expr.sum()), config.expression_sigma)]
    )

    def residuals(p: np.ndarray) -> np.ndarray:
        """(..., 68·2 + P − 3 [+ 1] [+ 2]) residuals of (..., P) parameters: landmarks over their σ, codes over
        their prior's [, the closed-lips prior] [, the eyes' openings over theirs]."""
        projected, pts = posed(p)
        lmk = ((projected - target) / sigma[:, None]).reshape(*p.shape[:-1], -1)
        out = [lmk, (p[..., 3:] - p0[3:]) / prior_sigma]
        if config.closed_lips_weight > 0:
            x = landmarks_lip_gap(pts)[..., None] / config.closed_lips_sigma_m  # Cauchy: r² = w² log(1 + (gap / σ)²)
            out.append(config.closed_lips_weight * np.sqrt(np.log1p(x * x)))
        if config.eye_aperture_sigma > 0:
            out.append((eye_apertures(projected) - target_aperture) * aperture_weight)
        return np.concatenate(out, -1)

    def error(p: np.ndarray) -> float:
        return float(np.linalg.norm(project(p) - target, axis=1).mean() / iod)

    p, r = p0.copy(), residuals(p0)
    damping = 1e-3
    steps = np.full(len(p), 1e-5)
    for _ in range(config.iterations):
        jac = ((residuals(p + np.diag(steps)) - r) / steps[:, None]).T  # all forward differences in one batch
        jtj, jtr = jac.T @ jac, jac.T @ r
        while True:
            delta = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-9), -jtr)
            q = p + delta
            q[7:] = np.clip(q[7:], 0.0, 1.0)
            rq = residuals(q)
            if rq @ rq < r @ r:
                p, r, damping = q, rq, max(damping / 3.0, 1e-7)
                break
            damping *= 4.0
            if damping > 1e6:
                break
        if damping > 1e6:
            break
    cam, pose, expr = unpack(p)
    out = {**codes, "camera": cam, "pose": pose, "expression": expr}
    return out, {"before": error(p0), "after": error(p)}
