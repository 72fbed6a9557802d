"""Face detection, landmarks and similarity alignment for the torch-free service path.

numpy + pillow + dlib only (no torch): ``/reconstruct`` uses :func:`detect_landmarks5` and
:func:`align_face`; ``models.landmarks`` adds the 68-point (iBUG 300-W order) predictor on top of the same
machinery for training-time ground truth.

Backends (dlib, PyPI ``dlib-bin``; model files from PyPI ``face-recognition-models``, located on disk without
importing that package, whose ``__init__`` needs the removed ``pkg_resources``):

* ``"hog"``: dlib's frontal face detector (HOG + linear SVM, built into dlib). About 18 ms for a 500×500
  photo on this project's 2-core CPU; frontal and moderately turned faces only (misses the fixture with strong pitch and
  the one with ~60° yaw at its default threshold).
* ``"cnn"``: dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``), its weights, image pyramid and
  non-max suppression run by onnxruntime (:mod:`facecore.dlib_onnx`; the same boxes and scores as dlib's own
  runtime, which took 1.0–1.3 s per 500×500 photo here: the dlib-bin wheel has no BLAS); ≈ 25 ms on a 256-px
  copy, ≈ 60 ms on a 500×500 photo. Finds strongly turned, pitched and black-and-white faces.
* ``"auto"`` (default): HOG first; when it finds no face it is sure of (:data:`CONFIDENT_SCORE`), the CNN, coarse
  to fine: on copies whose longer side is 256, then 512 px, then on the image itself, stopping at the first that
  finds a face (:data:`CNN_COARSE_SIDES`; HOG's weak hits are the answer only when the CNN finds none). The
  detector that produced each face is recorded in :attr:`FaceLandmarks.detector`.

Licences are in :data:`MODEL_LICENCES`. The 5-point predictor and both detectors may be used commercially;
the 68-point predictor (``models.landmarks``) may not (trained on iBUG 300-W).

Coordinates: image pixels, x right, y down, the centre of pixel (column i, row j) at (i, j) (the dlib /
OpenCV convention), so a horizontal flip maps x to ``W - 1 - x``. Boxes are (x0, y0, x1, y1) corner pixel
indices, inclusive. dlib predicts integer pixel positions (±0.5 px quantisation).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

DetectorName = Literal["auto", "hog", "cnn"]
DETECTORS: tuple[str, ...] = ("auto", "hog", "cnn")

MODELS_PACKAGE = "face-recognition-models"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
PREDICTOR5_FILE = "shape_predictor_5_face_landmarks.dat"

MODEL_LICENCES: dict[str, str] = {
    "dlib": "dlib library (PyPI dlib-bin 20.0.1.post1): Boost Software License 1.0.",
    "hog": ("dlib frontal face detector (HOG + linear SVM), built into the dlib library: Boost Software License 1.0."),
    CNN_DETECTOR_FILE: (
        "dlib MMOD CNN face detector by Davis King (PyPI face-recognition-models 0.3.0): released into the "
        "public domain by its author (dlib-models README; the package's licence file is CC0 1.0, its metadata "
        "says MIT). Trained on his own annotations of images from ImageNet, AFLW, Pascal VOC, VGG, WIDER and "
        "FaceScrub. Commercial use allowed."
    ),
    PREDICTOR5_FILE: (
        "dlib 5-point landmark model by Davis King (PyPI face-recognition-models 0.3.0): public domain / CC0 "
        "1.0, trained on the dlib 5-point face landmark dataset (7198 faces he annotated). Commercial use "
        "allowed."
    ),
}

# dlib 5-point model order: subject's left eye outer (iBUG 45) and inner (42) corner, subject's right eye
# outer (36) and inner (39) corner, bottom of the nose (≈ iBUG 33). Checked on the fixture photos.
DLIB5_TO_IBUG68: tuple[int, ...] = (45, 42, 36, 39, 33)

# Alignment anchors, in crop units ([0, 1]², x right, y down, at scale 1): the subject's right eye centre
# (image left), the left eye centre, the bottom of the nose. Framing (a choice): eye centres 0.28 of the crop
# side apart on the line y = 0.38, which keeps the whole face from hairline to chin in the crop with a margin
# on the fixture photos (chin at ≈ 0.87, jaw within 0.2–0.8). The nose drop below the eye line, 0.8013 eye
# distances, is the default face model's mean head (frontal view of its 68-landmark embedding: eye centre =
# mean of the two corners, nose = iBUG 33); tests/models/test_landmarks.py re-derives it. Real faces measure
# ≈ 0.69 on the fixtures, so the least-squares fit there scales ~5 % tighter than on the face model.
ALIGN_EYE_DISTANCE = 0.28
ALIGN_EYE_LINE = 0.38
ALIGN_NOSE_DROP = 0.8013
ALIGN_TEMPLATE: np.ndarray = np.array(
    [
        [0.5 - ALIGN_EYE_DISTANCE / 2, ALIGN_EYE_LINE],
        [0.5 + ALIGN_EYE_DISTANCE / 2, ALIGN_EYE_LINE],
        [0.5, ALIGN_EYE_LINE + ALIGN_NOSE_DROP * ALIGN_EYE_DISTANCE],
    ]
)
ALIGN_TEMPLATE.setflags(write=False)

_MIN_SIDE = 32  # smaller images cannot hold a detectable face (both detectors need ≈ 80 px faces)


class NoFaceError(ValueError):
    """No face was found in the image (or none passed ``min_score``)."""


# -------------------------------------------------------------------------------------------------- contract
@dataclass(frozen=True, eq=False)
class FaceLandmarks:
    """One detected face.

    Attributes:
        box: (4,) float64 detector box x0, y0, x1, y1 in image pixels (inclusive corners, clipped to the image).
        points: (N, 2) float64 landmarks (x, y) in image pixels; N = 68 (iBUG 300-W order, from
            ``models.landmarks``) or 5 (dlib 5-point order, see :data:`DLIB5_TO_IBUG68`).
        score: detector score. Not comparable across detectors: HOG gives an SVM margin (≥ 0 at the default
            threshold, typically 0–3), the CNN an MMOD confidence (≈ 1 for clear faces).
        detector: ``"hog"`` or ``"cnn"``, the backend that found the face.
    """

    box: np.ndarray
    points: np.ndarray
    score: float
    detector: str = ""

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float64).reshape(-1)
        points = np.asarray(self.points, dtype=np.float64)
        if box.shape != (4,) or not (box[0] <= box[2] and box[1] <= box[3]):
            raise ValueError(f"FaceLandmarks.box: expected (4,) x0 <= x1, y0 <= y1, got {box.tolist()}")
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] not in (5, 68):
            raise ValueError(f"FaceLandmarks.points: expected (68, 2) or (5, 2), got {points.shape}")
        box.setflags(write=False)
        points.setflags(write=False)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "score", float(self.score))

    @property
    def box_size(self) -> float:
        """Geometric mean of the box width and height, pixels."""
        return math.sqrt((self.box[2] - self.box[0] + 1.0) * (self.box[3] - self.box[1] + 1.0))


# ---------------------------------------------------------------------------------------------- validation
def check_image(image: Any) -> np.ndarray:
    """``image`` as a C-contiguous (H, W, 3) uint8 RGB array, or a ValueError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"image: expected dtype uint8 (0–255 RGB), got {image.dtype}; convert float images with "
            "np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (grayscale: np.repeat(img[..., None], 3, axis=2); RGBA: drop the alpha channel)"
        raise ValueError(f"image: expected shape (H, W, 3) RGB, got {image.shape}{hint}")
    if min(image.shape[:2]) < _MIN_SIDE:
        raise ValueError(f"image: {image.shape[1]}×{image.shape[0]} is too small, need ≥ {_MIN_SIDE} px a side")
    return np.ascontiguousarray(image)


