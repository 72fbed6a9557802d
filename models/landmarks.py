"""Face detection and 68 landmarks (iBUG 300-W order) for real photos: training-time ground truth.

A thin layer over :mod:`facecore.detect` (dlib detectors, numpy + pillow, no torch) that adds dlib's 68-point
shape predictor (``shape_predictor_68_face_landmarks.dat`` from PyPI ``face-recognition-models`` 0.3.0).

**Licence of the 68-point model: non-commercial.** It was trained on the iBUG 300-W dataset, whose licence
excludes commercial use; one of the dataset's creators asked that the model not be used in commercial
products (dlib-models README). Use it for research and for producing training data under those terms; the
service's path (:func:`facecore.detect.detect_landmarks5` + :func:`facecore.detect.align_face`) uses only the
public-domain 5-point model and detectors. Every model's licence is in :data:`MODEL_LICENCES`.

Points: (68, 2) float64 image pixels, x right, y down, pixel centres at integers (a horizontal flip maps x
to ``W - 1 - x``), iBUG 300-W order: 0–16 jaw (subject's right → left), 17–21 right brow, 22–26 left brow,
27–30 nose bridge, 31–35 nostrils, 36–41 right eye, 42–47 left eye, 48–59 outer lips, 60–67 inner lips.
"Right" is the subject's right, i.e. image left for a frontal face.

Measured on this 2-core CPU (``python benchmarks/landmarks_accuracy.py``): HOG + 68 points ≈ 22 ms per
500×500 photo; with the CNN detector 1.0–1.5 s (the 68-point predictor itself takes 0.5 ms). dlib's
68-point model is weak at large yaw (≈ 60°: the hidden eye, the mouth and the jaw line are guessed, and
the points move by 0.2–0.3 inter-ocular distances under a flip or a ±15° rotation) and on strongly pitched
faces; both fixtures of that kind are found (by the CNN fallback) but their points are rough.
"""

from __future__ import annotations

import numpy as np

from facecore.detect import (
    ALIGN_TEMPLATE,
    DETECTORS,
    AlignedFace,
    DetectorName,
    FaceLandmarks,
    NoFaceError,
    align_face,
    alignment_matrix,
    check_image,
    detect_landmarks5,
    detect_points,
    get_predictor,
    largest_face,
)
from facecore.detect import MODEL_LICENCES as _CORE_LICENCES
from models.face.landmarks68 import MIRROR_PAIRS

__all__ = [
    "ALIGN_TEMPLATE",
    "DETECTORS",
    "IBUG68_FLIP",
    "MODEL_LICENCES",
    "PREDICTOR68_FILE",
    "AlignedFace",
    "FaceLandmarks",
    "NoFaceError",
    "align_face",
    "alignment_matrix",
    "detect_landmarks",
    "detect_landmarks5",
    "flip_landmarks68",
    "inter_ocular_distance",
    "landmarks68",
    "normalised_mean_error",
]

PREDICTOR68_FILE = "shape_predictor_68_face_landmarks.dat"

MODEL_LICENCES: dict[str, str] = {
    **_CORE_LICENCES,
    PREDICTOR68_FILE: (
        "dlib 68-point landmark model by Davis King (PyPI face-recognition-models 0.3.0), trained on the iBUG "
        "300-W dataset (Sagonas et al. 2016) whose licence excludes commercial use; the dataset's creators ask "
        "that the model not be used in commercial products. NON-COMMERCIAL use only (research, training data)."
    ),
}


def _flip_permutation() -> np.ndarray:
    perm = np.arange(68)
    for right, left in MIRROR_PAIRS:
        perm[right], perm[left] = left, right
    perm.setflags(write=False)
    return perm


IBUG68_FLIP: np.ndarray = _flip_permutation()
"""(68,) index permutation: point i of a mirrored face is point ``IBUG68_FLIP[i]`` of the original."""


def detect_landmarks(
    image: np.ndarray,
    *,
    detector: DetectorName = "auto",
    max_side: int = 1024,
    min_score: float | None = None,
) -> list[FaceLandmarks]:
    """All faces in ``image`` with 68 iBUG landmarks, largest first (then highest score); may be empty.

    Args:
        image: (H, W, 3) uint8 RGB. Other dtypes, shapes or channel counts raise ValueError.
        detector: ``"auto"`` (HOG, then the CNN only when HOG finds nothing), ``"hog"`` or ``"cnn"``.
        max_side: detection runs on a copy downscaled to this longer side (boxes mapped back); the landmark
            predictor always runs at full resolution.
        min_score: drop detections scoring below this (detector-specific scale, see :class:`FaceLandmarks`).

    Returns:
        FaceLandmarks with box (4,), points (68, 2) and score. Non-commercial model, see the module docstring.
    """
    return detect_points(
        image, get_predictor(PREDICTOR68_FILE), detector=detector, max_side=max_side, min_score=min_score
    )


def landmarks68(image: np.ndarray, *, detector: DetectorName = "auto", max_side: int = 1024) -> np.ndarray:
    """(68, 2) float64 iBUG landmarks of the largest face in ``image``; :class:`NoFaceError` if there is none.

    The entry point for measuring landmark error on rendered faces (see :func:`normalised_mean_error`).
    """
    image = check_image(image)
    return largest_face(detect_landmarks(image, detector=detector, max_side=max_side), image.shape).points


def flip_landmarks68(points: np.ndarray, width: int) -> np.ndarray:
    """iBUG points of the horizontally flipped image (width ``width`` pixels): mirrored x, re-indexed."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-2:] != (68, 2):
        raise ValueError(f"points: expected (..., 68, 2), got {points.shape}")
    flipped = points[..., IBUG68_FLIP, :].copy()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


def inter_ocular_distance(points: np.ndarray) -> np.ndarray:
    """(...,) distance between the outer eye corners (iBUG 36 and 45), the 300-W normaliser."""
    points = np.asarray(points, dtype=np.float64)
    return np.linalg.norm(points[..., 36, :] - points[..., 45, :], axis=-1)


def normalised_mean_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(...,) mean point-to-point error of (..., 68, 2) ``pred`` vs ``target`` / target inter-ocular distance."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.shape[-2:] != (68, 2):
        raise ValueError(f"expected two (..., 68, 2) arrays of the same shape, got {pred.shape}, {target.shape}")
    iod = inter_ocular_distance(target)
    if np.any(iod <= 0):
        raise ValueError("target: outer eye corners coincide (inter-ocular distance 0)")
    return np.linalg.norm(pred - target, axis=-1).mean(-1) / iod
