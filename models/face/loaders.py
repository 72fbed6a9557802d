"""Face-model loaders: one entry point that picks the reader from the file suffix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facecore.geometry import FaceModelArrays
from models.face.flame import load_flame

SUPPORTED_FORMATS = {".npz": "face-model schema (FaceModelArrays)", ".pkl": "official FLAME model pickle"}


def load_face_model(path: str | Path, **flame_options: Any) -> FaceModelArrays:
    """Load a face model by suffix: ``.npz`` → :meth:`FaceModelArrays.load`, ``.pkl`` → :func:`load_flame`.

    Args:
        path: the model file.
        **flame_options: keyword arguments of :func:`load_flame` (``.pkl`` only).

    Raises:
        ValueError: unsupported suffix, or FLAME options given for an ``.npz``.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        supported = ", ".join(f"{s} ({what})" for s, what in SUPPORTED_FORMATS.items())
        raise ValueError(f"{path}: unsupported face-model format {path.suffix!r}; supported: {supported}")
    if not path.is_file():
        raise FileNotFoundError(f"face model file not found: {path}")
    if suffix == ".pkl":
        return load_flame(path, **flame_options)
    if flame_options:
        raise ValueError(f"{path}: options {sorted(flame_options)} apply only to FLAME .pkl files")
    return FaceModelArrays.load(path)
