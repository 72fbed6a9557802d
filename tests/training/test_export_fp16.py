"""float16 weight storage in exported graphs: half the bytes, float32 I/O and arithmetic, parity bounded."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.export import FP16_MIN_ELEMENTS, GraphExport, export_onnx, store_weights_fp16


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 128)
        self.b = nn.Linear(128, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _initializers(path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_fp16_weights_halve_the_file_and_keep_float32_io(tmp_path):
    torch.manual_seed(0)
    net = _Net().eval()
    graph = GraphExport(net, {"x": torch.randn(2, 64)}, ["y"])
    full, half = tmp_path / "full.onnx", tmp_path / "half.onnx"
    parity32 = export_onnx(graph, full)
    parity16 = export_onnx(graph, half, fp16_weights=True)
    assert parity32 <= 1e-5 < parity16 <= 1e-2  # rounding the weights costs precision, within the bound
    assert half.stat().st_size < 0.6 * full.stat().st_size
    types = _initializers(half)
    assert types["a.weight__fp16"] == onnx.TensorProto.FLOAT16 and types["b.weight__fp16"] == onnx.TensorProto.FLOAT16
    assert types["a.bias"] == onnx.TensorProto.FLOAT  # 128 < FP16_MIN_ELEMENTS elements: kept
    assert 128 < FP16_MIN_ELEMENTS <= 64 * 128
    session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
        rounded = _Net().eval()
        rounded.load_state_dict({k: v.half().float() if v.numel() >= FP16_MIN_ELEMENTS else v
                                 for k, v in net.state_dict().items()})  # fmt: skip
        exact = rounded(torch.from_numpy(x)).numpy()
    got = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, exact, atol=1e-5)  # exactly the fp16-rounded weights, computed in float32
    assert np.abs(got - expected).max() <= 1e-2


def test_values_that_overflow_float16_stay_float32(tmp_path):
    net = _Net().eval()
    with torch.no_grad():
        net.a.weight[0, 0] = 1e6  # beyond float16's 65504
    path = tmp_path / "big.onnx"
    export_onnx(GraphExport(net, {"x": torch.randn(2, 64)}, ["y"]), path)
    assert store_weights_fp16(path) == 1  # only b.weight converted
    types = _initializers(path)
    assert types["a.weight"] == onnx.TensorProto.FLOAT and "b.weight__fp16" in types


def test_fp16_parity_failure_is_reported(tmp_path, monkeypatch):
    import training.export as export

    monkeypatch.setattr(export, "FP16_PARITY_TOL", 1e-9)
    with pytest.raises(export.ExportError, match=r"half\.onnx: max \|onnx - torch\| = .* exceeds"):
        export_onnx(GraphExport(_Net().eval(), {"x": torch.randn(2, 64)}, ["y"]), tmp_path / "half.onnx", True)
