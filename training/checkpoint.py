"""Resumable training checkpoints: safetensors weights + JSON, written atomically, with RNG states.

A checkpoint is a folder ``ckpt-00001234/`` under a run's ``checkpoints/`` directory:

* ``{name}.safetensors`` for every module (its ``state_dict``) and every optimizer (its tensors, with the
  nesting and all non-tensor values in ``{name}.json``),
* ``rng.safetensors`` + the python/numpy generator states in ``meta.json``,
* ``meta.json``: format version, step, the caller's JSON-serialisable ``extra`` (data position, config…).

The folder is written under a temporary name and renamed into place, then ``latest`` is replaced
atomically, so a kill at any moment leaves the previous checkpoint intact (a run loses at most one
checkpoint interval). No pickled code anywhere: a checkpoint can be inspected and loaded safely.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_PREFIX = "ckpt-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the modules it is loaded into."""


# ---------------------------------------------------------------------------------------------- optimizer
def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by ``{"__tensor__": key}`` and collect them."""
    if isinstance(obj, torch.Tensor):
        key = prefix.strip(".")
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        return {"__dict__": [[_json_key(k), _split_tensors(v, f"{prefix}{k}.", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        items = [_split_tensors(v, f"{prefix}{i}.", tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    return obj


def _json_key(key: Any) -> Any:
    if not isinstance(key, str | int):
        raise CheckpointError(f"cannot store dictionary key of type {type(key).__name__}")
    return key


def _join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- rng
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU + every CUDA device), numpy's global and python's ``random`` states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    py = random.getstate()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": _np_state_to_json(np.random.get_state()),  # noqa: NPY002 (the legacy global, used by libraries)
    }
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states[: torch.cuda.device_count()])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002


def _np_state_to_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]


# ---------------------------------------------------------------------------------------------- save/load
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` into ``directory`` atomically and prune all but the newest ``keep``.

    Args:
        directory: the run's checkpoint folder (created if needed).
        step: training step the checkpoint resumes *at* (the next step to run).
        modules: named modules whose ``state_dict`` is saved (e.g. ``{"G": G, "D": D, "G_ema": G_ema}``).
        optimizers: named optimizers.
        extra: JSON-serialisable state (data position, metric history, resolved config…).
        keep: number of checkpoints kept (older ones are deleted after the new one is in place).

    Returns:
        The checkpoint folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{_PREFIX}{step:08d}"
    tmp = directory / f".tmp-{_PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    names = set(modules) | set(optimizers or {})
    if len(names) != len(modules) + len(optimizers or {}) or "rng" in names or "meta" in names:
        raise CheckpointError(f"module/optimizer names must be unique and not 'rng'/'meta': {sorted(names)}")
    for name, module in modules.items():
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / f"{name}.safetensors"))
    for name, opt in (optimizers or {}).items():
        tensors: dict[str, torch.Tensor] = {}
        structure = _split_tensors(opt.state_dict(), "", tensors)
        save_file(tensors, str(tmp / f"{name}.safetensors"))
        (tmp / f"{name}.json").write_text(json.dumps(structure))
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    meta = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "modules": sorted(modules),
        "optimizers": sorted(optimizers or {}),
        "rng": rng_meta,
        "extra": dict(extra or {}),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(directory / "latest", final.name)
    for old in sorted(directory.glob(f"{_PREFIX}*"))[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in ``directory`` (per ``latest``, else by name), or None."""
    directory = Path(directory)
    pointer = directory / "latest"
    if pointer.is_file():
        candidate = directory / pointer.read_text().strip()
        if (candidate / "meta.json").is_file():
            return candidate
    found = sorted(p for p in directory.glob(f"{_PREFIX}*") if (p / "meta.json").is_file())
    return found[-1] if found else None


def run_checkpoint(path: str | Path) -> Path | None:
    """``path`` itself when it is a checkpoint, else the newest one in ``path/checkpoints`` (a run's stage folder)
    or in ``path`` (a checkpoint directory); None when there is none."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir() and (found := latest_checkpoint(folder)) is not None:
            return found
    return None


def load_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint folder (or the latest one of a checkpoint directory) into modules/optimizers.

    Raises:
        CheckpointError: missing files, a different format version, or modules that do not match the
            saved state (missing/unexpected keys or shapes) — never a silent partial load.

    Returns:
        (step, extra).
    """
    path = Path(path)
    if not (path / "meta.json").is_file():
        found = latest_checkpoint(path) if path.is_dir() else None
        if found is None:
            raise CheckpointError(f"no checkpoint at {path}")
        path = found
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}/meta.json is unreadable: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    device = str(map_location)
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{path}: no weights for module '{name}' (has {meta['modules']})")
        state = load_file(str(file), device=device)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{file}: does not match module '{name}': {exc}") from exc
    for name, opt in (optimizers or {}).items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{path}: no state for optimizer '{name}' (has {meta['optimizers']})")
        structure = json.loads((path / f"{name}.json").read_text())
        try:
            opt.load_state_dict(_join_tensors(structure, load_file(str(file), device=device)))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{file}: does not match optimizer '{name}': {exc}") from exc
    if restore_rng:
        set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
    logger.info("resumed from %s (step %d)", path, meta["step"])
    return int(meta["step"]), dict(meta["extra"])


def truncate_step_log(path: str | Path, step: int) -> None:
    """Drop the lines of a per-step JSONL log at or past ``step`` (they are rerun after a resume)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill
    _atomic_write_text(path, "".join(line + "\n" for line in keep))


def open_run_logs(out: str | Path, step: int, resumed: bool):
    """The run's TensorBoard writer (``out/tb``) and per-step log (``out/losses.jsonl``) for a run at ``step``.

    After a resume, the events and log lines at or past ``step`` are dropped (those steps are rerun).
    """
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out / "tb"), purge_step=step if resumed else None)
    truncate_step_log(out / "losses.jsonl", step)
    return writer
