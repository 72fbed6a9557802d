"""dlib's two CNNs as ONNX graphs, built from dlib's own ``.dat`` files at first use and run by onnxruntime.

* The **face-recognition ResNet** (``dlib_face_recognition_resnet_model_v1.dat``, 29 convolutions): the same
  weights dlib runs, 150×150 chips → 128-d raw descriptors. On this project's 2-core CPU onnxruntime takes
  ≈ 4 ms for a chip and its mirror image where dlib's own runtime (the ``dlib-bin`` wheel has no BLAS) takes
  ≈ 150 ms; ``benchmarks/dlib_onnx.py`` prints both and the largest difference between their descriptors.
* The **MMOD face detector** (``mmod_human_face_detector.dat``): a fully convolutional scorer run over dlib's
  tiled image pyramid (levels 5/6 apart, down to 5 px high, packed into one image as dlib packs them), its
  detections (score > 0, an 80×80 window at every stride-8 position, mapped back to the image) thinned by
  dlib's non-max suppression with the overlap test stored in the file.

Both graphs are built with ``onnx.helper`` from the layers :mod:`facecore.dlib_dat` reads (affine layers, which
hold the folded batch norm, folded further into the convolution before them); nothing is downloaded or stored.
:func:`resnet_weights` is also what ``models.identity.FaceEmbedder`` (the torch twin, for gradients) loads.
The network descriptions (layer kinds, the residual table) are facts of dlib's example programs
(``dnn_face_recognition_ex.cpp``, ``dnn_mmod_face_detection_ex.cpp``); the code is this project's.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facecore.dlib_dat import DlibFormatError, DlibLayer, DlibNet, read_dlib_net

# ------------------------------------------------------------------------------------------ recognition ResNet
RESNET_INPUT_SIZE = 150
RESNET_STEM_FILTERS = 32
RESNET_EMBEDDING_DIM = 128
#: (filters, blocks, first block downsamples) per residual level, input side first (dlib's alevel4 … alevel0)
RESNET_LEVELS: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)


def resnet_spec() -> list[str]:
    """The layer kinds of dlib's face recognition network, input first (for :func:`facecore.dlib_dat.read_dlib_net`)."""
    spec = ["input_rgb_image_sized", "con", "affine", "relu", "max_pool"]
    branch = ["con", "affine", "relu", "con", "affine"]
    for _, blocks, first_down in RESNET_LEVELS:
        for i in range(blocks):
            if i == 0 and first_down:  # add_prev2<avg_pool<skip1<tag2<block<tag1<x>>>>>>
                spec += ["tag", *branch, "tag", "skip", "avg_pool", "add_prev", "relu"]
            else:  # add_prev1<block<tag1<x>>>
                spec += ["tag", *branch, "add_prev", "relu"]
    return [*spec, "avg_pool", "fc"]