def _import_dlib() -> Any:
    try:
        import dlib  # optional dependency, imported on first use only
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "face detection needs dlib: pip install 'dlib-bin==20.0.1.post1' 'face-recognition-models==0.3.0' "
            "(part of the serve and train extras)"
        ) from exc
    return dlib


@functools.cache
def models_dir() -> Path:
    """Folder holding the dlib model files of the ``face-recognition-models`` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"dlib model files not found: pip install '{MODELS_PACKAGE}==0.3.0' (part of the serve and train extras)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_path(name: str) -> Path:
    """Path of one model file of ``face-recognition-models``; FileNotFoundError if it is missing."""
    path = models_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; reinstall {MODELS_PACKAGE}")
    return path


# ------------------------------------------------------------------------------------------------- backends
class FaceDetector(Protocol):
    """A face detector: boxes (x0, y0, x1, y1, inclusive pixels, may reach past the image) and scores."""

    name: str

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]: ...


def _rect_to_box(rect: Any) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)


class DlibHogDetector:
    """dlib's HOG frontal face detector.

    Args:
        upsample: image pyramid upsampling steps (each doubles the size: finds faces down to ≈ 40 px, 4× slower).
        threshold: SVM margin a detection needs (dlib's default 0; lower finds more turned faces and more
            false positives).
    """

    name = "hog"

    def __init__(self, upsample: int = 0, threshold: float = 0.0):
        dlib = _import_dlib()
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self._detector = dlib.get_frontal_face_detector()
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        with self._lock:
            rects, scores, _ = self._detector.run(image, self.upsample, self.threshold)
        return [(_rect_to_box(r), float(s)) for r, s in zip(rects, scores, strict=True)]


class DlibCnnDetector:
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``), run by onnxruntime with dlib's weights,
    image pyramid and non-max suppression (:class:`facecore.dlib_onnx.MmodDetector`: the same boxes and scores
    as dlib's own runtime, ~15× faster here). Finds faces of ≈ 80 px and larger (the detector window)."""

    name = "cnn"

    def __init__(self) -> None:
        from facecore.dlib_onnx import get_mmod

        self._net = get_mmod(model_path(CNN_DETECTOR_FILE))

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return self._net(image)


