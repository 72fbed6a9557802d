"""Batched frozen dataclasses and the scalar random draws of the synthetic-data samplers.

:class:`Batched` gives a frozen dataclass whose tensors all have the batch as their first dimension ``to``,
``select`` and ``cat``; :func:`uniform`, :func:`log_uniform` and :func:`bernoulli` draw from an explicit
``torch.Generator`` (float64, on the generator's device), so a seed gives the same numbers everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def _map_tensors(obj: T, fn: Callable[[torch.Tensor], torch.Tensor]) -> T:
    """Apply ``fn`` to every tensor of a (nested) frozen dataclass."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        )
    return obj


def _cat_tree(objs: Sequence[T]) -> T:
    """Concatenate equal-structured dataclasses along the batch dimension."""
    first = objs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(objs), 0)  # type: ignore[return-value]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first, **{f.name: _cat_tree([getattr(o, f.name) for o in objs]) for f in dataclasses.fields(first)}
        )
    if first is None:
        return first
    raise TypeError(f"cannot concatenate {type(first).__name__}")


class Batched:
    """Batch helpers for frozen dataclasses whose tensors all have the batch as their first dimension."""

    def to(self: T, device: torch.device | str) -> T:
        return _map_tensors(self, lambda t: t.to(device))

    def select(self: T, index: torch.Tensor | slice | int) -> T:
        """Rows ``index`` of every tensor (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return _map_tensors(self, lambda t: t[index])

    @classmethod
    def cat(cls: type[T], items: Sequence[T]) -> T:
        if not items:
            raise ValueError("cat: nothing to concatenate")
        return _cat_tree(items)


def uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    """(n,) float64 draws from U(lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device, dtype=torch.float64)


def log_uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    """(n,) float64 draws whose logarithm is uniform over [log lo, log hi]."""
    return torch.exp(uniform(g, math.log(lo), math.log(hi), n))


def bernoulli(g: torch.Generator, p: float | torch.Tensor) -> bool:
    """True with probability ``p`` (one draw)."""
    return bool(torch.rand(1, generator=g, device=g.device, dtype=torch.float64).item() < float(p))
