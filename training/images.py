"""Image files that the training stages write (sample grids, extracted UV maps): one PNG writer for all of them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write an 8-bit image as a PNG file, atomically (temporary file beside it, then rename).

    Args:
        image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, dtype uint8 (any memory layout).
        path: the file to write; missing parent folders are created. A reader never sees a partial file, so a
            file's presence can mark finished work.

    Raises:
        ValueError: ``image`` is not uint8 or not one of those shapes.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png: expected a uint8 image, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"save_png: expected (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    os.replace(tmp, path)
