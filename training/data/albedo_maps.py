"""AlbedoGAN's training maps: the synthetic source's procedural albedos or a folder of UV maps, as datasets.

:func:`build_data` gives the training set and the held-out set the metric compares against (synthetic: the
stream indices after the training ones; folder: a seeded random subset that training never sees), and
:class:`EpochSampler` a seeded order per epoch (position → index), which is what makes resuming exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import torch

from training.data.images import ImageFolderAlbedos, resize_uv, to_uint8
from training.loop import derive_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    Attributes:
        kind: ``synthetic`` (procedural albedo of ``training.data.procedural_albedo``) or ``folder`` (PNG/JPEG files).
        path: the folder (kind ``folder``).
        num_samples: synthetic training-set size (indices ``0 … num_samples − 1`` of the stream).
        seed: synthetic stream seed, and the seed of the data order and of the folder's hold-out split.
        holdout: maps kept out of training as the metric's reference (synthetic: indices ``num_samples …``;
            folder: a seeded random subset). 0 = the metric compares against the training maps.
        mirror: also train on the mirrored maps (doubles the set; the UV layout is left–right symmetric).
        cache: keep decoded maps in memory (uint8).
    """

    kind: str = "synthetic"
    path: str | None = None
    num_samples: int = 4096
    seed: int = 0
    holdout: int = 256
    mirror: bool = False
    cache: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "folder"):
            raise ValueError(f"albedo.data.kind: expected 'synthetic' or 'folder', got {self.kind!r}")
        if self.kind == "folder" and not self.path:
            raise ValueError("albedo.data.path: set it to the folder of UV albedo PNGs (data.kind=folder)")
        if self.num_samples < 1 or self.holdout < 0:
            raise ValueError("albedo.data: num_samples must be >= 1 and holdout >= 0")


class AlbedoSource(Protocol):
    """Index-addressed UV albedo maps: ``load_uint8(i)`` → (3, R, R) uint8 sRGB, deterministic per index."""

    resolution: int

    def __len__(self) -> int: ...

    def load_uint8(self, index: int) -> torch.Tensor: ...


class SyntheticAlbedos:
    """Procedural UV albedo maps (``training.data.procedural_albedo``), sRGB-encoded and quantised like a PNG.

    Map ``i`` is drawn from :meth:`SyntheticFaces.generator` of index ``i`` (a pure function of ``(seed, i)``) by
    :func:`sample_albedo_params` and rendered by :class:`ProceduralAlbedo` at ``max(R, 64)`` texels (its
    minimum), then resized to R. The same maps written as PNGs train identically through the folder source.

    Args:
        resolution: R.
        seed: stream seed.
        length: number of maps (``len``); any index ≥ 0 can be loaded.
        cache: keep generated maps in memory.
    """

    def __init__(self, resolution: int, seed: int = 0, length: int = 4096, cache: bool = True) -> None:
        from training.data.synthetic import SyntheticConfig, SyntheticFaces

        self.resolution = resolution
        self._size = min(max(resolution, 64), 1024)
        self._faces = SyntheticFaces(SyntheticConfig(image_size=16, albedo_size=self._size, seed=seed, length=length))
        self._length = length
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return self._length

    def load_uint8(self, index: int) -> torch.Tensor:
        from training.data.procedural_albedo import sample_albedo_params
        from training.data.skin import linear_to_srgb

        if index < 0:
            raise IndexError(f"synthetic albedo index must be >= 0, got {index}")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        params = sample_albedo_params(1, self._faces.generator(index))
        with torch.no_grad():
            srgb = linear_to_srgb(self._faces.albedo(params, self._size))
        out = to_uint8(resize_uv(srgb, self.resolution))[0]
        if self._cache is not None:
            self._cache[index] = out
        return out


class AlbedoDataset:
    """A subset of a source, optionally with mirrored copies: ``batch(indices)`` → (B, 3, R, R) in [-1, 1].

    Args:
        source: the maps.
        indices: the source indices that belong to this set.
        mirror: indices ``len(indices) …`` are the mirrored maps (left–right flip of the UV map).
    """

    def __init__(self, source: AlbedoSource, indices: Sequence[int], mirror: bool = False) -> None:
        if len(indices) == 0:
            raise ValueError("the albedo dataset is empty")
        self.source = source
        self.indices = [int(i) for i in indices]
        self.mirror = mirror

    def __len__(self) -> int:
        return len(self.indices) * (2 if self.mirror else 1)

    def load_uint8(self, index: int) -> torch.Tensor:
        n = len(self.indices)
        img = self.source.load_uint8(self.indices[index % n])
        return img.flip(-1) if index >= n else img

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        imgs = torch.stack([self.load_uint8(int(i)) for i in indices])
        return imgs.to(torch.float32) / 127.5 - 1.0


class EpochSampler:
    """Sample position ``p`` → dataset index: epoch ``p // n`` visits a permutation seeded by ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("EpochSampler needs a non-empty dataset")
        self.n = n
        self.seed = seed
        self._perm = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0, 0xDA7A))
        return torch.randperm(self.n, generator=g).tolist()

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices of positions ``start … start + count − 1``."""
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + count)]


def build_data(d: DataConfig, resolution: int) -> tuple[AlbedoDataset, AlbedoDataset | None]:
    """The training set and the metric's reference set (None when ``holdout`` is 0: compare to training)."""
    if d.kind == "synthetic":
        source: AlbedoSource = SyntheticAlbedos(resolution, d.seed, d.num_samples + d.holdout, d.cache)
        train = AlbedoDataset(source, range(d.num_samples), d.mirror)
        held = AlbedoDataset(source, range(d.num_samples, d.num_samples + d.holdout)) if d.holdout else None
        return train, held
    folder = ImageFolderAlbedos(d.path, resolution, cache=d.cache)
    n = len(folder)
    if d.holdout >= n:
        raise ValueError(f"albedo.data.holdout={d.holdout} leaves no training maps of the {n} in {d.path}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(d.seed, 0, 0, 0x401D))).tolist()
    held_idx = sorted(order[n - d.holdout :]) if d.holdout else []
    train_idx = sorted(order[: n - d.holdout])
    train = AlbedoDataset(folder, train_idx, d.mirror)
    return train, (AlbedoDataset(folder, held_idx) if held_idx else None)
