"""Read official NVlabs StyleGAN2 / StyleGAN2-ADA network pickles as data, running none of their code.

Users own FFHQ checkpoints such as ``ffhq.pkl`` (stylegan2-ada-pytorch) or ``stylegan2-ffhq-1024x1024.pkl``
(the StyleGAN3 repository's StyleGAN2 release). Those files are a plain :func:`pickle.dump` of a dict
``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs', …}`` whose networks were made with NVlabs'
``torch_utils/persistence.py``. What that layout looks like in the byte stream, and what is relied on here:

- Every network object (``Generator``, ``MappingNetwork``, ``SynthesisBlock``, ``FullyConnectedLayer``, …) is
  pickled as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` is a dict
  ``{'type': 'class', 'version': 6, 'module_src': <the Python source of training/networks.py>,
  'class_name': 'Generator', 'state': <the module's __dict__>}``. The original loader ``exec``\\ s
  ``module_src``; this module never does — it records the class name and a SHA-256 of the source and keeps
  ``state`` as data. ``state`` holds ``_parameters`` / ``_buffers`` / ``_modules`` (ordered dicts, recursively
  more persistent objects), ``_non_persistent_buffers_set``, ``_init_args`` / ``_init_kwargs`` (the
  constructor arguments: ``z_dim``, ``w_dim``, ``img_resolution``, ``mapping_kwargs``, ``synthesis_kwargs``…,
  the nested dicts usually ``dnnlib.util.EasyDict``) and plain attributes, some of them numpy scalars
  (``weight_gain = lr_multiplier / np.sqrt(in_features)``).
- Tensors are pickled by torch's own ``__reduce_ex__``: ``torch._utils._rebuild_parameter(data, …)`` around
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)``, and each storage as
  ``torch.storage._load_from_bytes(blob)`` where ``blob`` is a legacy-format (non-zip) ``torch.save`` of that
  storage: five pickles (magic number, protocol 1001, sys info, the object with persistent id
  ``('storage', torch.FloatStorage, key, location, numel, view)``, the key list) followed by, per key, an
  int64 element count and the raw bytes. That format is parsed here directly (no ``torch.load``).
- Objects pickled by another route are also understood: a class referenced by name from
  ``training.networks`` / ``training.networks_stylegan2`` / ``training.augment`` / ``_imported_module_<hex>``
  (what a network loaded from a pickle calls its own module) becomes an inert stand-in that only keeps its
  state, and whole files written by ``torch.save`` (zip or legacy format) are read with the same policy.

Every global the unpickler is asked for is checked against :data:`ALLOWED_GLOBALS` (plus the stand-in
patterns above and torch's storage / dtype names); anything else — ``os.system``, ``builtins.eval``,
``builtins.getattr``, a TensorFlow-era ``dnnlib.tflib`` network — is refused with :class:`UnsafePickleError`
naming it, before it could be called. Whitelisted functions are handed out wrapped so that a ``BUILD``
opcode cannot alter them.

:mod:`models.stylegan2.nvlabs_load` turns what is read here into this project's networks.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import pickle
import re
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from models.safe_pickle import PicklePolicy, RestrictedUnpickler

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_GLOBALS",
    "CapturedModule",
    "NVlabsPickle",
    "StyleGAN2PickleError",
    "UnsafePickleError",
    "read_stylegan2_pickle",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch.save's legacy (non-zip) format
LEGACY_PROTOCOL = 1001
PERSISTENCE_MODULE = "torch_utils.persistence"
# Modules whose classes become inert stand-ins when a pickle names them directly.
STAND_IN_MODULES = ("training.networks", "training.networks_stylegan2", "training.augment")
STAND_IN_MODULE_PREFIX = "_imported_module_"  # persistence.py's name for a module exec'd from module_src
_MAX_DEPTH = 64  # module nesting depth accepted when flattening (NVlabs trees are 4-5 deep)


class StyleGAN2PickleError(ValueError):
    """The file is not a readable NVlabs StyleGAN2 pickle, or does not fit this project's networks."""


class UnsafePickleError(StyleGAN2PickleError, pickle.UnpicklingError):
    """The pickle asks for a global outside the allow-list (it would run foreign code); nothing was run."""