class CascadeDetector:
    """Runs its stages in order until one finds a face it is sure of.

    A detection scoring under its detector's :data:`CONFIDENT_SCORE` is only a candidate: the later stages look
    on, and their faces are taken instead when they find any (HOG fires weakly on background texture, and on
    the smaller of two faces when only the CNN finds the larger); with none, the candidates are the answer.

    Args:
        stages: (detector, max_side) pairs: the detector runs on a copy of the image downscaled so that its
            longer side is at most max_side (None: as given), its boxes mapped back. A stage whose detector
            already ran on an image of the same size is skipped.
    """

    name = "auto"

    def __init__(self, stages: Sequence[tuple[FaceDetector, int | None]]):
        self.stages = tuple(stages)

    def detect_named(self, image: np.ndarray) -> list[tuple[np.ndarray, float, str]]:
        """(box, score, the name of the detector that found it) of each face, in the stage's order."""
        done: set[tuple[int, int]] = set()
        candidates: list[tuple[np.ndarray, float, str]] = []
        short, long = sorted(image.shape[:2])
        for detector, max_side in self.stages:
            side = long if max_side is None else min(max_side, long)
            # a downscaled copy thinner than _MIN_SIDE cannot hold a face (and breaks the CNN's filters)
            if (id(detector), side) in done or (max_side is not None and short * side < _MIN_SIDE * long):
                continue
            done.add((id(detector), side))
            found = [(box, score, detector.name) for box, score in _detect_downscaled(detector, image, side)]
            if any(score >= CONFIDENT_SCORE.get(detector.name, -np.inf) for _, score, _ in found):
                return found
            candidates += found
            logger.debug("%s at %d px found %d weak face(s)", detector.name, side, len(found))
        return candidates

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return [(box, score) for box, score, _ in self.detect_named(image)]


#: a detection scoring under this (per detector) is a candidate the cascade's later stages may overrule. HOG's
#: margin on the fixture portraits it finds: 1.05–1.98 (mirrored 1.25–1.83); on background texture 0.05 (fixture
#: 002 placed on a larger canvas: the face the CNN finds went unreconstructed), on the smaller of two faces when
#: the larger, 002's, is one only the CNN finds 0.13.
CONFIDENT_SCORE = {"hog": 0.5}


