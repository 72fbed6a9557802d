"""Encoder (ArcFace IResNet + heads): sizes from the face model, initial prediction, export, ArcFace loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facecore.detect import ALIGN_TEMPLATE, alignment_anchors
from models.arcface_loader import load_arcface_weights
from models.encoder import IRESNET_LAYERS, Encoder, EncoderConfig, EncoderOutputs, IResNet, alignment_camera
from models.face.model import FaceModel
from models.render.shading import sh_shading


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.from_file()


@pytest.fixture(scope="module")
def encoder18(face_model) -> Encoder:
    torch.manual_seed(0)
    return Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=18)).eval()


def _randomise_heads(encoder: Encoder, std: float = 0.02) -> Encoder:
    with torch.no_grad():
        encoder.out.weight.normal_(0.0, std)
    return encoder


def test_config_sizes_come_from_the_face_model(face_model):
    cfg = EncoderConfig.for_face_model(face_model, depth=18, detail_dim=64)
    assert (cfg.n_shape, cfg.n_expr, cfg.n_joints) == (
        face_model.n_shape,
        face_model.n_expr,
        len(face_model.joint_names),
    )
    assert [face_model.joint_names[j] for j in cfg.pose_joints] == ["global", "jaw"]
    assert EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="not joints"):
        EncoderConfig.for_face_model(face_model, predicted_joints=("global", "tail"))
    with pytest.raises(ValueError, match="depth"):
        EncoderConfig.for_face_model(face_model, depth=20)
    with pytest.raises(ValueError, match="unknown keys"):
        EncoderConfig.from_dict({**cfg.to_dict(), "width": 3})


@pytest.mark.parametrize(("depth", "size", "batch"), [(18, 224, 2), (50, 112, 2)])
def test_output_shapes_and_dtypes(face_model, depth, size, batch):
    torch.manual_seed(depth)
    enc = Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=depth, detail_dim=32)).eval()
    assert sum(len(getattr(enc.backbone, f"layer{i + 1}")) for i in range(4)) == sum(IRESNET_LAYERS[depth])
    with torch.no_grad():
        out = enc(torch.rand(batch, 3, size, size))
    J = len(face_model.joint_names)
    expected = {
        "shape": (batch, face_model.n_shape),
        "expression": (batch, face_model.n_expr),
        "pose": (batch, J, 3),
        "camera": (batch, 3),
        "light": (batch, 9, 3),
        "detail": (batch, 32),
    }
    assert {n: tuple(t.shape) for n, t in zip(EncoderOutputs.names(), out.as_tuple(), strict=True)} == expected
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out.as_tuple())
    with pytest.raises(ValueError, match="multiples of 16"):
        enc(torch.rand(1, 3, 100, 100))


def test_initial_prediction_is_the_mean_face_frontal_framed_and_ambient(face_model, encoder18):
    images = torch.rand(2, 3, 112, 112)
    encoder18.train()  # BatchNorm in batch mode must not change the initial prediction either
    try:
        out_train = encoder18(images)
    finally:
        encoder18.eval()
    with torch.no_grad():
        out = encoder18(images)
    for o in (out, out_train):
        assert torch.all(o.shape == 0) and torch.all(o.expression == 0) and torch.all(o.pose == 0)
        assert torch.all(o.detail == 0)
    verts = face_model(out.shape, out.expression, out.pose)
    assert torch.allclose(verts, face_model.mean.expand_as(verts), atol=1e-7)
    # ambient light: shading 1 for any normal
    normals = torch.nn.functional.normalize(torch.randn(2, 50, 3), dim=-1)
    assert torch.allclose(sh_shading(normals, out.light), torch.ones(2, 50, 3), atol=1e-5)
    # the camera puts the mean face's eyes and nose where the service's face alignment puts them
    landmarks_ndc = face_model.landmarks(out.weak_perspective_camera().project(verts))  # affine: commutes
    anchors = alignment_anchors(landmarks_ndc[0, :, :2].double().numpy())
    crop = np.stack([(anchors[:, 0] + 1) / 2, (1 - anchors[:, 1]) / 2], 1)
    assert np.abs(crop - ALIGN_TEMPLATE).max() < 0.01
    s, tx, ty = alignment_camera(face_model.arrays, crop_scale=1.5)
    assert s == pytest.approx(out.camera[0, 0].item() / 1.5, rel=1e-5)


def test_deterministic_in_eval_mode_and_gradients_reach_the_backbone(face_model):
    torch.manual_seed(1)
    enc = _randomise_heads(Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=18, detail_dim=16)))
    images = torch.rand(2, 3, 32, 32)
    enc.eval()
    with torch.no_grad():
        a, b = enc(images), enc(images)
    assert all(torch.equal(x, y) for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True))
    assert not torch.allclose(a.shape[0], a.shape[1])  # the prediction depends on the image
    enc.train()
    out = enc(images)
    sum(t.square().sum() for t in out.as_tuple()).backward()
    assert enc.backbone.conv1.weight.grad is not None and enc.backbone.conv1.weight.grad.abs().sum() > 0
    assert enc.backbone.features.weight.grad is None  # fixed scale, as in insightface


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals
def test_onnx_export_with_dynamic_batch_matches_pytorch(tmp_path, face_model):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    enc = _randomise_heads(Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=18, detail_dim=16)))
    module = enc.export_module().eval()
    path = tmp_path / "encoder.onnx"
    names = list(EncoderOutputs.names())
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(module, (torch.rand(2, 3, 112, 112),), path, dynamo=True, opset_version=18,
                      input_names=["image"], output_names=names, dynamic_shapes={"image": {0: batch}})  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    for batch_size in (1, 3):
        x = torch.rand(batch_size, 3, 112, 112)
        with torch.no_grad():
            expected = module(x)
        got = session.run(None, {"image": x.numpy()})
        for name, g, e in zip(names, got, expected, strict=True):
            assert g.shape == tuple(e.shape), name
            assert np.abs(g - e.numpy()).max() <= 1e-4, (name, batch_size)


# ---------------------------------------------------------------------------------------------- ArcFace loader
@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    """An insightface-named IResNet-18 state dict with random values (as a user's ArcFace .pth would be)."""
    torch.manual_seed(3)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in IResNet(18).state_dict().items()}
    state["features.weight"] = torch.ones_like(state["features.weight"])
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # older files lack them
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(state, path)
    yield path, state
    path.unlink()


