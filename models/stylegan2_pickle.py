"""Load official NVlabs StyleGAN2 / StyleGAN2-ADA network pickles into :mod:`models.stylegan2`, running none of
their code.

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

Conversion: the config (:class:`models.stylegan2.GeneratorConfig` / ``DiscriminatorConfig``) comes from the
captured constructor arguments (both the stylegan2-ada-pytorch layout with nested ``synthesis_kwargs`` and the
StyleGAN3 repo's flat one); an argument left at its class default is read from the attribute the module
stored (defaults differ between NVlabs versions), and arguments that cannot change the weights or the fp32
output (``num_fp16_res``, ``fp16_channels_last``, ``freeze_layers``…) are reported in ``info.ignored``. The
built network's scalar attributes (``weight_gain``, ``bias_gain``, ``conv_clamp``, ``activation``…) are then
compared with the stored ones, module by module, so a wrongly derived config fails loudly instead of giving
wrong images. Finally the captured tree is flattened to ``{dotted.name: tensor}`` (parameters plus persistent
buffers, the keys ``state_dict()`` would give), renamed with :data:`NAME_MAP` (identity: this project's
modules mirror NVlabs' names) and loaded with ``load_state_dict(strict=True)``; a missing, unexpected or
mis-shaped key raises :class:`StyleGAN2PickleError` naming it.
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
    "NAME_MAP",
    "CapturedModule",
    "NVlabsPickle",
    "StyleGAN2PickleError",
    "StyleGAN2PickleInfo",
    "UnsafePickleError",
    "load_stylegan2_pickle",
    "read_stylegan2_pickle",
]

WHICH = ("G_ema", "G", "D")
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


# ============================================================================================ conversion
NAME_MAP: tuple[tuple[str, str], ...] = ()
"""Source-key renames, ``(regex, replacement)`` applied in order to every flattened NVlabs key before loading.

