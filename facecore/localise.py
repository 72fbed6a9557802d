"""68 landmarks from the bundle's ``landmarks`` graph (the ``localiser`` training stage), torch-free.

The graph reads a crop cut with the alignment template (:func:`facecore.detect.anchors_matrix`) zoomed out by
:data:`CROP_SCALE` around rough anchors (eye centres, nose bottom) and returns the 68 iBUG landmarks (the face
model's projected 3-D points, hidden ones included) in crop units: ``x_unit = (x_px + 0.5) / S - 0.5``. The first
pass cuts around dlib's 5 points, each further pass around the previous pass's answer, so a turned head that
dlib framed as a frontal one is re-framed by the network's own estimate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from facecore import detect

GRAPH = "landmarks"
GRAPH_INPUT = "image"
GRAPH_OUTPUT = "landmarks"
#: the crop's zoom-out around the alignment template: the face fills 1 / CROP_SCALE of the crop's side, so
#: anchors off by a third of the eye distance still leave the whole face inside it
CROP_SCALE = 1.4
PASSES = 2

RunGraph = Callable[[str, Mapping[str, np.ndarray]], Awaitable[Mapping[str, np.ndarray]]]
RunStage = Callable[..., Awaitable[Any]]


def units_to_pixels(units: np.ndarray, size: int) -> np.ndarray:
    """(..., 2) crop units → crop pixels (pixel centres at integers)."""
    return (np.asarray(units, np.float64) + 0.5) * size - 0.5


def pixels_to_units(pixels: np.ndarray, size: int) -> np.ndarray:
    return (np.asarray(pixels, np.float64) + 0.5) / size - 0.5


def graph_input(crops: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 crops → the graph's (N, 3, S, S) float32 input in [0, 1]."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


async def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def crop(image: np.ndarray, anchors: np.ndarray, size: int, scale: float = CROP_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """The localiser's (S, S, 3) crop around (3, 2) ``anchors`` and its (2, 3) image → crop matrix."""
    matrix = detect.anchors_matrix(anchors, size, scale)
    return detect.warp_crop(image, matrix, size).crop, matrix


async def localise(
    run_graph: RunGraph,
    image: np.ndarray,
    points: np.ndarray,
    size: int,
    passes: int = PASSES,
    scale: float = CROP_SCALE,
    run_stage: RunStage = _direct,
) -> np.ndarray:
    """(68, 2) landmarks in image pixels, starting from (5, 2) dlib or (68, 2) iBUG ``points``: ``passes``
    crops of side ``size`` (the graph's input) at zoom ``scale``, each around the previous answer's anchors.
    ``run_stage(fn, *args)`` runs the cropping (the service: in a worker thread)."""
    anchors = detect.alignment_anchors(points)
    found = np.asarray(points, np.float64)
    for _ in range(passes):
        patch, matrix = await run_stage(crop, image, anchors, size, scale)
        out = await run_graph(GRAPH, {GRAPH_INPUT: graph_input(patch[None])})
        found = detect.transform_points(units_to_pixels(out[GRAPH_OUTPUT][0], size), detect.invert_affine(matrix))
        anchors = detect.alignment_anchors(found)
    return found
