"""The one restricted unpickler: foreign pickles are read as data, and nothing they name is imported or run.

A pickle can name any importable global and call it while loading, so a file from elsewhere is arbitrary code.
:class:`RestrictedUnpickler` never imports: every global a pickle names is looked up in a
:class:`PicklePolicy`, which each loader module defines for its own format (``models/face/flame.py``: numpy
arrays, scipy.sparse and chumpy stand-ins; ``models/stylegan2/nvlabs_pickle.py``: torch tensors and storages,
NVlabs network stand-ins). What the policy does not allow is refused with the policy's own error, before anything from
the file runs; persistent ids (torch storages) are refused unless the caller resolves them.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass(frozen=True)
class PicklePolicy:
    """What a :class:`RestrictedUnpickler` may resolve, and how it refuses the rest.

    Attributes:
        allowed: ``(module, name)`` → the object returned for that global (a vetted function, type or stand-in).
        refusal: ``(module, name)`` → the message of the error raised for any other global.
        error: the exception type raised for refusals (a subclass of ``pickle.UnpicklingError`` is best).
        stand_in: ``(module, name)`` → an inert stand-in class for a foreign class the format may contain, or
            None when the global is not one; asked only for globals not in ``allowed``. Its answer is memoised
            per unpickler, so one file's instances of a foreign class share one stand-in class.
        module_aliases: module names rewritten before any lookup (e.g. Python 2's ``__builtin__``).
    """

    allowed: Mapping[tuple[str, str], Any]
    refusal: Callable[[str, str], str]
    error: type[Exception] = pickle.UnpicklingError
    stand_in: Callable[[str, str], type | None] | None = None
    module_aliases: Mapping[str, str] = field(default_factory=dict)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from a :class:`PicklePolicy` (never from an import).

    Args:
        f: the binary stream.
        policy: what may be resolved.
        persistent_load: resolves persistent ids (``torch.save`` storages); None refuses every persistent id.
        encoding: how Python 2 ``str`` objects are decoded (``latin1`` keeps numpy's byte buffers intact).
    """

    def __init__(
        self,
        f: IO[bytes],
        policy: PicklePolicy,
        *,
        persistent_load: Callable[[Any], Any] | None = None,
        encoding: str = "latin1",
    ) -> None:
        super().__init__(f, encoding=encoding)
        self._policy = policy
        self._persistent = persistent_load
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        policy = self._policy
        module = policy.module_aliases.get(module, module)
        if (module, name) in policy.allowed:
            return policy.allowed[module, name]
        if policy.stand_in is not None:
            key = (module, name)
            if key not in self._stand_ins:
                cls = policy.stand_in(module, name)
                if cls is None:
                    raise policy.error(policy.refusal(module, name))
                self._stand_ins[key] = cls
            return self._stand_ins[key]
        raise policy.error(policy.refusal(module, name))

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise self._policy.error(f"unexpected persistent id {pid!r} in a plain pickle")
        return self._persistent(pid)