def test_arcface_weights_load_into_the_backbone(arcface_file, encoder18, tmp_path):
    path, state = arcface_file
    assert "layer1.0.downsample.0.weight" in state and "prelu.weight" in state and "features.running_var" in state
    head_before = encoder18.out.bias.clone()
    load_arcface_weights(encoder18, path)
    loaded = encoder18.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert torch.equal(encoder18.out.bias, head_before)  # heads untouched
    # DDP prefix and nesting are accepted
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {f"module.{k}": v * 0 for k, v in state.items()}}, nested)
    load_arcface_weights(encoder18.backbone, nested)
    assert encoder18.backbone.conv1.weight.abs().sum() == 0


def test_arcface_loader_rejects_mismatched_files(arcface_file, encoder18, face_model, tmp_path):
    path, state = arcface_file
    bad = tmp_path / "bad.pth"
    torch.save({**state, "fc.weight": torch.zeros(512, 512 * 4 * 4)}, bad)
    with pytest.raises(ValueError, match=r"fc\.weight: file \(512, 8192\) vs model \(512, 25088\)"):
        load_arcface_weights(encoder18, bad)
    torch.save({k: v for k, v in state.items() if k != "layer2.0.bn3.running_var"}, bad)
    with pytest.raises(ValueError, match=r"missing keys \[layer2\.0\.bn3\.running_var\]"):
        load_arcface_weights(encoder18, bad)
    torch.save({**state, "weight": torch.zeros(10, 512)}, bad)  # a PartialFC classifier left in the file
    with pytest.raises(ValueError, match=r"unexpected keys \[weight\]"):
        load_arcface_weights(encoder18, bad)
    torch.save(torch.nn.Linear(2, 2), bad)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only"):
        load_arcface_weights(encoder18, bad)
    with pytest.raises(FileNotFoundError):
        load_arcface_weights(encoder18, tmp_path / "missing.pth")
    enc34 = Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=34))
    with pytest.raises(ValueError, match="looks like IResNet-18"):
        load_arcface_weights(enc34, path)


# ---------------------------------------------------------------------------------------------- pooled fc grid
def test_fc_grid_shrinks_fc_and_keeps_outputs_and_config_round_trip(face_model):
    torch.manual_seed(0)
    small = Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=18, input_size=64, fc_grid=2))
    assert tuple(small.backbone.fc.weight.shape) == (512, 512 * 2 * 2)  # 1 M weights instead of 12.8 M
    assert EncoderConfig.from_dict(small.config.to_dict()).fc_grid == 2
    x = torch.rand(3, 3, 64, 64)
    out = small.eval()(x)
    assert out.shape.shape == (3, face_model.n_shape) and torch.isfinite(out.detail).all()
    # the pooled grid is the 4×4 feature map averaged in 2×2 blocks: fc sees exactly that
    backbone = small.backbone
    seen = {}

    def keep_input(_module, inputs, _output) -> None:  # a hook returning a value would replace the output
        seen["x"] = inputs[0]

    backbone.fc.register_forward_hook(keep_input)
    with torch.no_grad():
        backbone(x * 2 - 1)
        feats = backbone.bn2(backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(
            backbone.prelu(backbone.bn1(backbone.conv1(x * 2 - 1))))))))  # fmt: skip
    assert feats.shape[-1] == 4
    pooled = feats.reshape(3, 512, 2, 2, 2, 2).mean((3, 5)).flatten(1)
    torch.testing.assert_close(seen["x"], pooled, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fc_grid: expected 1 to 7, got 8"):
        EncoderConfig.for_face_model(face_model, fc_grid=8)
    with pytest.raises(ValueError, match="fc_grid"):
        IResNet(18, fc_grid=0)


def test_arcface_weights_need_the_7x7_grid(arcface_file, face_model):
    path, _ = arcface_file
    enc = Encoder.from_config(EncoderConfig.for_face_model(face_model, depth=18, fc_grid=2))
    with pytest.raises(ValueError, match=r"fc_grid=2 \(set model.encoder.fc_grid: 7\)"):
        load_arcface_weights(enc, path)