@dataclass(frozen=True)
class Conv:
    """A convolution with its affine layer folded in: ``weight`` (F, C, kh, kw) float32, ``bias`` (F,)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class ResBlock:
    conv1: Conv
    conv2: Conv
    down: bool  # ares_down: conv1 strided, the skip average-pooled 2×2/2


@dataclass(frozen=True)
class ResNetWeights:
    avg_rgb: np.ndarray  # (3,)
    stem: Conv
    blocks: tuple[ResBlock, ...]  # RESNET_LEVELS, flattened
    fc: np.ndarray  # (256, 128): descriptor = pooled · fc


class _Walker:
    """Takes a parsed network's layers in order, checking each one's kind (errors name the layer)."""

    def __init__(self, net: DlibNet, name: str):
        self.layers = list(net.layers)
        self.pos = 0
        self.name = name

    def fail(self, layer: DlibLayer, message: str) -> DlibFormatError:
        where = f"layer {self.layers.index(layer)} ({layer.kind} {layer.version})"
        return DlibFormatError(f"{self.name}: {where}: {message}")

    def take(self, kind: str) -> DlibLayer:
        layer = self.layers[self.pos]
        if layer.kind != kind:  # cannot happen after read_dlib_net with the right spec; kept as a guard
            raise self.fail(layer, f"expected {kind}")
        self.pos += 1
        if kind == "relu" and layer.attrs["disabled"]:
            raise self.fail(layer, "a disabled relu is not part of this network")
        return layer

    def pool(self, kind: str, size: int, stride: int) -> None:
        layer = self.take(kind)
        got = (layer.attrs["nr"], layer.attrs["nc"], layer.attrs["stride"], layer.attrs["padding"])
        want = (size, size, (stride, stride), (0, 0))
        if got != want:
            raise self.fail(layer, f"(nr, nc, stride, padding) = {got}, expected {want}")

    def conv_affine(self, filters: int, channels: int, size: int, stride: int, padding: int) -> Conv:
        c, a = self.take("con"), self.take("affine")
        want = {
            "num_filters": filters,
            "in_channels": channels,
            "nr": size,
            "nc": size,
            "stride": (stride, stride),
            "padding": (padding, padding),
            "use_relu": False,
        }
        got = {k: c.attrs[k] for k in want}
        if got != want:
            raise self.fail(c, f"convolution {got} does not match the network's {want}")
        weight = c.params["weight"].astype(np.float64)
        bias = c.params["bias"].astype(np.float64) if c.attrs["use_bias"] else np.zeros(filters)
        if a.attrs["disabled"]:
            gamma, beta = np.ones(filters), np.zeros(filters)
        else:
            if a.attrs["mode"] != "conv" or a.attrs["channels"] != filters:
                raise self.fail(a, f"expected a per-channel affine over {filters} channels, got {a.attrs}")
            gamma, beta = a.params["gamma"].astype(np.float64), a.params["beta"].astype(np.float64)
        return Conv(
            (weight * gamma[:, None, None, None]).astype(np.float32),
            (bias * gamma + beta).astype(np.float32),
            (stride, stride),
            (padding, padding),
        )

    def done(self) -> None:
        if self.pos != len(self.layers):
            raise self.fail(self.layers[self.pos], "unexpected extra layers")


def resnet_weights(net: DlibNet, name: str = "<net>") -> ResNetWeights:
    """The recognition network's weights, affine layers folded into the convolutions (in float64, stored float32).

    Raises:
        DlibFormatError: a layer differs from the network's architecture (names the layer).
    """
    w = _Walker(net, name)
    inp = w.take("input_rgb_image_sized")
    if (inp.attrs["nr"], inp.attrs["nc"]) != (RESNET_INPUT_SIZE, RESNET_INPUT_SIZE):
        raise w.fail(inp, f"input size {inp.attrs['nr']}×{inp.attrs['nc']}, expected {RESNET_INPUT_SIZE}²")
    stem = w.conv_affine(RESNET_STEM_FILTERS, 3, 7, 2, 0)
    w.take("relu")
    w.pool("max_pool", 3, 2)
    blocks, channels = [], RESNET_STEM_FILTERS
    for filters, count, first_down in RESNET_LEVELS:
        for i in range(count):
            down = first_down and i == 0
            w.take("tag")
            conv1 = w.conv_affine(filters, channels, 3, 2 if down else 1, 0 if down else 1)
            w.take("relu")
            conv2 = w.conv_affine(filters, filters, 3, 1, 1)
            if down:
                w.take("tag")
                w.take("skip")
                w.pool("avg_pool", 2, 2)
            w.take("add_prev")
            w.take("relu")
            blocks.append(ResBlock(conv1, conv2, down))
            channels = filters
    w.pool("avg_pool", 0, 1)
    fc = w.take("fc")
    want = (channels, RESNET_EMBEDDING_DIM, False)
    got = (fc.attrs["num_inputs"], fc.attrs["num_outputs"], fc.attrs["use_bias"])
    if got != want:
        raise w.fail(fc, f"(num_inputs, num_outputs, bias) = {got}, expected {want}")
    w.done()
    return ResNetWeights(inp.params["avg_rgb"].astype(np.float32), stem, tuple(blocks), fc.params["weight"])


# ------------------------------------------------------------------------------------------ MMOD face detector
#: (filters, kernel, stride) per convolution, input first: dlib's "downsampler" (three 5×5/2), three 5×5
#: ``rcon5`` and the 9×9 scorer (no affine, no relu)
MMOD_CONVS: tuple[tuple[int, int, int], ...] = ((16, 5, 2), (32, 5, 2), (32, 5, 2), (45, 5, 1), (45, 5, 1), (45, 5, 1))
MMOD_PYRAMID_RATE = 5.0 / 6.0  # pyramid_down<6>


def mmod_spec() -> list[str]:
    return ["input_rgb_image_pyramid"] + ["con", "affine", "relu"] * len(MMOD_CONVS) + ["con"]


@dataclass(frozen=True)
class MmodWeights:
    avg_rgb: np.ndarray
    padding: int  # between pyramid levels
    outer_padding: int  # around the tiled image
    convs: tuple[Conv, ...]  # relu after all but the last
    windows: tuple[tuple[int, int], ...]  # detector windows (width, height), one score channel each
    nms: tuple[float, float]  # non-max suppression: (iou_thresh, percent_covered_thresh)


def mmod_weights(net: DlibNet, name: str = "<net>") -> MmodWeights:
    w = _Walker(net, name)
    inp = w.take("input_rgb_image_pyramid")
    convs, channels = [], 3
    for filters, size, stride in MMOD_CONVS:
        convs.append(w.conv_affine(filters, channels, size, stride, 0 if stride > 1 else size // 2))
        w.take("relu")
        channels = filters
    last = w.take("con")
    opts = net.loss.attrs
    windows = tuple((int(a), int(b)) for a, b, _ in opts["detector_windows"])
    want = {"num_filters": len(windows), "in_channels": channels, "stride": (1, 1), "use_relu": False}
    if {k: last.attrs[k] for k in want} != want or opts["use_bounding_box_regression"]:
        raise w.fail(last, f"the scoring convolution {last.attrs} does not match {want} without box regression")
    w.done()
    bias = last.params["bias"] if last.attrs["use_bias"] else np.zeros(len(windows), np.float32)
    convs.append(Conv(last.params["weight"], bias, (1, 1), tuple(last.attrs["padding"])))
    return MmodWeights(
        inp.params["avg_rgb"].astype(np.float32),
        int(inp.attrs["pyramid_padding"]),
        int(inp.attrs["pyramid_outer_padding"]),
        tuple(convs),
        windows,
        tuple(opts["overlaps_nms"]),
    )


# ------------------------------------------------------------------------------------------ ONNX graphs
class _Graph:
    """A small ``onnx.helper`` wrapper: values are named in order, weights become initialisers."""

    def __init__(self) -> None:
        import onnx.helper  # noqa: F401  (fail early with the import error)

        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name("w")
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def conv(self, x: str, c: Conv) -> str:
        (sy, sx), (py, px) = c.stride, c.padding
        return self.op(
            "Conv",
            [x, self.const(c.weight), self.const(c.bias)],
            kernel_shape=list(c.weight.shape[2:]),
            strides=[sy, sx],
            pads=[py, px, py, px],
        )

    def model(self, inputs: list[Any], output: str, output_info: Any) -> bytes:
        from onnx import helper

        self.nodes[-1].output[0] = output
        graph = helper.make_graph(self.nodes, "dlib", inputs, [output_info], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=__name__)
        model.ir_version = 8  # onnxruntime ≥ 1.18 reads it
        return model.SerializeToString()


def _size_after(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def resnet_graph(weights: ResNetWeights) -> bytes:
    """ONNX: ``chips`` (N, 150, 150, 3) uint8 RGB → ``descriptor`` (N, 128) float32, dlib's raw descriptor."""
    from onnx import TensorProto, helper

    g = _Graph()
    x = g.op("Cast", ["chips"], to=TensorProto.FLOAT)
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    x = g.op("Sub", [x, g.const(weights.avg_rgb.reshape(1, 3, 1, 1))])
    x = g.op("Mul", [x, g.const(np.array(1.0 / 256.0, np.float32))])
    x = g.op("Relu", [g.conv(x, weights.stem)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    size = _size_after(_size_after(RESNET_INPUT_SIZE, 7, 2, 0), 3, 2, 0)
    channels = RESNET_STEM_FILTERS
    for block in weights.blocks:
        y = g.conv(g.op("Relu", [g.conv(x, block.conv1)]), block.conv2)
        filters = block.conv2.weight.shape[0]
        ysize = _size_after(size, 3, *((2, 0) if block.down else (1, 1)))
        skip, ssize = x, size
        if block.down:
            skip, ssize = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2]), size // 2
        # dlib's add_prev zero-pads both to the larger size at the end of every axis (channels, rows, columns)
        out = max(ysize, ssize)
        y = _pad_end(g, y, 0, out - ysize)
        skip = _pad_end(g, skip, filters - channels, out - ssize)
        x = g.op("Relu", [g.op("Add", [y, skip])])
        size, channels = out, filters
    x = g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    x = g.op("MatMul", [x, g.const(weights.fc.astype(np.float32))])
    inputs = [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["n", RESNET_INPUT_SIZE, RESNET_INPUT_SIZE, 3])]
    return g.model(inputs, "descriptor", helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["n", 128]))