# ============================================================================================ stand-ins
class CapturedModule:
    """Inert stand-in for one NVlabs network object: its class name and pickled ``__dict__``, no code.

    Attributes:
        class_name: the original class name, e.g. ``'Generator'``, ``'SynthesisLayer'``.
        source: where the class came from: ``'torch_utils.persistence'`` (rebuilt from ``module_src``) or the
            dotted path the pickle named (``'training.networks.Generator'``).
        state: the pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, …).
        module_src_sha256: SHA-256 of the embedded (never executed) source, or ``None``.
        persistence_version: ``meta['version']`` for persistence objects, else ``None``.
    """

    _foreign_name = ""  # set on the per-class subclasses made for pickles that name a class directly

    def __new__(cls, *args: Any, **kwargs: Any) -> CapturedModule:
        obj = super().__new__(cls)
        obj.class_name = cls._foreign_name.rsplit(".", 1)[-1]
        obj.source = cls._foreign_name
        obj.state = {}
        obj.module_src_sha256 = None
        obj.persistence_version = None
        return obj

    def __init__(self, class_name: str = "", source: str = "", state: dict[str, Any] | None = None) -> None:
        if class_name:
            self.class_name, self.source = class_name, source
        if state is not None:
            self.state = state

    def __setstate__(self, state: Any) -> None:  # BUILD after NEWOBJ / copyreg reconstruction
        if not isinstance(state, dict):
            raise UnsafePickleError(f"stand-in {self.source!r}: expected a dict state, got {type(state).__name__}")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"CapturedModule({self.class_name!r}, source={self.source!r})"

    def _entries(self, key: str) -> Mapping[str, Any]:
        value = self.state.get(key) or {}
        if not isinstance(value, Mapping):
            raise StyleGAN2PickleError(f"{self.class_name}: {key} is a {type(value).__name__}, not a mapping")
        return value

    @property
    def init_args(self) -> tuple[Any, ...]:
        """Positional constructor arguments (``_init_args``; NVlabs' ``init_args``), as plain Python data."""
        return tuple(_plain(self.state.get("_init_args") or ()))

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Keyword constructor arguments (``_init_kwargs``), EasyDicts turned into plain dicts."""
        return dict(_plain(self.state.get("_init_kwargs") or {}))

    @property
    def children(self) -> dict[str, CapturedModule]:
        """Direct submodules (``_modules`` without ``None`` entries)."""
        out = {}
        for name, child in self._entries("_modules").items():
            if child is None:
                continue
            if not isinstance(child, CapturedModule):
                raise StyleGAN2PickleError(
                    f"{self.class_name}._modules[{name!r}] is a {type(child).__name__}, not a network module"
                )
            out[name] = child
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flattened ``{dotted.name: tensor}``: parameters and persistent buffers, as ``state_dict()`` names them."""
        out: dict[str, torch.Tensor] = {}
        self._flatten("", out, depth=0)
        return out

    def _flatten(self, prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise StyleGAN2PickleError(f"module tree deeper than {_MAX_DEPTH} at {prefix!r} (cyclic pickle?)")
        non_persistent = self.state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, value in self._entries(kind).items():
                if value is None or (kind == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise StyleGAN2PickleError(f"{prefix}{name}: expected a tensor, got {type(value).__name__}")
                out[prefix + name] = value.detach()
        for name, child in self.children.items():
            child._flatten(f"{prefix}{name}.", out, depth + 1)


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:  # EasyDict keeps everything in the dict; extra attributes
        if state is not None and not isinstance(state, dict):  # are not used
            raise UnsafePickleError(f"EasyDict: unexpected state of type {type(state).__name__}")


def _plain(value: Any) -> Any:
    """Deep copy of pickled data with EasyDicts / OrderedDicts as dicts, tuples kept, numpy scalars as Python."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return copy.deepcopy(value)


# ============================================================================================ allow-list
class _Allowed:
    """A whitelisted function as the unpickler hands it out: callable, but immune to BUILD (``__setstate__``)."""

    __slots__ = ("_fn", "qualname")

    def __init__(self, fn: Callable[..., Any], qualname: str) -> None:
        self._fn, self.qualname = fn, qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to modify the global {self.qualname!r}")

    def __repr__(self) -> str:
        return f"<allowed {self.qualname}>"


class _Marker:
    """A global that is only ever an argument (a storage class, ``torch.Tensor`` as a rebuild type): not callable."""

    __slots__ = ("dtype", "qualname", "untyped")

    def __init__(self, qualname: str, dtype: torch.dtype | None = None, untyped: bool = False) -> None:
        self.qualname, self.dtype, self.untyped = qualname, dtype, untyped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(f"the pickle tries to call {self.qualname!r}, which is only allowed as a type tag")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to modify the global {self.qualname!r}")

    def __repr__(self) -> str:
        return f"<marker {self.qualname}>"


_TENSOR = _Marker("torch.Tensor")
_PARAMETER = _Marker("torch.nn.parameter.Parameter")
_NDARRAY = _Marker("numpy.ndarray")
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_STORAGE_TYPES = {name: _Marker(f"torch.{name}", dtype) for name, dtype in _STORAGE_DTYPES.items()}
_STORAGE_TYPES["UntypedStorage"] = _Marker("torch.UntypedStorage", torch.uint8, untyped=True)
_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool float double half long int short"
    ).split()
}


def _storage_type(value: Any, what: str) -> _Marker:
    if not (isinstance(value, _Marker) and value.dtype is not None):
        raise UnsafePickleError(f"{what}: expected a torch storage type, got {value!r}")
    return value


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"_rebuild_tensor_v2: expected a storage, got {type(storage).__name__}")
    requires_grad = bool(rest[0]) if rest else False
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), requires_grad, OrderedDict())


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *rest: Any
) -> torch.Tensor:
    if not isinstance(storage, torch.UntypedStorage) or not isinstance(dtype, torch.dtype):
        raise UnsafePickleError("_rebuild_tensor_v3: expected an untyped storage and a dtype")
    return torch._utils._rebuild_tensor_v3(
        storage, offset, tuple(size), tuple(stride), bool(requires_grad), OrderedDict(), dtype
    )


def _rebuild_parameter(data: Any, requires_grad: Any, *rest: Any) -> torch.nn.Parameter:
    """``_rebuild_parameter`` / ``_rebuild_parameter_with_state``: backward hooks and Python state are dropped."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"_rebuild_parameter: expected a tensor, got {type(data).__name__}")
    return torch._utils._rebuild_parameter(data, bool(requires_grad), OrderedDict())


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> torch.Tensor:
    """``torch._tensor._rebuild_from_type_v2`` (and v1) restricted to plain tensors and parameters."""
    if not isinstance(func, _Allowed) or new_type not in (_TENSOR, _PARAMETER) or not isinstance(args, tuple):
        raise UnsafePickleError(f"_rebuild_from_type: refusing to rebuild {new_type!r} with {func!r}")
    tensor = func(*args)
    if new_type is _PARAMETER and not isinstance(tensor, torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _numpy_dtype(spec: Any, align: Any = False, copy_: Any = True) -> np.dtype:
    """``numpy.dtype`` for numeric scalar types only (object / structured dtypes are refused)."""
    if not isinstance(spec, str) or not re.fullmatch(r"[<>|=]?[?bBhHiIlLqQefdgFDGbiufc][0-9]*", spec):
        raise UnsafePickleError(f"numpy.dtype: refusing dtype spec {spec!r}")
    dtype = np.dtype(spec, bool(align), True)  # copy=True: the BUILD that follows must not touch numpy's cache
    if dtype.kind not in "biufc":
        raise UnsafePickleError(f"numpy.dtype: refusing non-numeric dtype {spec!r}")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar: only numeric scalars from raw bytes are allowed")
    if len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar: {len(data)} bytes for a {dtype} scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"numpy _reconstruct: refusing array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)  # BUILD then sets shape, (numeric) dtype and data


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """How Python 3 writes ``bytes`` at pickle protocol < 3: ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode: only latin1 text is allowed, got encoding {encoding!r}")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Safe ``copyreg._reconstructor`` (protocol 0/1 pickles): builds stand-ins only."""
    if isinstance(cls, type) and issubclass(cls, CapturedModule) and base is object and state is None:
        return cls.__new__(cls)
    if cls is _EasyDict and base is dict:
        return _EasyDict(state or {})
    raise UnsafePickleError(f"copyreg._reconstructor: refusing to build {cls!r} from {base!r}")


def _reconstruct_persistent_obj(meta: Any) -> CapturedModule:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps meta, never execs module_src."""
    if not isinstance(meta, Mapping) or meta.get("type") != "class":
        raise UnsafePickleError(f"persistence: unsupported meta {type(meta).__name__} (type={_get(meta, 'type')!r})")
    class_name, state, src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise UnsafePickleError(f"persistence: bad class_name {class_name!r}")
    if state is not None and not isinstance(state, Mapping):
        raise UnsafePickleError(f"persistence: {class_name} state is a {type(state).__name__}, not a dict")
    obj = CapturedModule(class_name, PERSISTENCE_MODULE, dict(state or {}))
    if isinstance(src, str):
        obj.module_src_sha256 = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()
    obj.persistence_version = meta.get("version")
    return obj


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def _load_from_bytes(blob: Any) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes``: parse the legacy ``torch.save`` blob of one storage."""
    if not isinstance(blob, bytes | bytearray):
        raise UnsafePickleError(f"_load_from_bytes: expected bytes, got {type(blob).__name__}")
    with io.BytesIO(blob) as f:
        first = _unpickler(f).load()
        return _read_legacy_after_magic(f, first, what="embedded storage", max_bytes=len(blob))


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER,
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor_v2, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"): _Allowed(_rebuild_tensor_v3, "torch._utils._rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter, "torch._utils._rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): _Allowed(
        _rebuild_parameter, "torch._utils._rebuild_parameter_with_state"
    ),
    ("torch._tensor", "_rebuild_from_type_v2"): _Allowed(_rebuild_from_type, "torch._tensor._rebuild_from_type_v2"),
    ("torch._utils", "_rebuild_from_type"): _Allowed(_rebuild_from_type, "torch._utils._rebuild_from_type"),
    ("torch.storage", "_load_from_bytes"): _Allowed(_load_from_bytes, "torch.storage._load_from_bytes"),
    (PERSISTENCE_MODULE, "_reconstruct_persistent_obj"): _Allowed(
        _reconstruct_persistent_obj, f"{PERSISTENCE_MODULE}._reconstruct_persistent_obj"
    ),
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("copyreg", "_reconstructor"): _Allowed(_reconstructor, "copyreg._reconstructor"),
    ("_codecs", "encode"): _Allowed(_codecs_encode, "_codecs.encode"),
    ("numpy", "dtype"): _Allowed(_numpy_dtype, "numpy.dtype"),
    ("numpy", "ndarray"): _NDARRAY,
    **{
        (module, name): _Allowed(fn, f"{module}.{name}")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, fn in (("scalar", _numpy_scalar), ("_reconstruct", _numpy_reconstruct))
    },
}
"""Every global a pickle may name (besides stand-in classes, torch storage types and torch dtypes)."""


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _stand_in_class(module: str, name: str) -> type[CapturedModule] | None:
    """A fresh inert class for a network class of the NVlabs code (memoised per file by the unpickler)."""
    if name.isidentifier() and (
        module in STAND_IN_MODULES or re.fullmatch(rf"{STAND_IN_MODULE_PREFIX}[0-9a-f]+", module)
    ):
        return type(name, (CapturedModule,), {"_foreign_name": f"{module}.{name}", "__module__": __name__})
    return None


def _refusal(module: str, name: str) -> str:
    if module.startswith("dnnlib.tflib"):
        hint = (
            " (this is a TensorFlow-era StyleGAN2 pickle: convert it with NVlabs' stylegan2-ada-pytorch legacy.py "
            "or use the PyTorch re-release of the network)"
        )
    else:
        hint = " (not part of an NVlabs StyleGAN2 network pickle; the file may be malicious)"
    return f"refusing to load global {module}.{name}{hint}"


_POLICY = PicklePolicy(
    allowed={
        **{("torch", name): marker for name, marker in _TORCH_DTYPES.items()},
        **{("torch", name): marker for name, marker in _STORAGE_TYPES.items()},
        **ALLOWED_GLOBALS,
    },
    refusal=_refusal,
    error=UnsafePickleError,
    stand_in=_stand_in_class,
    module_aliases=_PY2_MODULES,  # protocol <= 2 pickles spell builtins the Python 2 way
)
"""The allow-list (:data:`ALLOWED_GLOBALS`, torch storage types and dtypes) and NVlabs network stand-ins."""


# ============================================================================================ unpickling
def _unpickler(f: IO[bytes], storage_loader: Callable[[tuple[Any, ...]], Any] | None = None) -> RestrictedUnpickler:
    """The restricted unpickler of this format; persistent ids resolved by ``storage_loader`` (torch.save files)."""
    if storage_loader is None:
        return RestrictedUnpickler(f, _POLICY)

    def storage(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise UnsafePickleError(f"unsupported persistent id {kind!r} (only tensor storages are read)")
        return storage_loader(pid)

    return RestrictedUnpickler(f, _POLICY, persistent_load=storage)


def _new_storage(stype: _Marker, numel: int) -> tuple[Any, torch.Tensor]:
    """An empty storage of ``numel`` elements and the flat tensor that owns it (filled later, in place)."""
    flat = torch.empty(int(numel), dtype=stype.dtype)
    if stype.untyped:
        return flat.untyped_storage(), flat
    return torch.storage.TypedStorage(wrap_storage=flat.untyped_storage(), dtype=flat.dtype, _internal=True), flat


def _byteswap_(flat: torch.Tensor) -> None:
    size = flat.element_size()
    if size > 1 and flat.numel():
        raw = flat.view(torch.uint8).numpy().reshape(-1, size)
        raw[:] = raw[:, ::-1].copy()


def _read_legacy_after_magic(f: IO[bytes], magic: Any, what: str, max_bytes: int) -> Any:
    """Rest of a legacy ``torch.save`` stream whose first pickle (``magic``) was already read.

    ``max_bytes`` (the stream's size) bounds the storages it may declare, so a forged size cannot make it
    allocate more memory than the data it could hold.
    """
    if isinstance(magic, bool) or magic != LEGACY_MAGIC:
        raise StyleGAN2PickleError(f"{what}: not a torch legacy-format stream (magic {magic!r})")
    protocol = _unpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise StyleGAN2PickleError(f"{what}: unsupported torch legacy protocol {protocol!r}")
    sys_info = _unpickler(f).load()
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    pending: dict[str, tuple[torch.Tensor, int]] = {}
    declared = [0]  # bytes of storages declared so far

    def storage(pid: tuple[Any, ...]) -> Any:
        if len(pid) != 6:
            raise StyleGAN2PickleError(f"{what}: unexpected legacy storage id of length {len(pid)}")
        _, stype, key, _location, numel, view = pid  # the location ('cpu', 'cuda:0') is ignored: CPU
        stype, key = _storage_type(stype, what), str(key)
        if key not in pending:
            nbytes = numel * torch.empty(0, dtype=stype.dtype).element_size() if isinstance(numel, int) else -1
            if not 0 <= nbytes <= max_bytes - declared[0]:
                raise StyleGAN2PickleError(
                    f"{what}: storage size {numel!r} does not fit in the {max_bytes}-byte stream"
                )
            _, flat = _new_storage(stype, numel)
            pending[key] = (flat, numel)
            declared[0] += nbytes
        if view is not None:  # (view_key, offset, size): only pre-1.0 torch wrote storage views
            raise StyleGAN2PickleError(f"{what}: storage views (torch < 1.0 files) are not supported")
        flat = pending[key][0]
        if stype.untyped:
            return flat.untyped_storage()
        return torch.storage.TypedStorage(wrap_storage=flat.untyped_storage(), dtype=flat.dtype, _internal=True)

    result = _unpickler(f, storage_loader=storage).load()
    keys = _unpickler(f).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(pending):
        raise StyleGAN2PickleError(f"{what}: storage key list does not match the storages referenced")
    for key in keys:
        flat, numel = pending[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise StyleGAN2PickleError(f"{what}: truncated before storage {key}")
        (stored,) = struct.unpack("<q" if little_endian else ">q", header)
        if stored != numel:
            raise StyleGAN2PickleError(f"{what}: storage {key} holds {stored} elements, expected {numel}")
        raw = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
        if f.readinto(memoryview(raw)) != raw.nbytes:  # type: ignore[attr-defined]
            raise StyleGAN2PickleError(f"{what}: truncated inside storage {key}")
        if little_endian != (sys.byteorder == "little"):
            _byteswap_(flat)
    return result


def _read_zip(path: Path) -> Any:
    """A zip-format ``torch.save`` file (``archive/data.pkl`` + ``archive/data/<key>``), same allow-list."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise StyleGAN2PickleError(f"{path}: a zip file without exactly one data.pkl (not a torch.save file)")
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") == b"big"
        loaded: dict[str, torch.Tensor] = {}

        def storage(pid: tuple[Any, ...]) -> Any:
            if len(pid) != 5:
                raise StyleGAN2PickleError(f"{path}: unexpected storage id of length {len(pid)}")
            _, stype, key, _location, numel = pid
            stype, key = _storage_type(stype, str(path)), str(key)
            if key not in loaded:
                record = f"{prefix}data/{key}"
                try:
                    size = archive.getinfo(record).file_size
                except KeyError:
                    raise StyleGAN2PickleError(f"{path}: storage record {record} is missing") from None
                element_size = torch.empty(0, dtype=stype.dtype).element_size()
                if size % element_size or (not stype.untyped and size != numel * element_size):
                    raise StyleGAN2PickleError(f"{path}: storage {key} has {size} bytes, expected {numel} items")
                raw = archive.read(record)  # checked against the declared size before reading
                _, flat = _new_storage(stype, len(raw) // element_size)
                if raw:
                    flat.view(torch.uint8).copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
                if big_endian != (sys.byteorder == "big"):
                    _byteswap_(flat)
                loaded[key] = flat
            flat = loaded[key]
            if stype.untyped:
                return flat.untyped_storage()
            return torch.storage.TypedStorage(wrap_storage=flat.untyped_storage(), dtype=flat.dtype, _internal=True)

        with archive.open(pickles[0]) as f:
            return _unpickler(f, storage_loader=storage).load()


@dataclass(frozen=True)
class NVlabsPickle:
    """What :func:`read_stylegan2_pickle` found in a file (data only; nothing from it was executed).

    Attributes:
        path: the file read.
        container: ``'pickle'`` (NVlabs ``pickle.dump``), ``'torch-zip'`` or ``'torch-legacy'`` (``torch.save``).
        entries: the top-level dict; networks are :class:`CapturedModule` trees, the rest plain data.
        bare_network: the file held one network object, not a dict; it is presented as ``{class_name: net}``.
    """

    path: Path
    container: str
    entries: dict[str, Any] = field(default_factory=dict)
    bare_network: bool = False

    def networks(self) -> dict[str, CapturedModule]:
        return {k: v for k, v in self.entries.items() if isinstance(v, CapturedModule)}


def read_stylegan2_pickle(path: str | Path) -> NVlabsPickle:
    """Read an NVlabs network pickle (or a ``torch.save`` file) with the restricted unpickler.

    Args:
        path: e.g. ``ffhq.pkl`` from stylegan2-ada-pytorch or ``stylegan2-ffhq-1024x1024.pkl``.

    Returns:
        The captured top-level entries; network objects are :class:`CapturedModule` stand-ins.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle names a global outside :data:`ALLOWED_GLOBALS` (nothing is run).
        StyleGAN2PickleError: truncated or otherwise unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"StyleGAN2 pickle not found: {path}")
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(0)
            if head == b"PK\x03\x04":
                container, data = "torch-zip", _read_zip(path)
            else:
                first = _unpickler(f).load()
                if isinstance(first, int) and not isinstance(first, bool) and first == LEGACY_MAGIC:
                    size = path.stat().st_size
                    container, data = "torch-legacy", _read_legacy_after_magic(f, first, str(path), size)
                else:
                    container, data = "pickle", first
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except StyleGAN2PickleError as exc:  # name the file in messages from nested storage blobs
        if str(exc).startswith(str(path)):
            raise
        raise StyleGAN2PickleError(f"{path}: {exc}") from exc
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise StyleGAN2PickleError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, struct.error) as exc:
        raise StyleGAN2PickleError(f"{path}: cannot read the pickle ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, CapturedModule):
        return NVlabsPickle(path=path, container=container, entries={data.class_name: data}, bare_network=True)
    if not isinstance(data, Mapping):
        raise StyleGAN2PickleError(f"{path}: top level is a {type(data).__name__}, expected a dict of networks")
    return NVlabsPickle(path=path, container=container, entries={str(k): v for k, v in data.items()})