Empty: :mod:`models.stylegan2` mirrors NVlabs ``training/networks.py`` (and the StyleGAN3 repo's
``networks_stylegan2.py``) name for name, so every key maps to itself, e.g.
``mapping.fc0.weight``, ``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b{res}.conv0.affine.weight``,
``synthesis.b{res}.conv1.noise_const``, ``synthesis.b{res}.torgb.weight``, ``synthesis.b{res}.resample_filter``;
``b{res}.fromrgb/conv0/conv1/skip.*``, ``b4.conv/fc/out.*`` for the discriminator. Parameters that NVlabs
stores as buffers (Freeze-D's frozen discriminator layers) have the same ``state_dict`` key either way.
"""

_G_SIGNATURE = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_D_SIGNATURE = (
    "c_dim",
    "img_resolution",
    "img_channels",
    "architecture",
    "channel_base",
    "channel_max",
    "num_fp16_res",
    "conv_clamp",
    "cmap_dim",
    "block_kwargs",
    "mapping_kwargs",
    "epilogue_kwargs",
)
# NVlabs constructor arguments that change speed, memory layout or training only, never the stored weights
# or the fp32 output; dropped (and reported in ``info.ignored``).
_WEIGHT_NEUTRAL_KWARGS = {
    "fp16_channels_last": "memory layout of fp16 activations",
    "channels_last": "memory layout",
    "fused_modconv_default": "choice of the fused/non-fused modulated convolution (same result)",
    "freeze_layers": "Freeze-D/-M training option (frozen weights load the same)",
    "freeze_embed": "Freeze-E training option (frozen weights load the same)",
}
# Config field → (captured module path, attribute) that holds the value actually used (see _fill_from_stored).
_G_MAPPING_STORED = {
    "num_layers": ("mapping", "num_layers"),
    "w_avg_beta": ("mapping", "w_avg_beta"),
    "lr_multiplier": ("mapping.fc0", "bias_gain"),
    "activation": ("mapping.fc0", "activation"),
}
_G_SYNTHESIS_STORED = {
    "conv_clamp": ("synthesis.b4.conv1", "conv_clamp"),
    "use_noise": ("synthesis.b4.conv1", "use_noise"),
    "activation": ("synthesis.b4.conv1", "activation"),
    "architecture": ("synthesis.b4", "architecture"),
}
_D_EPILOGUE_STORED = {
    "mbstd_group_size": ("b4.mbstd", "group_size"),
    "mbstd_num_channels": ("b4.mbstd", "num_channels"),
    "activation": ("b4.conv", "activation"),
}
# Attributes compared between each captured NVlabs module and the module built here, where both have them:
# they catch a config derived wrongly from the init kwargs (learning-rate multiplier, clamp, activation…),
# which shape checks cannot see.
_CHECKED_ATTRIBUTES = (
    "z_dim",
    "c_dim",
    "w_dim",
    "num_ws",
    "img_resolution",
    "img_channels",
    "cmap_dim",
    "in_channels",
    "resolution",
    "is_last",
    "architecture",
    "num_conv",
    "num_torgb",
    "activation",
    "up",
    "down",
    "padding",
    "use_noise",
    "conv_clamp",
    "weight_gain",
    "bias_gain",
    "act_gain",
    "w_avg_beta",
    "num_layers",
    "group_size",
    "num_channels",
)


@dataclass(frozen=True)
class StyleGAN2PickleInfo:
    """What :func:`load_stylegan2_pickle` loaded, and what it left out.

    Attributes:
        path: the file.
        which: the entry loaded (``'G_ema'``, ``'G'`` or ``'D'``).
        container: ``'pickle'``, ``'torch-zip'`` or ``'torch-legacy'``.
        class_name: source class of the loaded network (``'Generator'`` / ``'Discriminator'``).
        source: where that class came from (``'torch_utils.persistence'`` or a dotted class path).
        source_classes: every top-level entry → its type (``{'G': 'Generator', 'augment_pipe': 'AugmentPipe',
            'training_set_kwargs': 'dict', …}``).
        img_resolution: R of the (B, img_channels, R, R) images.
        img_channels: image channels.
        z_dim: latent size (``None`` for a discriminator).
        w_dim: W size (``None`` for a discriminator).
        c_dim: label size, 0 = unconditional.
        init_kwargs: the NVlabs constructor arguments as captured (plain data).
        config: the :class:`~models.stylegan2.GeneratorConfig` / ``DiscriminatorConfig`` built from them.
        ignored: entries, constructor arguments and state left unused, each with the reason.
        renamed: ``(source key, our key)`` for every key :data:`NAME_MAP` changed (empty: identity).
        num_tensors: number of tensors loaded.
        module_src_sha256: SHA-256 of the embedded (never executed) ``training/networks.py`` source.
    """

    path: Path
    which: str
    container: str
    class_name: str
    source: str
    source_classes: dict[str, str]
    img_resolution: int
    img_channels: int
    z_dim: int | None
    w_dim: int | None
    c_dim: int
    init_kwargs: dict[str, Any]
    config: Any
    ignored: tuple[str, ...]
    renamed: tuple[tuple[str, str], ...]
    num_tensors: int
    module_src_sha256: str | None


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    return value.class_name if isinstance(value, CapturedModule) else type(value).__name__


def _bind(net: CapturedModule, signature: tuple[str, ...]) -> dict[str, Any]:
    """Positional + keyword constructor arguments as one dict (NVlabs passes keywords; positionals are rare)."""
    args, kwargs = net.init_args, net.init_kwargs
    if len(args) > len(signature):
        raise StyleGAN2PickleError(f"{net.class_name}: {len(args)} positional init args, expected <= {len(signature)}")
    bound = dict(zip(signature, args, strict=False))
    clash = sorted(set(bound) & set(kwargs))
    if clash:
        raise StyleGAN2PickleError(f"{net.class_name}: init args given twice: {clash}")
    return bound | kwargs


def _take(kwargs: dict[str, Any], name: str, net: CapturedModule, default: Any = ...) -> Any:
    if name in kwargs:
        return kwargs.pop(name)
    if default is ...:
        raise StyleGAN2PickleError(
            f"{net.class_name}: init kwargs lack {name!r} (have {sorted(kwargs)}); not an NVlabs network pickle?"
        )
    return default


def _sub_kwargs(kwargs: dict[str, Any], name: str, net: CapturedModule) -> dict[str, Any]:
    value = kwargs.pop(name, None) or {}
    if not isinstance(value, Mapping):
        raise StyleGAN2PickleError(f"{net.class_name}: {name} is a {type(value).__name__}, not a dict")
    return dict(value)


def _drop_neutral(kwargs: dict[str, Any], where: str, ignored: list[str]) -> dict[str, Any]:
    for key in sorted(set(kwargs) & set(_WEIGHT_NEUTRAL_KWARGS)):
        ignored.append(f"init kwarg {where}{key}={kwargs.pop(key)!r} ({_WEIGHT_NEUTRAL_KWARGS[key]})")
    return kwargs


def _make_config(factory: Callable[..., Any], kwargs: dict[str, Any], where: str) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as exc:  # an NVlabs argument this implementation has no field for
        raise StyleGAN2PickleError(f"{where}: unsupported NVlabs init kwargs {sorted(kwargs)} ({exc})") from exc
    except ValueError as exc:  # e.g. an architecture other than 'skip' / 'resnet'
        raise StyleGAN2PickleError(f"{where}: {exc}") from exc


def _stored(net: CapturedModule, path: str, attr: str) -> tuple[bool, Any]:
    """``(found, value)`` of attribute ``attr`` of the captured submodule at dotted ``path``."""
    node = net
    for name in path.split(".") if path else ():
        node = node.children.get(name)
        if node is None:
            return False, None
    return (attr in node.state), _plain(node.state.get(attr))


def _fill_from_stored(kwargs: dict[str, Any], net: CapturedModule, table: dict[str, tuple[str, str]]) -> None:
    """Arguments the pickle's init kwargs leave at the class default take the value the modules stored.

    Defaults drift between NVlabs versions (``w_avg_beta`` 0.995 vs 0.998, ``conv_clamp`` None vs 256 in some
    forks), and the kwargs record only what was passed; the attributes record what was used.
    """
    for key, (path, attr) in table.items():
        if key not in kwargs:
            found, value = _stored(net, path, attr)
            if found:
                kwargs[key] = value


def _generator_config(net: CapturedModule, ignored: list[str]) -> Any:
    from models.stylegan2 import GeneratorConfig, MappingConfig, SynthesisConfig

    kwargs = _bind(net, _G_SIGNATURE)
    top = {name: _take(kwargs, name, net) for name in ("z_dim", "w_dim", "img_resolution")}
    top["c_dim"] = _take(kwargs, "c_dim", net, 0)
    top["img_channels"] = _take(kwargs, "img_channels", net, 3)
    mapping = _drop_neutral(_sub_kwargs(kwargs, "mapping_kwargs", net), "mapping_kwargs.", ignored)
    synthesis = _sub_kwargs(kwargs, "synthesis_kwargs", net)
    synthesis.update(kwargs)  # StyleGAN3 repo (networks_stylegan2): synthesis kwargs are top-level **kwargs
    _drop_neutral(synthesis, "synthesis_kwargs.", ignored)
    if "num_fp16_res" in synthesis:
        ignored.append(f"init kwarg num_fp16_res={synthesis['num_fp16_res']!r} (stored, computation stays fp32)")
    _fill_from_stored(mapping, net, _G_MAPPING_STORED)
    _fill_from_stored(synthesis, net, _G_SYNTHESIS_STORED)
    return GeneratorConfig(
        **top,
        mapping=_make_config(MappingConfig, mapping, "Generator mapping_kwargs"),
        synthesis=_make_config(SynthesisConfig, synthesis, "Generator synthesis_kwargs"),
    )


def _discriminator_config(net: CapturedModule, ignored: list[str]) -> Any:
    from models.stylegan2 import DiscriminatorConfig, EpilogueConfig, MappingConfig

    kwargs = _bind(net, _D_SIGNATURE)
    top = {"img_resolution": _take(kwargs, "img_resolution", net), "c_dim": _take(kwargs, "c_dim", net, 0)}
    top["img_channels"] = _take(kwargs, "img_channels", net, 3)
    block = _drop_neutral(_sub_kwargs(kwargs, "block_kwargs", net), "block_kwargs.", ignored)
    mapping = _drop_neutral(_sub_kwargs(kwargs, "mapping_kwargs", net), "mapping_kwargs.", ignored)
    epilogue = _drop_neutral(_sub_kwargs(kwargs, "epilogue_kwargs", net), "epilogue_kwargs.", ignored)
    _drop_neutral(kwargs, "", ignored)
    if "num_fp16_res" in kwargs:
        ignored.append(f"init kwarg num_fp16_res={kwargs['num_fp16_res']!r} (stored, computation stays fp32)")
    if top["c_dim"] == 0 and mapping:  # no label mapping network exists (legacy.py writes num_layers=0 here)
        ignored.append(f"init kwarg mapping_kwargs={mapping!r} (unconditional: no label mapping)")
        mapping = {}
    first = f"b{top['img_resolution']}"
    _fill_from_stored(
        kwargs, net, {"conv_clamp": (f"{first}.conv0", "conv_clamp"), "architecture": (first, "architecture")}
    )
    _fill_from_stored(block, net, {"activation": (f"{first}.conv0", "activation")})
    _fill_from_stored(epilogue, net, _D_EPILOGUE_STORED)
    return _make_config(
        DiscriminatorConfig,
        {
            **top,
            **kwargs,
            **block,
            "mapping": _make_config(MappingConfig, mapping, "Discriminator mapping_kwargs"),
            "epilogue": _make_config(EpilogueConfig, epilogue, "Discriminator epilogue_kwargs"),
        },
        "Discriminator init kwargs",
    )


def _rename(key: str) -> str:
    for pattern, replacement in NAME_MAP:
        key = re.sub(pattern, replacement, key)
    return key


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool | None | str) or isinstance(b, bool | None | str):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-12)
    return a == b


def _check_attributes(net: CapturedModule, model: torch.nn.Module, path: str = "") -> None:
    """Compare :data:`_CHECKED_ATTRIBUTES` of every captured module with the module at the same (renamed) path."""
    try:
        ours = model.get_submodule(_rename(path))
    except AttributeError:
        return  # reported by the key check
    for attr in _CHECKED_ATTRIBUTES:
        if attr in net.state and attr in vars(ours) and not _same(net.state[attr], vars(ours)[attr]):
            raise StyleGAN2PickleError(
                f"{path or '<root>'}.{attr}: the pickle's {net.class_name} has {_plain(net.state[attr])!r}, the "
                f"network built from its init kwargs has {vars(ours)[attr]!r}; the kwargs do not describe these "
                "weights"
            )
    for name, child in net.children.items():
        _check_attributes(child, model, f"{path}.{name}" if path else name)


def _load_weights(net: CapturedModule, model: torch.nn.Module, what: str) -> tuple[int, list[tuple[str, str]]]:
    source = net.tensors()
    renamed = [(key, _rename(key)) for key in source if _rename(key) != key]
    state = {_rename(key): tensor for key, tensor in source.items()}
    if len(state) != len(source):
        raise StyleGAN2PickleError(f"{what}: NAME_MAP maps two source keys onto one")
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    problems = [f"missing key {k!r} (the pickle has no such tensor)" for k in missing]
    problems += [f"unexpected key {k!r} (no such tensor in models.stylegan2)" for k in unexpected]
    problems += [
        f"shape mismatch for {k!r}: pickle {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if state[k].shape != target[k].shape
    ]
    if problems:
        hint = ""
        synthesis = net.children.get("synthesis")
        if synthesis is not None and "input" in synthesis.children:
            hint = " (this looks like a StyleGAN3 generator, which this loader does not support)"
        shown = "; ".join(problems[:8]) + (f"; … {len(problems) - 8} more" if len(problems) > 8 else "")
        raise StyleGAN2PickleError(f"{what}: the pickle's weights do not fit the network{hint}: {shown}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype/copy problems the checks above did not foresee
        raise StyleGAN2PickleError(f"{what}: load_state_dict failed: {exc}") from exc
    return len(state), renamed


def _pick(pkl: NVlabsPickle, which: str) -> tuple[str, CapturedModule]:
    expected = "Discriminator" if which == "D" else "Generator"
    value = pkl.entries.get(which)
    if value is None and which == "G_ema" and "Gs" in pkl.entries:
        value = pkl.entries["Gs"]  # not produced by the PyTorch repos; accepted if someone renamed the entry
    if value is None:
        if pkl.bare_network and expected in pkl.entries:  # a file holding one network object, e.g. G alone
            return expected, pkl.entries[expected]
        available = {k: _describe(v) for k, v in pkl.entries.items()}
        raise StyleGAN2PickleError(f"{pkl.path}: no {which!r} entry (the file holds {available})")
    if not isinstance(value, CapturedModule):
        raise StyleGAN2PickleError(f"{pkl.path}: entry {which!r} is a {type(value).__name__}, not a network")
    if value.class_name != expected:
        raise StyleGAN2PickleError(f"{pkl.path}: entry {which!r} is a {value.class_name}, expected a {expected}")
    return which, value


def load_stylegan2_pickle(
    path: str | Path, *, which: str = "G_ema", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, StyleGAN2PickleInfo]:
    """Load an official NVlabs StyleGAN2 / StyleGAN2-ADA network into :mod:`models.stylegan2` modules.

    The file is read by the restricted unpickler (:func:`read_stylegan2_pickle`; no code from it runs), the
    config is derived from the captured NVlabs constructor arguments, the weights are renamed with
    :data:`NAME_MAP` and loaded with ``strict=True``.

    Args:
        path: ``ffhq.pkl``, ``stylegan2-ffhq-1024x1024.pkl``, a training snapshot, …
        which: ``'G_ema'`` (the generator to sample from), ``'G'`` (raw generator) or ``'D'``.
        device: where the returned module lives.

    Returns:
        ``(network, info)``: a :class:`~models.stylegan2.Generator` (``which`` in G_ema/G; images
        (B, 3, R, R) roughly in [-1, 1]) or :class:`~models.stylegan2.Discriminator`, in eval mode; and a
        :class:`StyleGAN2PickleInfo`.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file names a global outside the allow-list (nothing from it was run).
        StyleGAN2PickleError: truncated/corrupt file, no such entry, unsupported constructor arguments, or
            weights that do not fit (the message names the key).
    """
    from models.stylegan2 import Discriminator, Generator

    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    pkl = read_stylegan2_pickle(path)
    name, net = _pick(pkl, which)
    ignored = [f"{k} ({_describe(v)}, not requested)" for k, v in pkl.entries.items() if k != name]
    what = f"{pkl.path}[{name!r}]"
    try:
        if which == "D":
            config = _discriminator_config(net, ignored)
            model: torch.nn.Module = Discriminator.from_config(config)
        else:
            config = _generator_config(net, ignored)
            model = Generator.from_config(config)
    except StyleGAN2PickleError as exc:
        raise StyleGAN2PickleError(f"{what}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise StyleGAN2PickleError(f"{what}: cannot build the network from its init kwargs: {exc}") from exc
    _check_attributes(net, model)
    num_tensors, renamed = _load_weights(net, model, what)
    model = model.eval().to(device)
    generator = which != "D"
    info = StyleGAN2PickleInfo(
        path=pkl.path,
        which=name,
        container=pkl.container,
        class_name=net.class_name,
        source=net.source,
        source_classes={k: _describe(v) for k, v in pkl.entries.items()},
        img_resolution=config.img_resolution,
        img_channels=config.img_channels,
        z_dim=config.z_dim if generator else None,
        w_dim=config.w_dim if generator else None,
        c_dim=config.c_dim,
        init_kwargs=_bind(net, _G_SIGNATURE if generator else _D_SIGNATURE),
        config=config,
        ignored=tuple(ignored),
        renamed=tuple(renamed),
        num_tensors=num_tensors,
        module_src_sha256=net.module_src_sha256,
    )
    logger.info(
        "loaded %s %s (%d tensors, %d² px) from %s; ignored: %s",
        name,
        net.class_name,
        num_tensors,
        config.img_resolution,
        pkl.path,
        ", ".join(ignored) or "nothing",
    )
    return model, info
