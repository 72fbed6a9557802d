"""Displacement decoder, its regularisers, and the torch detailed mesh (parity with facecore.geometry)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecore import geometry as geo
from models.displacement import (
    DetailedMesh,
    DisplacementConfig,
    DisplacementDecoder,
    UVGrid,
    detailed_vertices,
    displacement_magnitude,
    displacement_smoothness,
    uv_texel_mask,
)
from models.face.model import FaceModel


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.from_file()


def _codes(decoder: DisplacementDecoder, batch: int, generator: torch.Generator | None = None):
    cfg = decoder.config
    return (
        torch.randn(batch, cfg.detail_dim, generator=generator),
        torch.rand(batch, cfg.n_expr, generator=generator),
        0.1 * torch.randn(batch, 3, generator=generator),
    )


def _tiny_decoder(face_model, resolution: int = 32, **kwargs) -> DisplacementDecoder:
    cfg = DisplacementConfig.for_face_model(
        face_model, detail_dim=16, resolution=resolution, channel_base=256, **kwargs
    )
    return DisplacementDecoder.from_config(cfg)


def _smooth_map(batch: int, size: int, amplitude_m: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, 1, 6, 6, generator=g) * amplitude_m
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


# ---------------------------------------------------------------------------------------------- decoder
def test_config_sizes_and_round_trip(face_model):
    cfg = DisplacementConfig.for_face_model(face_model, detail_dim=128)
    assert cfg.n_expr == face_model.n_expr and cfg.resolution == 256
    assert DisplacementConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="power of two"):
        DisplacementConfig.for_face_model(face_model, resolution=96, start_resolution=8)
    with pytest.raises(ValueError, match="max_mm"):
        DisplacementConfig.for_face_model(face_model, max_mm=0.0)


def test_decoder_starts_flat_and_respects_max_mm(face_model):
    torch.manual_seed(0)
    dec = _tiny_decoder(face_model, resolution=32, max_mm=3.0, coarse_resolution=8)
    codes = _codes(dec, 3)
    out = dec(*codes)
    assert out.shape == (3, 1, 32, 32) and out.dtype == torch.float32
    assert torch.all(out == 0)  # the coarse surface at initialisation
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0.0, 3.0)  # saturate
        out = dec(*codes)
    assert out.abs().max() <= 3.0e-3 and out.abs().max() > 2.9e-3
    with pytest.raises(ValueError, match="expression"):
        dec(codes[0], codes[1][:, :5], codes[2])


def test_smooth_path_alone_fits_a_constant_1mm_offset(face_model):
    torch.manual_seed(1)
    dec = _tiny_decoder(face_model, resolution=64, max_mm=5.0, coarse_resolution=16)
    codes = _codes(dec, 8)
    opt = torch.optim.Adam(dec.coarse.parameters(), lr=0.01)  # only the smooth path learns
    for _ in range(100):
        opt.zero_grad()
        smooth_mm = 1e3 * dec.max_m * torch.tanh(dec.smooth(*codes))  # the fine path stays at zero
        (smooth_mm - 1.0).square().mean().backward()
        opt.step()
    with torch.no_grad():
        err_mm = (dec(*codes) * 1e3 - 1.0).abs().max().item()
    assert err_mm < 0.02


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*will not be used.*:UserWarning")  # one shared Dim
def test_onnx_export_with_dynamic_batch_matches_pytorch(tmp_path, face_model):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    dec = _tiny_decoder(face_model, resolution=32, coarse_resolution=8).eval()
    with torch.no_grad():
        dec.coarse.weight.normal_(0.0, 0.1)
        dec.fine_output.weight.normal_(0.0, 0.1)
    names = ["detail", "expression", "jaw_pose"]
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "displacement.onnx"
    torch.onnx.export(dec, _codes(dec, 2), path, dynamo=True, opset_version=18, input_names=names,
                      output_names=["displacement"], dynamic_shapes={n: {0: batch} for n in names})  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        codes = _codes(dec, batch_size)
        with torch.no_grad():
            expected_mm = dec(*codes).numpy() * 1e3
        (got,) = session.run(None, {n: c.numpy() for n, c in zip(names, codes, strict=True)})
        assert got.shape == expected_mm.shape and np.abs(expected_mm).max() > 0.1
        assert np.abs(got * 1e3 - expected_mm).max() <= 1e-4  # millimetres


# ---------------------------------------------------------------------------------------------- regularisers
def test_regularisers_on_hand_computed_maps():
    d = torch.zeros(1, 1, 4, 4)
    d[0, 0, 1, 1] = 1.0
    # interior Laplacians: (1,1) → −4, (1,2) → 1, (2,1) → 1, (2,2) → 0
    assert displacement_smoothness(d).item() == pytest.approx((16 + 1 + 1 + 0) / 4)
    mask = torch.ones(4, 4)
    mask[2, 2] = 0  # only (1,1) keeps itself and its 4 neighbours valid
    assert displacement_smoothness(d, mask).item() == pytest.approx(16.0)
    # gradient: 2 horizontal + 2 vertical unit differences among 12 + 12 neighbour pairs
    assert displacement_smoothness(d, kind="gradient").item() == pytest.approx(4 / 24)
    # linear ramps and constants are free under the Laplacian
    i, j = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    assert displacement_smoothness((2 * i + 3 * j + 7)[None, None]).item() == 0.0
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    assert displacement_magnitude(m).item() == pytest.approx(7.5)
    assert displacement_magnitude(m, torch.tensor([[1, 0], [0, 1]])).item() == pytest.approx(8.5)
    both = torch.cat([m, 2 * m])  # batch of 2, mask broadcast: (1 + 16 + 4 + 64) / 4
    assert displacement_magnitude(both, torch.tensor([[1, 0], [0, 1]])[None, None]).item() == pytest.approx(85 / 4)
    with pytest.raises(ValueError, match="no valid"):
        displacement_magnitude(m, torch.zeros(2, 2))


def test_uv_texel_mask(face_model):
    any_ = uv_texel_mask(face_model, 64)
    all_ = uv_texel_mask(face_model, 64, require="all")
    assert any_.shape == (1, 1, 64, 64) and torch.all(all_ <= any_)
    assert 0.5 < all_.mean().item() < any_.mean().item() < 1.0


# ---------------------------------------------------------------------------------------------- detailed mesh
@pytest.mark.parametrize("resolution", [64, 96, 256])
def test_detailed_vertices_match_service_geometry(face_model, resolution):
    arrays = face_model.arrays
    rng = np.random.default_rng(resolution)
    shape = torch.from_numpy(arrays.sample_shape(rng, 2))
    pose = torch.zeros(2, len(arrays.joint_names), 3)
    pose[:, 0, 1], pose[:, 2, 0] = 0.3, 0.2  # turned head, open jaw
    verts = face_model(shape, torch.rand(2, arrays.n_expr) * 0.3, pose)
    disp = _smooth_map(2, 48, 2e-3, seed=resolution)  # map resolution ≠ grid resolution on purpose
    mesh = DetailedMesh(face_model, resolution)
    out = mesh(verts, disp)
    assert out.shape == (2, mesh.n_points, 3)
    for b in range(2):
        ref = geo.detailed_mesh(arrays, verts[b].double().numpy(), disp[b, 0].double().numpy(), resolution)
        assert np.abs(out[b].numpy() - ref.positions[: mesh.n_points]).max() < 1e-5
        assert np.array_equal(mesh.point_faces.numpy(), ref.faces[: len(mesh.point_faces)])
    coarse = detailed_vertices(verts, None, mesh)
    ref0 = geo.detailed_mesh(arrays, verts[0].double().numpy(), None, resolution)
    assert np.abs(coarse[0].numpy() - ref0.positions[: mesh.n_points]).max() < 1e-5


def test_displacement_map_orientation_row0_is_v1(face_model):
    mesh = UVGrid(face_model, 64)
    verts = face_model()
    disp = torch.zeros(1, 1, 32, 32)
    disp[:, :, :8] = 2e-3  # top quarter of the image = v > 0.75
    offset = (mesh(verts, disp) - mesh(verts)).norm(dim=-1)[0]
    v = mesh.uv[:, 1]
    assert torch.allclose(offset[v > 0.78], torch.tensor(2e-3), atol=1e-6)
    assert torch.all(offset[v < 0.72] < 1e-9)


def test_gradients_flow_to_displacement_and_vertices(face_model):
    mesh = UVGrid(face_model, 32)
    verts = face_model(torch.randn(1, face_model.n_shape)).requires_grad_(True)
    disp = _smooth_map(1, 32, 1e-3, seed=0).requires_grad_(True)
    (mesh(verts, disp).square().sum() + mesh.normal_map(verts, disp).sum()).backward()
    for t in (verts, disp):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_detail_normal_map_spaces(face_model):
    mesh = UVGrid(face_model, 64)
    verts = face_model()
    valid = mesh.texel_mask[0, 0].bool()
    flat = mesh.normal_map(verts, torch.zeros(1, 1, 64, 64))
    assert flat.shape == (1, 3, 64, 64)
    assert torch.allclose(flat[0, :, valid], torch.tensor([[0.0], [0.0], [1.0]]), atol=1e-6)
    assert torch.all(flat[0, 2, ~valid] == 1)
    # displacement growing with u tilts the tangent-space normal towards −u (n ∝ (−∂d/∂u, −∂d/∂v, 1))
    ramp_u = torch.linspace(-1, 1, 64).expand(1, 1, 64, 64) * 5e-3
    tilt = mesh.normal_map(verts, ramp_u)[0][:, valid].mean(1)
    assert tilt[0] < -0.005 and tilt[1].abs() < 0.1 * tilt[0].abs()
    ramp_v = ramp_u.transpose(-1, -2).flip(-2)  # growing with v (towards row 0)
    tilt = mesh.normal_map(verts, ramp_v)[0][:, valid].mean(1)
    assert tilt[1] < -0.005 and tilt[0].abs() < 0.1 * tilt[1].abs()
    # world space: unit normals that agree with the coarse vertex normals for a flat map
    world = mesh.normal_map(verts, torch.zeros(1, 1, 64, 64), space="world")[0][:, valid]
    assert torch.allclose(world.norm(dim=0), torch.ones(()), atol=1e-5)
    vn = face_model.vertex_normals(verts)
    coarse_n = F.normalize((vn[:, mesh.tri] * mesh.bary[None, :, :, None]).sum(2), dim=-1)[0]
    node_n = torch.zeros(65 * 65, 3).index_copy(0, mesh.node, coarse_n).view(65, 65, 3)
    texel_n = F.normalize(node_n[:-1, :-1] + node_n[:-1, 1:] + node_n[1:, :-1] + node_n[1:, 1:], dim=-1)
    assert (world * texel_n[valid].T).sum(0).median() > 0.99