def _pad_end(g: _Graph, x: str, channels: int, pixels: int) -> str:
    if channels == 0 and pixels == 0:
        return x
    pads = np.array([0, 0, 0, 0, 0, channels, pixels, pixels], np.int64)
    return g.op("Pad", [x, g.const(pads)])


def mmod_graph(weights: MmodWeights) -> bytes:
    """ONNX: ``image`` (1, 3, H, W) float32, the normalised tiled pyramid → ``scores`` (1, windows, H', W')."""
    from onnx import TensorProto, helper

    g = _Graph()
    x = "image"
    for i, conv in enumerate(weights.convs):
        x = g.conv(x, conv)
        if i < len(weights.convs) - 1:
            x = g.op("Relu", [x])
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, len(weights.windows), "oh", "ow"])
    return g.model(inputs, "scores", out)


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # one thread, the caller's: these graphs take milliseconds, and the service runs detection in threads of
    # lower CPU priority (service.engine.admission) so that a big upload does not slow everyone else; pool
    # threads would run at normal priority (and busy-wait after each call, which slowed the unwrap after it)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------ runtimes
class Recogniser:
    """dlib's recognition ResNet on onnxruntime: (N, 150, 150, 3) uint8 chips → (N, 128) float64 descriptors."""

    def __init__(self, path: str | Path):
        self.weights = resnet_weights(read_dlib_net(path, resnet_spec()), str(path))
        self._session = _session(resnet_graph(self.weights))

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {"chips": np.ascontiguousarray(chips, np.uint8)})[0]
        return out.astype(np.float64)