# The CNN's first, coarse look for ``"auto"``: a turned face in a portrait is found on a copy whose longer side
# is 256 px (~4x faster than on a 500 px photo: the CNN's cost grows with the pixels); a face too small for it
# there (under ~70 px at that scale) is found by the next stages, which end at the image's own size, so the
# cascade finds every face the CNN alone finds (benchmarks/face_detection.py measures both).
CNN_COARSE_SIDES: tuple[int, ...] = (256, 512)


@functools.cache
def get_detector(name: DetectorName = "auto") -> FaceDetector | CascadeDetector:
    """The shared, lazily loaded detector backend called ``name`` (one of :data:`DETECTORS`)."""
    if name == "hog":
        return DlibHogDetector()
    if name == "cnn":
        return DlibCnnDetector()
    if name == "auto":
        cnn = get_detector("cnn")
        return CascadeDetector([(get_detector("hog"), None), *((cnn, s) for s in CNN_COARSE_SIDES), (cnn, None)])
    raise ValueError(f"detector: unknown backend {name!r}, expected one of {DETECTORS}")


class DlibShapePredictor:
    """A dlib shape predictor (regression-tree ensemble) from the ``face-recognition-models`` files.

    Args:
        file_name: model file name in that package, e.g. :data:`PREDICTOR5_FILE`.
    """

    def __init__(self, file_name: str):
        dlib = _import_dlib()
        self.file_name = file_name
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(model_path(file_name)))
        self._lock = threading.Lock()

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(N, 2) float64 points for the face in ``box`` (x0, y0, x1, y1 inclusive pixels) of ``image``."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        rect = self._dlib.rectangle(x0, y0, x1, y1)
        with self._lock:
            shape = self._predictor(image, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


@functools.cache
def get_predictor(file_name: str) -> DlibShapePredictor:
    """The shared, lazily loaded shape predictor for ``file_name`` (loading the 68-point model takes ≈ 0.4 s)."""
    return DlibShapePredictor(file_name)


# ------------------------------------------------------------------------------------------------ detection
def _downscaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """``image`` resized so that its longer side is ≤ ``max_side``, with the x and y factors back to it."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0, 1.0
    f = max_side / max(h, w)
    w2, h2 = max(1, round(w * f)), max(1, round(h * f))
    small = np.asarray(Image.fromarray(image).resize((w2, h2), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(small), w / w2, h / h2


def detect_faces(
    image: np.ndarray, *, detector: DetectorName = "auto", max_side: int = 1024
) -> list[tuple[np.ndarray, float, str]]:
    """Face boxes in ``image``: (box (4,) in full-image pixels, may reach past the border; score; detector).

    Args:
        image: (H, W, 3) uint8 RGB.
        detector: backend name, see :data:`DETECTORS`.
        max_side: images whose longer side is larger are downscaled to it for detection (speed; the CNN
            costs ≈ 4 ms per 1000 pixels here); boxes are mapped back. Faces smaller than ≈ 80 px *after*
            downscaling are missed.
    """
    image = check_image(image)
    if max_side < _MIN_SIDE:
        raise ValueError(f"max_side: must be ≥ {_MIN_SIDE}, got {max_side}")
    backend = get_detector(detector)
    cascade = backend if isinstance(backend, CascadeDetector) else CascadeDetector([(backend, None)])
    small, sx, sy = _downscaled(image, int(max_side))
    return [(_box_to_image(box, sx, sy), score, used) for box, score, used in cascade.detect_named(small)]


def _detect_downscaled(detector: FaceDetector, image: np.ndarray, max_side: int) -> list[tuple[np.ndarray, float]]:
    """``detector`` on ``image`` downscaled to ``max_side`` (when larger), boxes in ``image``'s pixels."""
    small, sx, sy = _downscaled(image, max_side)
    return [(_box_to_image(box, sx, sy), score) for box, score in detector.detect(small)]


def to_original_pixels(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(..., 2) pixel coordinates on a copy downscaled by (sx, sy) → in the original's pixels (pixel centres at
    integers: x + 0.5 = (x_small + 0.5) sx)."""
    return (np.asarray(points, np.float64) + 0.5) * np.array([sx, sy]) - 0.5


def _box_to_image(box: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A box (x0, y0, x1, y1) on a copy downscaled by (sx, sy) in the original's pixels."""
    return to_original_pixels(np.reshape(box, (2, 2)), sx, sy).reshape(4)


def _clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])


