"""A folder of UV albedo images (PNG, or JPEG) as a deterministic, index-addressed dataset.

The images are UV albedo maps in the face model's layout (row 0 is v = 1), sRGB-encoded, as written by texture
extraction (``training/texture.py``) or by any other tool. A UV map covers ``(u, v) ∈ [0, 1]²`` whatever its
pixel size, so every image is resized (both axes, antialiased) to the training resolution; an image that is
not square is resized all the same (the UV square is what matters) and noted once in the log.

Determinism: files are listed recursively and sorted by their path relative to the folder, so index ``i`` is
the same file on every machine and every DDP rank; decoding is a deterministic function of the file. Samples
are quantised to 8 bits after resizing (:meth:`ImageFolderAlbedos.load_uint8`), so a cached and a freshly
decoded sample are bit-identical and the in-memory cache is 1 byte per texel.

Errors: a missing folder, a folder without images, or a folder whose images are all unreadable raise with
the path; a single corrupt or unreadable file is skipped with a logged warning (its index is not used).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
"""Refuse images above 64 Mpx (8192²): UV albedo maps are at most 4096² in practice."""


def resize_uv(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Antialiased resize of UV maps to ``resolution`` × ``resolution``.

    Args:
        image: (B, C, H, W) float images.
        resolution: output size.

    Returns:
        (B, C, resolution, resolution); the input itself when it already has that size. Downsampling uses
        bicubic with antialiasing (a band-limited prefilter), upsampling plain bicubic.
    """
    if image.shape[-2:] == (resolution, resolution):
        return image
    return F.interpolate(image, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True)


def to_uint8(image01: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → uint8 with round-half-up (the PNG quantisation). Shapes are kept."""
    return (image01.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8)


class ImageFolderAlbedos:
    """UV albedo maps from a folder of image files, resized to a square resolution.

    Args:
        path: folder, searched recursively for ``*.png``, ``*.jpg``, ``*.jpeg`` (case-insensitive).
        resolution: training resolution R (a power of two ≥ 4).
        cache: keep decoded samples in memory (uint8, ``3 R²`` bytes each).
        check: decode every file once up front (filling the cache) and skip the unreadable ones with a logged
            warning, so that training never meets a bad file. With ``check=False`` files are only listed and an
            unreadable one raises when it is loaded.

    Raises:
        FileNotFoundError: the folder does not exist or holds no image files.
        ValueError: every image file in the folder is unreadable, or the resolution is invalid.
    """

    def __init__(self, path: str | Path, resolution: int, *, cache: bool = True, check: bool = True) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4:
            raise ValueError(f"resolution: expected an int >= 4, got {resolution!r}")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"albedo image folder not found: {self.root}")
        self.resolution = resolution
        found = sorted(
            (p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not found:
            raise FileNotFoundError(
                f"no albedo images (*.png, *.jpg) in {self.root}; point data.path at the folder of UV albedo maps "
                "written by texture extraction, or use data.kind=synthetic"
            )
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        self._warned_shape = False
        if check:
            good: list[Path] = []
            decoded: list[torch.Tensor] = []
            for file in found:
                try:
                    sample = self._decode(file)
                except ValueError as exc:
                    logger.warning("skipping unreadable albedo image: %s", exc)
                    continue
                good.append(file)
                if cache:
                    decoded.append(sample)
            if not good:
                raise ValueError(f"all {len(found)} image files in {self.root} are unreadable (see the warnings)")
            found = good
            if self._cache is not None:
                self._cache = dict(enumerate(decoded))
        self.files: tuple[Path, ...] = tuple(found)
        logger.info("albedo folder %s: %d images at %d²", self.root, len(self.files), resolution)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"ImageFolderAlbedos({str(self.root)!r}, resolution={self.resolution}, n={len(self)})"

    def load_uint8(self, index: int) -> torch.Tensor:
        """Sample ``index`` as (3, R, R) uint8, sRGB-encoded, row 0 = v = 1.

        Raises:
            IndexError: index out of range.
            ValueError: the file cannot be decoded (it changed or was corrupt and ``check=False``).
        """
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"albedo index {index} out of range for {n} images")
        index %= n
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        out = self._decode(self.files[index])
        if self._cache is not None:
            self._cache[index] = out
        return out

    def _decode(self, file: Path) -> torch.Tensor:
        """Decode, convert to RGB, resize, quantise: (3, R, R) uint8. Raises ValueError naming the file."""
        try:
            with Image.open(file) as img:
                _check_size(img)
                if img.width != img.height and not self._warned_shape:
                    logger.info("%s is %dx%d, not square: resized to the UV square", file, img.width, img.height)
                    self._warned_shape = True
                rgb = np.asarray(_to_rgb(img), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot decode albedo image {file}: {type(exc).__name__}: {exc}") from exc
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].to(torch.float32) / 255.0
        return to_uint8(resize_uv(x, self.resolution))[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        """(3, R, R) float32 in [0, 1]."""
        return self.load_uint8(index).to(torch.float32) / 255.0

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Samples ``indices`` as (B, 3, R, R) float32 in [0, 1]."""
        if len(indices) == 0:
            raise ValueError("batch: no indices")
        return torch.stack([self.load_uint8(int(i)) for i in indices]).to(torch.float32) / 255.0


def _check_size(img: Image.Image) -> None:
    if img.width < 1 or img.height < 1 or img.width * img.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image size {img.width}x{img.height} is outside 1 px … {MAX_IMAGE_PIXELS} px")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (16-bit greyscale is scaled, alpha is dropped, palettes are expanded)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    img.load()
    return img.convert("RGB")
