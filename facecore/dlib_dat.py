"""Reader for dlib's binary serialisation of a DNN (``dlib::serialize(net, "file.dat")``), no dlib needed.

Written from dlib's serialisation code (``dlib/serialize.h``, ``dlib/cuda/tensor.h``, ``dlib/dnn/core.h``,
``layers.h``, ``input.h``, ``loss.h``); only the format facts carry over. The format, as relied on here:

Primitives
    * integer: a control byte (bit 7: negative, low 4 bits: byte count n, 1–8) then n bytes of the absolute
      value, little-endian. Unsigned types refuse the sign bit.
    * bool: one ASCII byte ``'1'`` or ``'0'``.
    * string: an unsigned integer length, then the bytes.
    * float / double: two integers, a 64-bit mantissa then a 16-bit exponent, value = mantissa · 2**exponent
      (exponents 32000/32001/32002 mean +inf/-inf/NaN). dlib's pre-2013 ASCII float format is refused.
    * tensor (``resizable_tensor``): int version 2, num_samples, k, nr, nc, then num_samples·k·nr·nc float32
      little-endian values in NCHW order.
    * alias_tensor (a named view into a layer's ``params``): int version 1, num_samples, k, nr, nc.

Network nesting. A network type such as ``loss_metric<fc_no_bias<128, … relu<affine<con<32,7,7,2,2,
input_rgb_image_sized<150>>>>…>>`` is serialised from the loss inwards, but every wrapper writes its subnetwork
*before* its own layer details:

    * ``add_loss_layer``: int 1, the loss details, the subnetwork.
    * ``add_layer`` (a computational layer over another layer): int 1 or 2, the subnetwork, the layer details,
      three bools, two tensors (``x_grad``, ``cached_output``) and, from version 2, a third (``params_grad``).
    * ``add_layer`` over the input layer: int 2 or 3, the input layer details, the layer details, three bools,
      three tensors (``x_grad``, ``cached_output``, ``grad_final``), from version 3 an unsigned
      ``sample_expansion_factor``.
    * ``add_tag_layer`` / ``add_skip_layer``: int 1, the subnetwork, nothing else.

So a file is: the loss, then one version integer per layer from the output down to the input, then the input
layer, then the layer details from the input up to the output. Tags and skips carry no type marker in the
stream (their version 1 looks like an ``add_layer`` version 1), so the reader is given the expected layer
sequence — the C++ network type — as a list of kinds, and checks every version and every details string
against it.

Layer details understood (the first item is always a version string):

    ``input_rgb_image_sized``: float avg_red, avg_green, avg_blue, unsigned nr, nc.
    ``input_rgb_image_pyramid`` / ``input_rgb_image_pyramid2``: float avg_red, avg_green, avg_blue (+ unsigned
        pyramid_padding, pyramid_outer_padding; 10 and 11 for the first version).
    ``con_4`` / ``con_5`` / ``con_6``: tensor params, long num_filters, long nr, long nc, int stride_y,
        int stride_x, int padding_y, int padding_x, alias filters (num_filters, k, nr, nc), alias biases
        (1, num_filters), four doubles (learning-rate / weight-decay multipliers), bool use_bias (from con_5),
        bool use_relu (con_6). ``params`` holds the filters then the biases.
    ``fc_2`` / ``fc_3``: unsigned num_outputs, num_inputs, tensor params, alias weights (num_inputs,
        num_outputs), alias biases (1, num_outputs), int bias_mode (0 has bias, 1 no bias), four doubles,
        bool use_bias (fc_3). ``params`` holds the weights (row-major, output = input · weights) then the biases.
    ``affine_`` / ``affine_2``: tensor params (gamma then beta), alias gamma, alias beta, int mode (0 conv:
        per channel, 1 fc: per element), bool disabled (affine_2).
    ``bn_con2`` / ``bn_fc2`` (a batch-norm layer, which dlib converts to an affine layer when it loads it into an
        ``affine`` slot): tensor params (gamma, beta), alias gamma, alias beta, tensors means, invstds,
        running_means, running_variances, unsigned num_updates, running_stats_window_size, four doubles,
        double eps. Converted here as dlib does: gamma' = gamma / sqrt(running_var + eps),
        beta' = beta − gamma'·running_mean.
    ``relu_`` / ``relu_2`` (+ bool disabled), ``add_prev_``.
    ``max_pool_2`` / ``avg_pool_2``: long nr, long nc, int stride_y, int stride_x, int padding_y, int padding_x
        (nr = nc = 0: the whole input, ``avg_pool_everything``).
    ``loss_metric_`` / ``loss_metric_2`` (+ float margin, float dist_thresh).
    ``loss_mmod_``: the MMOD options: int version 1–4; detector windows (v1: one unsigned width, height; later:
        a count, then per window int version 1–2, unsigned width, height, v2 a string label); doubles
        loss_per_false_alarm, loss_per_missed_target, truth_match_iou_threshold; two box-overlap tests (non-max
        suppression, ignore), each double iou_thresh, double percent_covered_thresh; from v3 one raw byte
        assume_image_pyramid; from v4 bool use_bounding_box_regression, double bbr_lambda.

Anything else — another version string, a layer of the wrong kind, tensors whose sizes disagree with their
aliases, a truncated or over-long file — raises :class:`DlibFormatError` naming the byte offset and the layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COMPUTATIONAL_KINDS",
    "DlibFormatError",
    "DlibLayer",
    "DlibNet",
    "LOSS_KINDS",
    "WRAPPER_KINDS",
    "parse_dlib_net",
    "read_dlib_net",
]

COMPUTATIONAL_KINDS: tuple[str, ...] = ("con", "fc", "affine", "relu", "add_prev", "max_pool", "avg_pool")
"""Layer kinds with details in the stream (each one an ``add_layer``)."""
WRAPPER_KINDS: tuple[str, ...] = ("tag", "skip")
"""Layer kinds without details (``add_tag_layer``, ``add_skip_layer``)."""
INPUT_KINDS: tuple[str, ...] = ("input_rgb_image_sized", "input_rgb_image_pyramid")
LOSS_KINDS: tuple[str, ...] = ("loss_metric", "loss_mmod")

_DETAIL_VERSIONS: dict[str, tuple[str, ...]] = {
    "con": ("con_4", "con_5", "con_6"),
    "fc": ("fc_2", "fc_3"),
    "affine": ("affine_", "affine_2", "bn_con2", "bn_fc2"),
    "relu": ("relu_", "relu_2"),
    "add_prev": ("add_prev_",),
    "max_pool": ("max_pool_2",),
    "avg_pool": ("avg_pool_2",),
    "input_rgb_image_sized": ("input_rgb_image_sized",),
    "input_rgb_image_pyramid": ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"),
    "loss_metric": ("loss_metric_", "loss_metric_2"),
    "loss_mmod": ("loss_mmod_",),
}

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002
_MAX_TENSOR_ELEMENTS = 1 << 31  # 8 GiB of float32: anything larger is a corrupt header


class DlibFormatError(ValueError):
    """The bytes are not the dlib network they were expected to be (message names the offset and the layer)."""


@dataclass(frozen=True, eq=False)
class DlibLayer:
    """One layer read from the stream.

    Attributes:
        kind: one of :data:`COMPUTATIONAL_KINDS`, :data:`WRAPPER_KINDS`, ``"input_rgb_image_sized"`` or
            ``"loss_metric"``.
        version: the details' version string in the file (``"con_4"``, ``"bn_con2"`` …; ``""`` for tag/skip).
        attrs: scalar settings (``num_filters``, ``nr``, ``nc``, ``stride``, ``padding``, ``use_bias`` …).
        params: float32 arrays: ``con``: ``weight`` (num_filters, k, nr, nc) and ``bias`` (num_filters,) when
            use_bias; ``fc``: ``weight`` (num_inputs, num_outputs) and maybe ``bias`` (num_outputs,); ``affine``:
            ``gamma`` and ``beta`` (channels,) for conv mode, already folded from batch-norm statistics when the
            file held a ``bn_`` layer; input: ``avg_rgb`` (3,).
        offset: byte offset of the layer's details (or its version integer for tag/skip) in the file.
    """

    kind: str
    version: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    offset: int = 0


@dataclass(frozen=True, eq=False)
class DlibNet:
    """A parsed network: ``layers[0]`` is the input layer, ``layers[-1]`` the one below the loss."""

    loss: DlibLayer
    layers: tuple[DlibLayer, ...]

    def of_kind(self, kind: str) -> list[DlibLayer]:
        """The layers of one kind, input side first."""
        return [layer for layer in self.layers if layer.kind == kind]


# -------------------------------------------------------------------------------------------- primitives
class _Reader:
    """Cursor over the file's bytes with dlib's primitive decoders."""

    def __init__(self, data: bytes | memoryview, name: str):
        self.data = memoryview(data)
        self.pos = 0
        self.name = name
        self.context = "file header"

    def fail(self, message: str, at: int | None = None) -> DlibFormatError:
        at = self.pos if at is None else at
        return DlibFormatError(f"{self.name}: byte {at} ({self.context}): {message}")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends early: need {n} more bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self, what: str, *, signed: bool = True, bits: int = 64) -> int:
        at = self.pos
        control = self.take(1)[0]
        negative = bool(control & 0x80)
        size = control & 0x0F
        if not signed and negative:
            raise self.fail(f"{what}: negative value for an unsigned integer (control byte {control:#04x})", at)
        if not 1 <= size <= bits // 8:
            raise self.fail(f"{what}: invalid integer control byte {control:#04x} for a {bits}-bit integer", at)
        value = int.from_bytes(bytes(self.take(size)), "little")
        return -value if negative else value

    def boolean(self, what: str) -> bool:
        at = self.pos
        ch = self.take(1)[0]
        if ch not in (ord("0"), ord("1")):
            raise self.fail(f"{what}: expected a bool ('0' or '1'), got byte {ch:#04x}", at)
        return ch == ord("1")

    def string(self, what: str, max_length: int = 256) -> str:
        at = self.pos
        n = self.integer(f"{what} length", signed=False)
        if n > max_length:
            raise self.fail(f"{what}: implausible string length {n}", at)
        raw = bytes(self.take(n))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what}: not an ASCII string: {raw[:40]!r}", at) from None

    def real(self, what: str) -> float:
        at = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"{what}: dlib's old ASCII float format is not supported", at)
        mantissa = self.integer(f"{what} mantissa", bits=64)
        exponent = self.integer(f"{what} exponent", bits=16)
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def version_int(self, what: str, allowed: Sequence[int]) -> int:
        at = self.pos
        v = self.integer(what, bits=32)
        if v not in allowed:
            raise self.fail(f"{what}: version {v}, expected one of {tuple(allowed)}", at)
        return v

    def tensor(self, what: str) -> np.ndarray:
        self.version_int(f"{what} (tensor) version", (2,))
        shape = tuple(self.integer(f"{what} dimension", bits=64) for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"{what}: negative tensor dimension {shape}")
        count = math.prod(shape)
        if count > _MAX_TENSOR_ELEMENTS:
            raise self.fail(f"{what}: implausible tensor size {shape}")
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        self.version_int(f"{what} (alias_tensor) version", (1,))
        shape = tuple(self.integer(f"{what} dimension", bits=64) for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"{what}: negative alias dimension {shape}")
        return shape  # type: ignore[return-value]


# -------------------------------------------------------------------------------------------- layer details
def _split_params(r: _Reader, params: np.ndarray, parts: Sequence[tuple[str, tuple[int, ...]]]) -> dict:
    """Cut the flat ``params`` tensor into consecutive named pieces of the given shapes (the aliases)."""
    flat = params.reshape(-1)
    need = sum(math.prod(shape) for _, shape in parts)
    if flat.size != need:
        sizes = ", ".join(f"{name} {shape}" for name, shape in parts)
        raise r.fail(f"params tensor has {flat.size} values but its aliases ({sizes}) need {need}")
    out, start = {}, 0
    for name, shape in parts:
        n = math.prod(shape)
        if n:
            out[name] = flat[start : start + n].reshape(shape).copy()
        start += n
    return out


def _skip_multipliers(r: _Reader, what: str, n: int = 4) -> None:
    for i in range(n):
        r.real(f"{what} multiplier {i}")


def _read_con(r: _Reader, version: str) -> tuple[dict, dict]:
    params = r.tensor("params")
    num_filters = r.integer("num_filters")
    nr, nc = r.integer("nr"), r.integer("nc")
    stride = (r.integer("stride_y", bits=32), r.integer("stride_x", bits=32))
    padding = (r.integer("padding_y", bits=32), r.integer("padding_x", bits=32))
    filters = r.alias("filters")
    biases = r.alias("biases")
    _skip_multipliers(r, "con")
    use_bias = r.boolean("use_bias") if version in ("con_5", "con_6") else True
    use_relu = r.boolean("use_relu") if version == "con_6" else False
    if filters[0] != num_filters or filters[2:] != (nr, nc):
        raise r.fail(f"filters alias {filters} disagrees with num_filters={num_filters}, nr={nr}, nc={nc}")
    bias_shape = (num_filters,) if use_bias else (0,)
    if use_bias and math.prod(biases) != num_filters:
        raise r.fail(f"biases alias {biases} does not hold {num_filters} biases")
    parts = _split_params(r, params, [("weight", filters), ("bias", bias_shape)])
    attrs = {
        "num_filters": num_filters,
        "in_channels": filters[1],
        "nr": nr,
        "nc": nc,
        "stride": stride,
        "padding": padding,
        "use_bias": use_bias,
        "use_relu": use_relu,
    }
    return attrs, parts


def _read_fc(r: _Reader, version: str) -> tuple[dict, dict]:
    num_outputs = r.integer("num_outputs", signed=False)
    num_inputs = r.integer("num_inputs", signed=False)
    params = r.tensor("params")
    weights = r.alias("weights")
    biases = r.alias("biases")
    bias_mode = r.integer("bias_mode", bits=32)
    _skip_multipliers(r, "fc")
    use_bias = r.boolean("use_bias") if version == "fc_3" else True
    if bias_mode not in (0, 1):
        raise r.fail(f"unknown fc bias mode {bias_mode}")
    has_bias = bias_mode == 0 and use_bias
    if math.prod(weights) != num_inputs * num_outputs:
        raise r.fail(f"weights alias {weights} does not hold {num_inputs}×{num_outputs} values")
    if has_bias and math.prod(biases) != num_outputs:
        raise r.fail(f"biases alias {biases} does not hold {num_outputs} biases")
    shapes = [("weight", (num_inputs, num_outputs)), ("bias", (num_outputs,) if has_bias else (0,))]
    parts = _split_params(r, params, shapes)
    attrs = {"num_outputs": num_outputs, "num_inputs": num_inputs, "use_bias": has_bias}
    return attrs, parts


def _read_affine(r: _Reader, version: str) -> tuple[dict, dict]:
    params = r.tensor("params")
    gamma_shape = r.alias("gamma")
    beta_shape = r.alias("beta")
    if gamma_shape != beta_shape:
        raise r.fail(f"gamma alias {gamma_shape} and beta alias {beta_shape} differ")
    if version in ("bn_con2", "bn_fc2"):
        r.tensor("means")
        r.tensor("invstds")
        running_mean = r.tensor("running_means").reshape(-1)
        running_var = r.tensor("running_variances").reshape(-1)
        r.integer("num_updates", signed=False)
        r.integer("running_stats_window_size", signed=False)
        _skip_multipliers(r, "bn")
        eps = r.real("eps")
        mode = 0 if version == "bn_con2" else 1
        disabled = False
    else:
        mode = r.integer("mode", bits=32)
        disabled = r.boolean("disabled") if version == "affine_2" else False
        running_mean = running_var = None
        eps = 0.0
    if mode not in (0, 1):
        raise r.fail(f"unknown affine mode {mode}")
    n = math.prod(gamma_shape)
    if disabled:
        return {"mode": "conv" if mode == 0 else "fc", "disabled": True, "channels": 0}, {}
    parts = _split_params(r, params, [("gamma", (n,)), ("beta", (n,))])
    if running_mean is not None:
        if running_mean.size != n or running_var.size != n:
            raise r.fail(f"batch-norm running statistics hold {running_mean.size}/{running_var.size} values, need {n}")
        if not (eps > 0 and np.all(running_var >= 0)):
            raise r.fail(f"batch-norm with eps={eps} or negative running variances")
        # folded in float64 then stored as float32 (dlib folds in float32; the difference is ≤ 1 ulp)
        gamma = parts["gamma"].astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
        parts = {
            "gamma": gamma.astype(np.float32),
            "beta": (parts["beta"] - gamma * running_mean).astype(np.float32),
        }
    attrs = {"mode": "conv" if mode == 0 else "fc", "disabled": False, "channels": n, "alias_shape": gamma_shape}
    return attrs, parts


def _read_pool(r: _Reader, version: str) -> tuple[dict, dict]:
    nr, nc = r.integer("nr"), r.integer("nc")
    stride = (r.integer("stride_y", bits=32), r.integer("stride_x", bits=32))
    padding = (r.integer("padding_y", bits=32), r.integer("padding_x", bits=32))
    return {"nr": nr, "nc": nc, "stride": stride, "padding": padding}, {}


def _read_relu(r: _Reader, version: str) -> tuple[dict, dict]:
    disabled = r.boolean("disabled") if version == "relu_2" else False
    return {"disabled": disabled}, {}


def _read_add_prev(r: _Reader, version: str) -> tuple[dict, dict]:
    return {}, {}


def _read_input_rgb(r: _Reader, version: str) -> tuple[dict, dict]:
    avg = np.array([r.real("avg_red"), r.real("avg_green"), r.real("avg_blue")], dtype=np.float32)
    nr, nc = r.integer("nr", signed=False), r.integer("nc", signed=False)
    return {"nr": nr, "nc": nc}, {"avg_rgb": avg}


def _read_input_pyramid(r: _Reader, version: str) -> tuple[dict, dict]:
    avg = np.array([r.real("avg_red"), r.real("avg_green"), r.real("avg_blue")], dtype=np.float32)
    if version == "input_rgb_image_pyramid2":
        padding = r.integer("pyramid_padding", signed=False)
        outer = r.integer("pyramid_outer_padding", signed=False)
    else:
        padding, outer = 10, 11  # what dlib assumes for the first version
    return {"pyramid_padding": padding, "pyramid_outer_padding": outer}, {"avg_rgb": avg}


def _read_loss_mmod(r: _Reader, version: str) -> tuple[dict, dict]:
    options = r.version_int("mmod_options version", (1, 2, 3, 4))
    if options == 1:
        windows = [(r.integer("window width", signed=False), r.integer("window height", signed=False), "")]
    else:
        windows = []
        for i in range(r.integer("detector window count", signed=False)):
            v = r.version_int(f"detector window {i} version", (1, 2))
            w, h = r.integer("window width", signed=False), r.integer("window height", signed=False)
            windows.append((w, h, r.string("window label") if v == 2 else ""))
    attrs: dict[str, Any] = {"detector_windows": windows}
    for name in ("loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold"):
        attrs[name] = r.real(name)
    attrs["overlaps_nms"] = (r.real("nms iou_thresh"), r.real("nms percent_covered_thresh"))
    attrs["overlaps_ignore"] = (r.real("ignore iou_thresh"), r.real("ignore percent_covered_thresh"))
    attrs["assume_image_pyramid"] = bool(r.take(1)[0]) if options >= 3 else True
    attrs["use_bounding_box_regression"] = r.boolean("use_bounding_box_regression") if options >= 4 else False
    if options >= 4:
        r.real("bbr_lambda")
    if not windows:
        raise r.fail("mmod options without detector windows")
    return attrs, {}


def _read_loss_metric(r: _Reader, version: str) -> tuple[dict, dict]:
    if version == "loss_metric_2":
        return {"margin": r.real("margin"), "dist_thresh": r.real("dist_thresh")}, {}
    return {"margin": 0.1, "dist_thresh": 0.75}, {}  # the values dlib assumes for the first version


_DETAIL_READERS = {
    "con": _read_con,
    "fc": _read_fc,
    "affine": _read_affine,
    "relu": _read_relu,
    "add_prev": _read_add_prev,
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "input_rgb_image_sized": _read_input_rgb,
    "input_rgb_image_pyramid": _read_input_pyramid,
    "loss_metric": _read_loss_metric,
    "loss_mmod": _read_loss_mmod,
}


def _read_details(r: _Reader, kind: str, index: int) -> DlibLayer:
    offset = r.pos
    r.context = f"layer {index} ({kind})" if index >= 0 else kind
    version = r.string("version string")
    if version not in _DETAIL_VERSIONS[kind]:
        raise r.fail(
            f"expected a {kind} layer ({' / '.join(_DETAIL_VERSIONS[kind])}), found {version!r}: the file is not "
            "the expected network",
            offset,
        )
    attrs, params = _DETAIL_READERS[kind](r, version)
    return DlibLayer(kind=kind, version=version, attrs=attrs, params=params, offset=offset)


# -------------------------------------------------------------------------------------------- network
def parse_dlib_net(data: bytes | memoryview, spec: Sequence[str], loss: str = "loss_metric", *, name: str = "<bytes>"):
    """Parse a serialised dlib network whose type is given by ``spec``.

    Args:
        data: the file's bytes.
        spec: the layer kinds from the input up to the layer below the loss, e.g.
            ``["input_rgb_image_sized", "con", "affine", "relu", "tag", …, "fc"]``. ``spec[0]`` must be an input
            kind and ``spec[1]`` a computational kind (see the module docstring).
        loss: the loss kind (:data:`LOSS_KINDS`).
        name: how errors name the data (the file path).

    Returns:
        DlibNet with one :class:`DlibLayer` per ``spec`` entry, in the same order.

    Raises:
        DlibFormatError: the bytes do not hold that network (message with byte offset and layer index).
        ValueError: an invalid ``spec``.
    """
    spec = list(spec)
    if len(spec) < 2 or spec[0] not in INPUT_KINDS:
        raise ValueError(f"spec: must start with an input kind {INPUT_KINDS} and hold a layer above it, got {spec[:2]}")
    if spec[1] not in COMPUTATIONAL_KINDS:
        raise ValueError(f"spec: the layer on the input must be computational, got {spec[1]!r}")
    unknown = [k for k in spec[1:] if k not in COMPUTATIONAL_KINDS + WRAPPER_KINDS]
    if unknown:
        raise ValueError(f"spec: unknown layer kinds {sorted(set(unknown))}")
    if loss not in LOSS_KINDS:
        raise ValueError(f"loss: expected one of {LOSS_KINDS}, got {loss!r}")

    r = _Reader(data, name)
    r.context = "loss layer wrapper"
    r.version_int("add_loss_layer version", (1,))
    loss_layer = _read_details(r, loss, -1)

    # the version integers, from the layer below the loss down to the one on the input
    versions: dict[int, tuple[int, int]] = {}
    for index in range(len(spec) - 1, 0, -1):
        kind = spec[index]
        r.context = f"layer {index} ({kind}) wrapper"
        at = r.pos
        if kind in WRAPPER_KINDS:
            versions[index] = (r.version_int(f"add_{kind}_layer version", (1,)), at)
        elif index == 1:
            versions[index] = (r.version_int("add_layer (on the input) version", (2, 3)), at)
        else:
            versions[index] = (r.version_int("add_layer version", (1, 2)), at)

    layers: list[DlibLayer] = [_read_details(r, spec[0], 0)]
    for index in range(1, len(spec)):
        kind = spec[index]
        version, at = versions[index]
        if kind in WRAPPER_KINDS:
            layers.append(DlibLayer(kind=kind, version="", offset=at))
            continue
        layer = _read_details(r, kind, index)
        r.context = f"layer {index} ({kind}) state"
        for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
            r.boolean(flag)
        r.tensor("x_grad")
        r.tensor("cached_output")
        if index == 1:
            r.tensor("grad_final")
            if version >= 3:
                r.integer("sample_expansion_factor", signed=False, bits=32)
        elif version >= 2:
            r.tensor("params_grad")
        layers.append(layer)
    r.context = "end of network"
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes after the network: the file is not the expected network")
    return DlibNet(loss=loss_layer, layers=tuple(layers))


def read_dlib_net(path: str | Path, spec: Sequence[str], loss: str = "loss_metric") -> DlibNet:
    """:func:`parse_dlib_net` on a file (FileNotFoundError when it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib network file not found: {path}")
    return parse_dlib_net(path.read_bytes(), spec, loss, name=str(path))