def detect_points(
    image: np.ndarray,
    predictor: DlibShapePredictor,
    *,
    detector: DetectorName = "auto",
    max_side: int = 1024,
    min_score: float | None = None,
) -> list[FaceLandmarks]:
    """Detect faces and run ``predictor`` on each; largest face first (then highest score).

    Detection may run on a downscaled copy (``max_side``); the predictor always runs on the full-resolution
    image with the box mapped back. ``min_score`` drops weaker detections (scores are per detector, see
    :class:`FaceLandmarks`). Returns an empty list when nothing is found.
    """
    image = check_image(image)
    h, w = image.shape[:2]
    faces = []
    for box, score, used in detect_faces(image, detector=detector, max_side=max_side):
        if min_score is not None and score < min_score:
            continue
        points = predictor.predict(image, box)
        faces.append(FaceLandmarks(box=_clip_box(box, w, h), points=points, score=score, detector=used))
    return _largest_first(faces)


def detect_landmarks5(
    image: np.ndarray, *, detector: DetectorName = "auto", max_side: int = 1024, min_score: float | None = None
) -> list[FaceLandmarks]:
    """Faces with dlib's 5-point landmarks (commercially usable models), largest first; may be empty.

    Args:
        image: (H, W, 3) uint8 RGB.
        detector, max_side, min_score: see :func:`detect_points`.

    Returns:
        FaceLandmarks with points (5, 2) in dlib 5-point order (:data:`DLIB5_TO_IBUG68`).
    """
    return detect_points(
        image, get_predictor(PREDICTOR5_FILE), detector=detector, max_side=max_side, min_score=min_score
    )


def _largest_first(faces: list[FaceLandmarks]) -> list[FaceLandmarks]:
    """``faces`` ordered as :func:`largest_face` takes them: largest box first, the stronger detection on a tie."""
    return sorted(faces, key=lambda f: (-f.box_size, -f.score))


def largest_face(faces: list[FaceLandmarks], image_shape: tuple[int, ...]) -> FaceLandmarks:
    """The first (largest) face, or :class:`NoFaceError` naming the image size when there is none."""
    if not faces:
        raise NoFaceError(
            f"no face found in the {image_shape[1]}×{image_shape[0]} image (too small for the detectors, about 80 px "
            "across at the size they look at; too turned or covered; or upside down)"
        )
    return faces[0]


# A weak HOG detection is checked the other way up (the face's image turned 180°): HOG finds an upside-down face now
# and then, weakly (fixture 001 turned over: 0.26-0.34, upright 1.88), and the 5 points and the fit then take its
# mouth for its brows. Measured: of 153 HOG detections on 200 synthetic renders, 47 scored under 0.5, and their
# turned images gave no stronger detection (one of them any: 0.14 vs 0.17); the four upright HOG fixtures' turned
# images, none at all.
UPSIDE_DOWN_MARGIN = 0.5


def upside_down(image: np.ndarray, face: FaceLandmarks, max_side: int = 1024) -> bool:
    """Whether ``face`` (found in ``image``) is upside down: a weak HOG detection (under :data:`CONFIDENT_SCORE`)
    whose image turned 180° holds a HOG face stronger by :data:`UPSIDE_DOWN_MARGIN`. Stronger detections and the
    CNN's are taken as upright (the CNN found none of the turned fixtures)."""
    if face.detector != "hog" or face.score >= CONFIDENT_SCORE["hog"]:
        return False
    turned = detect_faces(np.ascontiguousarray(image[::-1, ::-1]), detector="hog", max_side=max_side)
    return max((score for _, score, _ in turned), default=-np.inf) > face.score + UPSIDE_DOWN_MARGIN


