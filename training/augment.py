"""Differentiable augmentation of everything AlbedoGAN's discriminator sees (reals and fakes alike)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


AUGMENT_OPS = ("color", "translation", "cutout")


@dataclass(frozen=True)
class AugmentConfig:
    """Differentiable augmentation of everything D sees (reals and fakes alike).

    Attributes:
        policy: operations among ``color``, ``translation``, ``cutout``; empty = off.
        probability: per-sample probability of each operation (< 0.8 keeps it non-leaking).
        translation: maximum shift as a fraction of the image size.
        cutout: side of the cut-out square as a fraction of the image size.
    """

    policy: tuple[str, ...] = ()
    probability: float = 0.5
    translation: float = 0.125
    cutout: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", tuple(self.policy))
        unknown = sorted(set(self.policy) - set(AUGMENT_OPS))
        if unknown:
            raise ValueError(f"albedo.augment.policy: unknown operations {unknown}; expected {list(AUGMENT_OPS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"albedo.augment.probability must be in [0, 1], got {self.probability}")
        if self.probability >= 0.8 and self.policy:
            logger.warning("augment probability %.2f >= 0.8 may leak augmentations into G", self.probability)


def diff_augment(
    x: torch.Tensor,
    policy: Sequence[str],
    generator: torch.Generator,
    probability: float = 1.0,
    translation: float = 0.125,
    cutout: float = 0.5,
) -> torch.Tensor:
    """Differentiable augmentation (DiffAugment's operations), each op applied per sample with ``probability``.

    The same random numbers are drawn whatever the outcome of the per-sample gates (a fixed draw sequence).

    Args:
        x: (B, C, H, W) images in [-1, 1].
        policy: operations in order: ``color`` (brightness ±0.5, saturation ×[0, 2], contrast ×[0.5, 1.5]),
            ``translation`` (integer shift up to ``translation · size``, zero fill), ``cutout`` (a zeroed square
            of side ``cutout · size``).
        generator: the RNG, on ``x.device``.
        probability: per-sample, per-operation probability.
        translation: maximum shift, fraction of the size.
        cutout: square side, fraction of the size.

    Returns:
        (B, C, H, W), differentiable with respect to ``x``.
    """
    if not policy:
        return x
    B, _, H, W = x.shape
    dev = x.device

    def rand() -> torch.Tensor:
        return torch.rand([B, 1, 1, 1], generator=generator, device=dev, dtype=torch.float32)

    def gate() -> torch.Tensor:
        return (rand() < probability).to(x.dtype)

    for op in policy:
        if op == "color":
            g, r = gate(), rand().to(x.dtype)
            x = x + g * (r - 0.5)
            g, r = gate(), rand().to(x.dtype)
            mean = x.mean(dim=1, keepdim=True)
            x = x + g * (x - mean) * (2 * r - 1)
            g, r = gate(), rand().to(x.dtype)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = x + g * (x - mean) * (r - 0.5)
        elif op == "translation":
            g = gate()[:, 0, 0, 0].to(torch.int64)
            sx_max, sy_max = int(W * translation + 0.5), int(H * translation + 0.5)
            sx = torch.randint(-sx_max, sx_max + 1, [B], generator=generator, device=dev) * g
            sy = torch.randint(-sy_max, sy_max + 1, [B], generator=generator, device=dev) * g
            rows = torch.arange(H, device=dev)[None, :] - sy[:, None]  # source row of each target row
            cols = torch.arange(W, device=dev)[None, :] - sx[:, None]
            valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
            b = torch.arange(B, device=dev)[:, None, None]
            moved = x.permute(0, 2, 3, 1)[b, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]
            x = moved.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)
        elif op == "cutout":
            g = gate()
            cw, ch = int(W * cutout + 0.5), int(H * cutout + 0.5)
            ox = torch.randint(0, W + (1 - cw % 2), [B, 1, 1], generator=generator, device=dev) - cw // 2
            oy = torch.randint(0, H + (1 - ch % 2), [B, 1, 1], generator=generator, device=dev) - ch // 2
            cols = torch.arange(W, device=dev)[None, None, :]
            rows = torch.arange(H, device=dev)[None, :, None]
            inside = (cols >= ox) & (cols < ox + cw) & (rows >= oy) & (rows < oy + ch)
            x = x * (1 - g * inside[:, None].to(x.dtype))
        else:
            raise ValueError(f"unknown augmentation {op!r}; expected one of {AUGMENT_OPS}")
    return x