def _pyramid_rects(nr: int, nc: int, padding: int, outer: int) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """dlib's tiled pyramid layout: (left, top, width, height) per level and the tiled image's (rows, cols).

    Levels shrink by 5/6 (floored) until one is under 5 px high; the first column holds the levels top to
    bottom until the rest fit beside them, which then go bottom-up in a second column at the right edge.
    """
    sizes = [(nc, nr)]
    while True:
        nr, nc = int(np.floor(MMOD_PYRAMID_RATE * nr)), int(np.floor(MMOD_PYRAMID_RATE * nc))
        if nr * nc == 0 or nr < 5:
            break
        sizes.append((nc, nr))
    total = sum(h + padding for _, h in sizes) - 2 * padding
    height, prev_width = 0, 0
    w0, h0 = sizes[0]
    for w, h in sizes:
        if w <= w0 - prev_width - padding and (height - h0) * 2 >= total - h0:
            break
        height += h + padding
        prev_width = w
    height -= padding
    rects: list[tuple[int, int, int, int]] = []
    y = outer
    i = 0
    while y < height + outer and i < len(sizes):
        rects.append((outer, y, *sizes[i]))
        y += sizes[i][1] + padding
        i += 1
    y -= padding
    while i < len(sizes):
        w, h = sizes[i]
        right, bottom = outer + w0 - 1, y - 1
        left, top = right - w + 1, bottom - h + 1
        if left <= outer + w0 - 1 and top <= outer + h0 - 1 and right >= outer and bottom >= outer:
            break  # would overlap the full-size level
        rects.append((left, top, w, h))
        y -= h + padding
        i += 1
    return rects, height + 2 * outer, w0 + 2 * outer


def _resize_bilinear(src: np.ndarray, width: int, height: int) -> np.ndarray:
    """(C, H, W) → (C, height, width), bilinear with the corners aligned (dlib's ``resize_image``), rows first."""
    _, h, w = src.shape

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
        i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32)

    y0, y1, fy = taps(height, h)
    x0, x1, fx = taps(width, w)
    rows = src[:, y0] + (src[:, y1] - src[:, y0]) * fy[None, :, None]
    return rows[:, :, x0] + (rows[:, :, x1] - rows[:, :, x0]) * fx