# A face the CNN finds on its side (a photo turned 90° whose EXIF orientation was lost): the 5-point predictor
# assumes an upright face and returned an upright-looking set of points inside its box (fixture 001 turned 90°: both
# "eyes" across its nose, the head reconstructed sideways with hair across the forehead). HOG is strongly
# orientation-selective: on a crop around such a face turned back upright it scores 1.79-1.94 (001, 013), where on
# the turned crops of the upright fixtures it found nothing.
SIDEWAYS_SCORE = 1.0
SIDEWAYS_CROP = 320  # px: the longer side of the copy of a face's crop HOG looks at (its faces are ~200 px there)


def _rot90_points(points: np.ndarray, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """(..., 2) pixel coordinates in an (H, W) image → in ``np.rot90(image, k)`` (k quarter turns anticlockwise)."""
    h, w = shape[:2]
    x, y = np.asarray(points, np.float64)[..., 0], np.asarray(points, np.float64)[..., 1]
    for _ in range(k % 4):  # one anticlockwise quarter turn: (x, y) → (y, w − 1 − x); the shape becomes (w, h)
        x, y, h, w = y, w - 1 - x, w, h
    return np.stack([x, y], -1)


def _rot90_box(box: np.ndarray, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """A box (x0, y0, x1, y1) in an (H, W) image → the box of its corners in ``np.rot90(image, k)``."""
    corners = _rot90_points(np.reshape(box, (2, 2)), k, shape)
    return np.concatenate([corners.min(0), corners.max(0)])


def sideways(image: np.ndarray, face: FaceLandmarks) -> int:
    """Quarter turns (1 or 3, as ``np.rot90``'s ``k``) that bring ``face`` upright when it lies on its side, else 0:
    a CNN or weak HOG detection whose crop HOG finds turned by a quarter with a margin of at least
    :data:`SIDEWAYS_SCORE`, and finds upright less strongly."""
    if face.detector == "hog" and face.score >= CONFIDENT_SCORE["hog"]:
        return 0
    x0, y0, x1, y1 = face.box
    half = 0.8 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    H, W = image.shape[:2]
    crop = image[int(max(cy - half, 0)) : int(min(cy + half, H)), int(max(cx - half, 0)) : int(min(cx + half, W))]
    if min(crop.shape[:2]) < _MIN_SIDE:
        return 0
    crop = _downscaled(crop, SIDEWAYS_CROP)[0]  # HOG's margin does not depend on the scale; its cost does
    hog = get_detector("hog")
    scores = {k: max((s for _, s in hog.detect(np.ascontiguousarray(np.rot90(crop, k)))), default=-np.inf)
              for k in (0, 1, 3)}  # fmt: skip
    k = max((1, 3), key=scores.__getitem__)
    return k if scores[k] >= SIDEWAYS_SCORE and scores[k] > scores[0] else 0


def turned_upright(
    image: np.ndarray, face: FaceLandmarks, predictor: DlibShapePredictor | None = None
) -> FaceLandmarks:
    """``face`` with its points predicted on the image turned upright when it lies on its side (:func:`sideways`),
    mapped back to ``image``'s pixels; ``face`` itself otherwise."""
    k = sideways(image, face)
    if k == 0:
        return face
    predictor = predictor or get_predictor(PREDICTOR5_FILE)
    turned = np.ascontiguousarray(np.rot90(image, k))
    points = _rot90_points(predictor.predict(turned, _rot90_box(face.box, k, image.shape)), 4 - k, turned.shape)
    return FaceLandmarks(box=face.box, points=points, score=face.score, detector=face.detector)


def detect_on_its_side(
    image: np.ndarray, *, detector: DetectorName = "auto", max_side: int = 1024
) -> list[FaceLandmarks]:
    """Faces found in ``image`` turned a quarter either way, when upright it shows none the detectors find (a
    portrait whose EXIF orientation was lost, its face too turned for them on its side: fixtures 002, 006, 018
    and 028 turned 90°); their boxes and 5 points (predicted upright) in ``image``'s pixels, largest first."""
    faces = []
    for k in (1, 3):
        turned = np.ascontiguousarray(np.rot90(image, k))
        for face in detect_landmarks5(turned, detector=detector, max_side=max_side):
            box = _clip_box(_rot90_box(face.box, 4 - k, turned.shape), image.shape[1], image.shape[0])
            points = _rot90_points(face.points, 4 - k, turned.shape)
            faces.append(FaceLandmarks(box=box, points=points, score=face.score, detector=face.detector))
    return _largest_first(faces)


# ------------------------------------------------------------------------------------------------ alignment
class AlignedFace(NamedTuple):
    """A face crop and the transform that produced it.

    Attributes:
        crop: (S, S, 3) uint8 RGB.
        matrix: (2, 3) float64 similarity, image pixels → crop pixels: ``p_crop = M[:, :2] @ p + M[:, 2]``.
    """

    crop: np.ndarray
    matrix: np.ndarray

    def image_to_crop(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) image pixels → crop pixels."""
        return transform_points(points, self.matrix)

    def crop_to_image(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) crop pixels → image pixels."""
        return transform_points(points, invert_affine(self.matrix))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine ``matrix`` to (..., 2) points."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    if points.shape[-1] != 2 or matrix.shape != (2, 3):
        raise ValueError(
            f"transform_points: expected (..., 2) points and a (2, 3) matrix, got {points.shape}, {matrix.shape}"
        )
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix (ValueError when it is singular)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    a = matrix[:, :2]
    det = float(np.linalg.det(a))
    if not np.isfinite(det) or abs(det) < 1e-12:
        raise ValueError(f"invert_affine: singular matrix (det {det:g})")
    a_inv = np.linalg.inv(a)
    return np.concatenate([a_inv, -a_inv @ matrix[:, 2:]], axis=1)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src to dst.

    Closed form (Umeyama 1991) for (N, 2) point sets, N ≥ 2. Returns a (2, 3) matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"similarity_transform: expected two (N, 2) arrays, N ≥ 2, got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("similarity_transform: source points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = float((sig * sign).sum() / var_s)
    a = scale * rot
    return np.concatenate([a, (mu_d - a @ mu_s)[:, None]], axis=1)


def alignment_anchors(points: np.ndarray) -> np.ndarray:
    """(3, 2) anchors of :data:`ALIGN_TEMPLATE` from (68, 2) iBUG or (5, 2) dlib 5-point landmarks.

    Anchors: subject's right eye centre (mean of its two corners), left eye centre, bottom of the nose. Both
    schemes give the same anchors (within the predictors' disagreement, ≈ 2 px on the fixtures), so crops
    made from ground-truth 68 points during training match those made from 5 points in the service.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape == (68, 2):
        right_eye, left_eye, nose = points[[36, 39]].mean(0), points[[42, 45]].mean(0), points[33]
    elif points.shape == (5, 2):
        right_eye, left_eye, nose = points[[2, 3]].mean(0), points[[0, 1]].mean(0), points[4]
    else:
        raise ValueError(f"landmarks: expected (68, 2) iBUG or (5, 2) dlib 5-point points, got {points.shape}")
    anchors = np.stack([right_eye, left_eye, nose])
    if not np.isfinite(anchors).all():
        raise ValueError("landmarks: contain NaN or inf")
    return anchors


def alignment_matrix(points: np.ndarray, output_size: int = 224, scale: float = 1.0) -> np.ndarray:
    """(2, 3) similarity, image pixels → crop pixels, that puts the anchors of ``points`` on the template.

    Args:
        points: (68, 2) iBUG or (5, 2) dlib 5-point landmarks in image pixels.
        output_size: side of the square crop, pixels.
        scale: zoom out by this factor around the crop centre (1: the template framing, the whole face from
            hairline to chin; 1.5: more context, e.g. hair and ears).
    """
    return anchors_matrix(alignment_anchors(points), output_size, scale)


def anchors_matrix(anchors: np.ndarray, output_size: int = 224, scale: float = 1.0) -> np.ndarray:
    """:func:`alignment_matrix` from the (3, 2) anchors themselves (:func:`alignment_anchors`)."""
    if not (isinstance(output_size, int | np.integer) and 8 <= output_size <= 4096):
        raise ValueError(f"output_size: expected an integer in [8, 4096], got {output_size!r}")
    if not (np.isfinite(scale) and 0.1 <= scale <= 10):
        raise ValueError(f"scale: expected a number in [0.1, 10], got {scale!r}")
    template = (0.5 + (ALIGN_TEMPLATE - 0.5) / scale) * output_size - 0.5  # unit square → pixel centres
    return similarity_transform(np.asarray(anchors, np.float64), template)


def align_face(
    image: np.ndarray,
    landmarks: FaceLandmarks | np.ndarray,
    output_size: int = 224,
    scale: float = 1.0,
    *,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> AlignedFace:
    """Crop and align a face with a similarity transform of its eye and nose anchors onto the template.

    Args:
        image: (H, W, 3) uint8 RGB.
        landmarks: a FaceLandmarks, or (68, 2) iBUG / (5, 2) dlib 5-point points in image pixels.
        output_size: side of the square crop, pixels.
        scale: zoom-out factor around the crop centre (see :func:`alignment_matrix`).
        fill: colour of crop pixels outside the image.

    Returns:
        AlignedFace: the (S, S, 3) crop and the (2, 3) image → crop matrix; ``crop_to_image`` maps points back.
        Bilinear sampling; when the face shrinks by 2× or more the image is first box-reduced by the integer
        factor, so the crop is not aliased.
    """
    image = check_image(image)
    points = landmarks.points if isinstance(landmarks, FaceLandmarks) else landmarks
    matrix = alignment_matrix(points, output_size, scale)
    return warp_crop(image, matrix, output_size, fill=fill)


def warp_crop(
    image: np.ndarray, matrix: np.ndarray, output_size: int, *, fill: tuple[int, int, int] = (0, 0, 0)
) -> AlignedFace:
    """The (S, S) crop of ``image`` (H, W, 3 uint8) under the (2, 3) image → crop ``matrix`` (bilinear; a crop
    that shrinks the image 2× or more box-reduces it by the integer factor first, so it is not aliased).
    ValueError for a singular matrix."""
    invert_affine(matrix)
    zoom = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
    pil = Image.fromarray(image)
    # reduced pixel j covers full pixels [f*j, f*j + f): x_full = f * x_reduced + (f - 1) / 2
    factor = max(1, min(int(1.0 / zoom), min(image.shape[:2]) // 2))
    if factor >= 2:
        pil = pil.reduce(factor)
        to_full = np.array([[factor, 0.0, (factor - 1) / 2], [0.0, factor, (factor - 1) / 2]])
        src_matrix = matrix[:, :2] @ to_full[:, :2]
        src_matrix = np.concatenate([src_matrix, (matrix[:, :2] @ to_full[:, 2] + matrix[:, 2])[:, None]], axis=1)
    else:
        src_matrix = matrix
    # PIL samples output pixel (u, v) at input inv(u + 0.5, v + 0.5) in corner coordinates (pixel centre at
    # i + 0.5); our matrices use centre coordinates, so shift by 0.5 on both sides.
    inv = invert_affine(src_matrix)
    coeffs = (
        inv[0, 0],
        inv[0, 1],
        inv[0, 2] + 0.5 - 0.5 * (inv[0, 0] + inv[0, 1]),
        inv[1, 0],
        inv[1, 1],
        inv[1, 2] + 0.5 - 0.5 * (inv[1, 0] + inv[1, 1]),
    )
    crop = pil.transform(
        (output_size, output_size),
        Image.Transform.AFFINE,
        data=coeffs,
        resample=Image.Resampling.BILINEAR,
        fillcolor=tuple(int(c) for c in fill),
    )
    return AlignedFace(crop=np.asarray(crop), matrix=matrix)
