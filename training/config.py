"""Training configuration: YAML files + ``key.path=value`` overrides, typed sections, resolved config saved in the run.

Every section of a stage's configuration is a frozen dataclass built by :func:`facecore.config.parse_section`
(values coerced to the annotated types, unknown keys refused, errors naming the full key). Model
hyperparameters live in frozen dataclasses beside the weights (:class:`facecore.config.VersionedConfig`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from facecore.config import ConfigError


def load_config(
    path: str | Path | None, overrides: Iterable[str] = (), defaults: Mapping[str, Any] | None = None
) -> dict:
    """Merge ``defaults`` ← YAML file ← overrides (``a.b.c=value``, value parsed as YAML).

    Raises:
        ConfigError: the file is missing or not a mapping, or an override is malformed.
    """
    cfg: dict = copy.deepcopy(dict(defaults or {}))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        cfg = merge(cfg, loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return cfg


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Recursive dict merge: sections merge, values replace."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def save_resolved(run_dir: str | Path, cfg: Mapping[str, Any], name: str = "config.yaml") -> Path:
    """Write the resolved configuration into the run directory (what actually ran)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    return path