def _overlaps(a: np.ndarray, b: np.ndarray, iou: float, covered: float) -> bool:
    """dlib's ``test_box_overlap`` on inclusive integer boxes (its "IoU" divides by the bounding box of both)."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ix <= 0 or iy <= 0:
        return False
    inner = ix * iy

    def area(r: np.ndarray) -> float:
        return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)

    outer = area(np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]))
    return inner / outer > iou or inner / area(a) > covered or inner / area(b) > covered


class MmodDetector:
    """dlib's MMOD CNN face detector on onnxruntime: (H, W, 3) uint8 RGB → [(box (x0, y0, x1, y1), score)].

    Boxes are inclusive integer pixel corners like dlib's; scores are dlib's detection confidences (> 0).
    """

    def __init__(self, path: str | Path):
        self.weights = mmod_weights(read_dlib_net(path, mmod_spec(), loss="loss_mmod"), str(path))
        self._session = _session(mmod_graph(self.weights))
        # output position → input-tensor position: each convolution maps p to p·stride − padding + kernel // 2
        scale, offset = 1.0, 0.0
        for conv in reversed(self.weights.convs):
            k, s, p = conv.weight.shape[3], conv.stride[1], conv.padding[1]
            scale, offset = scale * s, offset * s - p + k // 2
        self._out_scale, self._out_offset = scale, offset

    def tiled_pyramid(self, image: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        w = self.weights
        rects, rows, cols = _pyramid_rects(image.shape[0], image.shape[1], w.padding, w.outer_padding)
        tiled = np.zeros((3, rows, cols), np.float32)
        level = (image.astype(np.float32).transpose(2, 0, 1) - w.avg_rgb[:, None, None]) / 256.0
        for i, (x, y, lw, lh) in enumerate(rects):
            if i:
                level = _resize_bilinear(level, lw, lh)
            tiled[:, y : y + lh, x : x + lw] = level
        return tiled, rects

    def __call__(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        tiled, rects = self.tiled_pyramid(image)
        scores = self._session.run(None, {"image": tiled[None]})[0][0]
        found = []
        for k, (ww, wh) in enumerate(self.weights.windows):
            for r, c in zip(*np.nonzero(scores[k] > 0.0), strict=True):
                cx, cy = c * self._out_scale + self._out_offset, r * self._out_scale + self._out_offset
                box = np.array([cx - (ww - 1) / 2, cy - (wh - 1) / 2, cx + (ww - 1) / 2, cy + (wh - 1) / 2])
                found.append((float(scores[k, r, c]), self._to_image(box, rects)))
        found.sort(key=lambda f: -f[0])
        kept: list[tuple[np.ndarray, float]] = []
        for score, box in found:
            rounded = np.sign(box) * np.floor(np.abs(box) + 0.5)  # std::lround: dlib's drectangle → rectangle
            if not any(_overlaps(k, rounded, *self.weights.nms) for k, _ in kept):
                kept.append((rounded, score))
        return kept

    @staticmethod
    def _to_image(box: np.ndarray, rects: list[tuple[int, int, int, int]]) -> np.ndarray:
        """A box in the tiled pyramid → the image: the level nearest its centre, scaled up by 6/5 per level."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2

        def distance(rect: tuple[int, int, int, int]) -> float:
            x, y, w, h = rect
            dx = max(x - cx, 0.0, cx - (x + w - 1))
            dy = max(y - cy, 0.0, cy - (y + h - 1))
            return dx * dx + dy * dy

        level = min(range(len(rects)), key=lambda i: distance(rects[i]))
        x, y, _, _ = rects[level]
        out = box - np.array([x, y, x, y], np.float64)
        for _ in range(level):  # pyramid_down<6>::point_up
            out = out / MMOD_PYRAMID_RATE + 0.3
        return out


_lock = threading.Lock()


@functools.cache
def _cached(kind: str, path: str) -> Recogniser | MmodDetector:
    return Recogniser(path) if kind == "resnet" else MmodDetector(path)


def get_recogniser(path: str | Path) -> Recogniser:
    with _lock:
        return _cached("resnet", str(path))  # type: ignore[return-value]


def get_mmod(path: str | Path) -> MmodDetector:
    with _lock:
        return _cached("mmod", str(path))  # type: ignore[return-value]
