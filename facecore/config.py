"""Typed configuration sections: frozen dataclasses built from plain mappings (YAML, JSON, CLI overrides).

:func:`parse_section` builds a section from a mapping: values are coerced to the fields' annotated types by
pydantic (``--set lr=1e-4`` arrives from YAML as the string ``'1e-4'`` and becomes a float; ``"7"`` an int),
nested sections are built from their sub-mappings, unknown keys are refused, and every error names its full
key (``albedo.data.holdout: …``); a section's own ``__post_init__`` checks still run. :func:`section_dict` is the
inverse (JSON-compatible). :class:`VersionedConfig` adds the ``kind`` + ``format_version`` header that network
hyperparameters carry in the JSON files saved beside their weights. Used by ``models`` and ``training``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, get_type_hints

import pydantic

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Refuse keys of ``data`` that are not fields of the dataclass ``cls``, recursively into nested sections.

    Raises:
        ConfigError: ``"{where}: unknown keys [...]; expected some of [...]"``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(fields)}")
    hints = get_type_hints(cls)
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            check_keys(hints[key], value, f"{where}.{key}")


def parse_section(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """The dataclass ``cls`` from a configuration mapping (see the module doc).

    Raises:
        ConfigError (a ValueError): unknown keys, values that do not convert to their field's type, or a
            section's own check (``__post_init__``) failing, naming the key.
    """
    data = dict(data or {})
    check_keys(cls, data, where)
    try:
        return _adapter(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join([where, *(str(part) for part in err["loc"])])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg} (got {err['input']!r})" if err["type"] != "value_error" else f"{key}: {msg}")
        raise ConfigError("; ".join(problems)) from None


def section_dict(section: Any) -> dict[str, Any]:
    """JSON-compatible form of a section (what :func:`parse_section` reads back)."""
    return _adapter(type(section)).dump_python(section, mode="json")


class VersionedConfig:
    """Mixin for frozen-dataclass hyperparameters saved beside weights: ``to_dict``/``from_dict`` with a header.

    Subclasses set ``KIND`` (e.g. ``"encoder.Encoder"``) and ``FORMAT_VERSION``. ``from_dict`` refuses another
    kind or version and unknown keys (``ValueError`` naming them) and builds nested sections.
    """

    KIND: ClassVar[str]
    FORMAT_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict with ``format_version`` and ``kind`` first."""
        return {"format_version": self.FORMAT_VERSION, "kind": self.KIND, **section_dict(self)}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        kind, version = data.pop("kind", None), data.pop("format_version", None)
        if kind != cls.KIND or version != cls.FORMAT_VERSION:
            article = "an" if cls.KIND[0] in "aeiou" else "a"
            raise ConfigError(
                f"not {article} {cls.KIND} config of format_version {cls.FORMAT_VERSION}: "
                f"kind {kind!r}, format_version {version!r}"
            )
        return parse_section(cls, data, cls.__name__)
