"""StyleGAN2 (pure PyTorch): shapes, determinism, truncation, modulated conv, NVlabs names, ONNX, D, overfit."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    MinibatchStdLayer,
    downsample2d,
    mix_styles,
    modulated_conv2d,
    sample_mixing_cutoff,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

Z_DIM = W_DIM = 32
TINY_SYNTHESIS = {"channel_base": 256, "channel_max": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_generator(resolution: int = 16, seed: int = 0, c_dim: int = 0, **synthesis) -> Generator:
    torch.manual_seed(seed)
    return Generator(Z_DIM, c_dim, W_DIM, resolution, 3, {"num_layers": 2}, TINY_SYNTHESIS | synthesis).eval()


def tiny_discriminator(resolution: int = 16, seed: int = 0, c_dim: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim, resolution, 3, channel_base=256, channel_max=32, mapping_kwargs={"num_layers": 2})


def set_noise_strength(G: Generator, value: float) -> None:
    """noise_strength starts at 0 (as in NVlabs); make the noise visible."""
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(value)


# ----------------------------------------------------------------------------------------------------------
# Shapes, determinism, truncation


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_shapes_and_dtypes_across_resolutions(resolution: int) -> None:
    G = tiny_generator(resolution)
    D = tiny_discriminator(resolution)
    z = torch.randn(2, Z_DIM)
    ws = G.mapping(z)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2
    assert ws.shape == (2, G.num_ws, W_DIM) and ws.dtype == torch.float32
    with torch.no_grad():
        img = G(z)
    assert img.shape == (2, 3, resolution, resolution) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert D(img).shape == (2, 1)


def test_channel_widths_follow_channel_base() -> None:
    G = Generator(512, 0, 512, 256, 3, {}, {"channel_base": 16384, "channel_max": 512})
    widths = {res: getattr(G.synthesis, f"b{res}").conv1.weight.shape[0] for res in G.synthesis.block_resolutions}
    assert widths == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}


def test_const_noise_is_deterministic_and_seeded_models_are_identical() -> None:
    G1, G2 = tiny_generator(seed=3), tiny_generator(seed=3)
    set_noise_strength(G1, 0.3)
    set_noise_strength(G2, 0.3)
    z = torch.randn(2, Z_DIM, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b, c = G1(z, noise_mode="const"), G1(z, noise_mode="const"), G2(z, noise_mode="const")
    assert torch.equal(a, b) and torch.equal(a, c)


def test_random_noise_follows_the_explicit_generator() -> None:
    G = tiny_generator()
    set_noise_strength(G, 0.3)
    z = torch.randn(2, Z_DIM)
    with torch.no_grad():
        a = G(z, noise_mode="random", generator=torch.Generator().manual_seed(1))
        b = G(z, noise_mode="random", generator=torch.Generator().manual_seed(1))
        c = G(z, noise_mode="random", generator=torch.Generator().manual_seed(2))
        d = G(z, noise_mode="none")
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3 and (a - d).abs().max() > 1e-3
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        G(z, noise_mode="random")
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="bogus")


def test_truncation_psi_zero_gives_the_w_avg_output() -> None:
    G = tiny_generator()
    G.mean_w(n_samples=256)
    assert G.mapping.w_avg.abs().sum() > 0
    z = torch.randn(3, Z_DIM)
    ws = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws), atol=1e-6)
    with torch.no_grad():
        img = G(z, truncation_psi=0.0)
        img_avg = G.synthesis(G.mapping.w_avg.expand(3, G.num_ws, -1))
    assert torch.allclose(img, img_avg, atol=1e-6)
    assert torch.allclose(img[0], img[2], atol=1e-6)  # every z collapses to the same face


def test_truncation_cutoff_and_psi() -> None:
    G = tiny_generator()
    G.mean_w(n_samples=256)
    z = torch.randn(2, Z_DIM)
    full = G.mapping(z)
    ws = G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    w_avg = G.mapping.w_avg
    assert torch.allclose(ws[:, :3], w_avg + 0.5 * (full[:, :3] - w_avg), atol=1e-6)
    assert torch.equal(ws[:, 3:], full[:, 3:])


def test_mean_w_uses_n_samples_and_is_reproducible() -> None:
    G = tiny_generator()
    got = G.mean_w(n_samples=1000, generator=torch.Generator().manual_seed(5), batch_size=300)
    z = torch.randn(1000, Z_DIM, generator=torch.Generator().manual_seed(5))
    expected = G.mapping(z)[:, 0].mean(dim=0)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(G.mapping.w_avg, got)
    assert torch.equal(G.mean_w(n_samples=64), G.mean_w(n_samples=64))  # default generator is seeded


def test_w_avg_tracks_only_when_asked() -> None:
    G = tiny_generator()
    z = torch.randn(8, Z_DIM)
    G.mapping(z)
    G.train()(z)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    w = G.mapping(z, update_emas=True)[:, 0].mean(dim=0)
    assert torch.allclose(G.mapping.w_avg, 0.005 * w, atol=1e-6)  # lerp(0 → mean, 1 − 0.995)


def test_style_mixing_helper() -> None:
    a, b = torch.zeros(4, 6, 2), torch.ones(4, 6, 2)
    assert mix_styles(a, b, 2)[:, :2].sum() == 0 and mix_styles(a, b, 2)[:, 2:].min() == 1
    mixed = mix_styles(a, b, torch.tensor([1, 3, 6, 6]))
    assert mixed[:, :, 0].tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0] * 6, [0] * 6]
    cut = sample_mixing_cutoff(6, 1000, prob=0.5, generator=torch.Generator().manual_seed(0))
    assert cut.min() >= 1 and cut.max() <= 6 and 0.3 < (cut == 6).float().mean() < 0.7


# ----------------------------------------------------------------------------------------------------------
# Modulated convolution


def reference_modulated_conv(x, weight, styles, *, up, down, demodulate, flip_weight, f):
    """Per-sample weights, then zero-insertion / FIR / F.conv2d written out plainly (3×3 kernel, padding 1)."""
    out = []
    for b in range(x.shape[0]):
        w = weight * styles[b][None, :, None, None]
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        if not flip_weight:
            w = w.flip([2, 3])  # true convolution
        xb = x[b : b + 1]
        c, h, wd = xb.shape[1:]
        if up == 2:  # zero insertion, pad (3, 2), FIR × 4 (keeps DC), valid 3×3 conv → 2H
            z = torch.zeros(1, c, 2 * h, 2 * wd)
            z[:, :, ::2, ::2] = xb
            z = F.pad(z, [3, 2, 3, 2])
            z = F.conv2d(z, (f * 4).flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)
            out.append(F.conv2d(z, w))
        elif down == 2:  # pad 2, FIR, strided valid 3×3 conv → H/2
            z = F.pad(xb, [2, 2, 2, 2])
            z = F.conv2d(z, f.flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)
            out.append(F.conv2d(z, w, stride=2))
        else:
            out.append(F.conv2d(xb, w, padding=1))
    return torch.cat(out)


def test_fir_resampling_matches_reference() -> None:
    x = torch.randn(2, 3, 6, 6)
    f = setup_filter([1, 3, 3, 1])
    depthwise = (f.flip([0, 1]))[None, None].repeat(3, 1, 1, 1)
    z = torch.zeros(2, 3, 12, 12)
    z[:, :, ::2, ::2] = x  # NVlabs upsample2d: zero insertion, pad (2, 1), FIR × 4
    up_ref = F.conv2d(F.pad(z, [2, 1, 2, 1]), depthwise * 4, groups=3)
    assert (upsample2d(x, f) - up_ref).abs().max() < 1e-6
    down_ref = F.conv2d(F.pad(x, [1, 1, 1, 1]), depthwise, groups=3)[:, :, ::2, ::2]  # downsample2d: pad (1, 1)
    assert (downsample2d(x, f) - down_ref).abs().max() < 1e-6
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(upsample2d(ones, f)[:, :, 2:-2, 2:-2], torch.ones(1, 1, 12, 12))  # DC kept
    assert torch.allclose(upfirdn2d(x, None, padding=(-1, -2, 0, -1)), x[:, :, :-1, 1:-2])  # negative = crop


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    ("up", "down", "demodulate", "flip_weight"),
    [(1, 1, True, True), (1, 1, False, True), (2, 1, True, False), (2, 1, False, False), (2, 1, True, True),
     (1, 2, True, True)],
)  # fmt: skip
def test_modulated_conv_matches_per_sample_reference(up, down, demodulate, flip_weight, fused) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 8, 8, generator=g)
    weight = torch.randn(5, 6, 3, 3, generator=g) / math.sqrt(6 * 9)
    styles = torch.randn(3, 6, generator=g) + 1.0
    f = setup_filter([1, 3, 3, 1])
    got = modulated_conv2d(x, weight, styles, up=up, down=down, padding=1, resample_filter=f,
                           demodulate=demodulate, flip_weight=flip_weight, fused=fused)  # fmt: skip
    ref = reference_modulated_conv(x, weight, styles, up=up, down=down, demodulate=demodulate,
                                   flip_weight=flip_weight, f=f)  # fmt: skip
    assert got.shape == (3, 5, 8 * up // down, 8 * up // down)
    assert (got - ref).abs().max() < 1e-5


def test_blocks_that_draw_nothing_only_upsample() -> None:
    """SynthesisNetwork(draw_until=R): a generator grown from 8² (training.albedo.grow_from zeroes the new blocks'
    torgb) and not trained since draws nothing above 8²; skipping those blocks' convolutions (and noise) gives the
    same image, within float rounding (their upsamplings are two matrix products). A block whose torgb draws again
    (its bias alone) is found."""
    G = tiny_generator(32, mean_image=True)
    set_noise_strength(G, 0.3)
    syn = G.synthesis
    assert syn.last_drawing_resolution() == 32
    with torch.no_grad():
        for res in (16, 32):
            getattr(syn, f"b{res}").torgb.weight.zero_()
            getattr(syn, f"b{res}").torgb.bias.zero_()
        syn.img_bias.normal_()  # a learned mean image at 32²: added after the skipped blocks
        assert syn.last_drawing_resolution() == 8
        ws = G.mapping(torch.randn(3, Z_DIM, generator=torch.Generator().manual_seed(1)), None)
        full = syn(ws)
        assert torch.allclose(syn(ws, draw_until=8), full, atol=1e-6)
        assert not torch.allclose(syn(ws, draw_until=4), full, atol=1e-3)  # b8 draws
        with pytest.raises(ValueError, match="draw_until"):
            syn(ws, draw_until=12)  # not a block's resolution
        syn.b32.torgb.bias.fill_(0.1)
        assert syn.last_drawing_resolution() == 32
        assert not torch.allclose(syn(ws, draw_until=8), syn(ws))


def test_upsampling_matrix_is_upsample2d() -> None:
    """ops.upsampling_matrix: M @ x @ M.T is upsample2d(x), borders included, for the default filter and others."""
    from models.stylegan2.ops import upsampling_matrix

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for taps in ((1, 3, 3, 1), (1, 2, 1), (1, 1)):
        f = setup_filter(taps)
        m = upsampling_matrix(f, 16)
        assert m.shape == (32, 16)
        assert torch.allclose(m @ x @ m.T, upsample2d(x, f), atol=1e-6)
    assert upsampling_matrix(setup_filter((1, 3, 3, 1)), 16)[0, 0] == 0.75  # the zero-padded border


def test_fused_equals_non_fused_for_the_whole_generator() -> None:
    G = tiny_generator(32)
    set_noise_strength(G, 0.2)
    z = torch.randn(3, Z_DIM)
    with torch.no_grad():
        fused = G(z, fused_modconv=True)
        split = G(z, fused_modconv=False)
        assert not G.fused_modconv and torch.equal(G(z), split)  # non-fused by default (exportable)
        G.set_fused_modconv(True)
        assert G.fused_modconv and torch.equal(G(z), fused)
    assert (fused - split).abs().max() < 1e-5 * max(1.0, fused.abs().max().item())


# ----------------------------------------------------------------------------------------------------------
# NVlabs state-dict layout


def nvlabs_generator_keys(res_max: int, channels: dict[int, int], w_dim: int, z_dim: int, mapping_layers: int):
    """The NVlabs stylegan2-ada-pytorch Generator state dict ('skip', no label), written out from its layout."""
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(mapping_layers):
        keys[f"mapping.fc{i}.weight"] = (w_dim, z_dim if i == 0 else w_dim)
        keys[f"mapping.fc{i}.bias"] = (w_dim,)
    keys["mapping.w_avg"] = (w_dim,)
    res = 4
    while res <= res_max:
        b = f"synthesis.b{res}"
        keys[f"{b}.resample_filter"] = (4, 4)
        layers = {"conv1": (channels[res], channels[res])}
        if res == 4:
            keys[f"{b}.const"] = (channels[4], 4, 4)
        else:
            layers["conv0"] = (channels[res], channels[res // 2])
        for name, (cout, cin) in layers.items():
            keys |= {f"{b}.{name}.weight": (cout, cin, 3, 3), f"{b}.{name}.bias": (cout,),
                     f"{b}.{name}.noise_strength": (), f"{b}.{name}.noise_const": (res, res),
                     f"{b}.{name}.resample_filter": (4, 4), f"{b}.{name}.affine.weight": (cin, w_dim),
                     f"{b}.{name}.affine.bias": (cin,)}  # fmt: skip
        c = channels[res]
        keys |= {f"{b}.torgb.weight": (3, c, 1, 1), f"{b}.torgb.bias": (3,),
                 f"{b}.torgb.affine.weight": (c, w_dim), f"{b}.torgb.affine.bias": (c,)}  # fmt: skip
        res *= 2
    return keys


def test_state_dict_matches_nvlabs_layout_64px() -> None:
    torch.manual_seed(0)
    G = Generator(32, 0, 32, 64, 3, {"num_layers": 2}, {"channel_base": 512, "channel_max": 32})
    D = Discriminator(0, 64, 3, channel_base=512, channel_max=32)
    g_sd = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    d_sd = {k: tuple(v.shape) for k, v in D.state_dict().items()}

    # A few keys spelled out literally, as they appear in official pickles.
    for key, shape in {
        "mapping.fc0.weight": (32, 32), "mapping.fc1.bias": (32,), "mapping.w_avg": (32,),
        "synthesis.b4.const": (32, 4, 4), "synthesis.b4.resample_filter": (4, 4),
        "synthesis.b4.conv1.affine.weight": (32, 32), "synthesis.b4.conv1.affine.bias": (32,),
        "synthesis.b4.conv1.weight": (32, 32, 3, 3), "synthesis.b4.conv1.noise_strength": (),
        "synthesis.b4.conv1.noise_const": (4, 4), "synthesis.b8.conv0.noise_const": (8, 8),
        "synthesis.b8.conv0.resample_filter": (4, 4), "synthesis.b8.torgb.weight": (3, 32, 1, 1),
        "synthesis.b64.conv0.weight": (8, 16, 3, 3), "synthesis.b64.torgb.affine.weight": (8, 32),
    }.items():  # fmt: skip
        assert g_sd[key] == shape, key
    assert "synthesis.b4.conv0.weight" not in g_sd
    channels = {4: 32, 8: 32, 16: 32, 32: 16, 64: 8}
    assert g_sd == nvlabs_generator_keys(64, channels, 32, 32, 2)

    for key, shape in {
        "b64.resample_filter": (4, 4), "b64.fromrgb.weight": (8, 3, 1, 1), "b64.fromrgb.bias": (8,),
        "b64.conv0.weight": (8, 8, 3, 3), "b64.conv1.weight": (16, 8, 3, 3), "b64.skip.weight": (16, 8, 1, 1),
        "b64.skip.resample_filter": (4, 4), "b8.conv1.bias": (32,), "b4.conv.weight": (32, 33, 3, 3),
        "b4.fc.weight": (32, 32 * 16), "b4.fc.bias": (32,), "b4.out.weight": (1, 32), "b4.out.bias": (1,),
    }.items():  # fmt: skip
        assert d_sd[key] == shape, key
    assert "b64.skip.bias" not in d_sd and "b32.fromrgb.weight" not in d_sd
    assert {k.split(".")[0] for k in d_sd} == {"b64", "b32", "b16", "b8", "b4"}
    assert isinstance(D.b4.mbstd, MinibatchStdLayer)  # parameter-free, as in NVlabs
    assert (D.b4.mbstd.group_size, D.b4.mbstd.num_channels) == (4, 1)
    assert torch.allclose(G.synthesis.b8.resample_filter, torch.outer(*[torch.tensor([1.0, 3, 3, 1]) / 8] * 2))


def test_conditional_models_have_label_embeddings() -> None:
    G = tiny_generator(c_dim=5)
    D = tiny_discriminator(c_dim=5)
    assert G.state_dict()["mapping.embed.weight"].shape == (W_DIM, 5)
    d_sd = D.state_dict()
    assert d_sd["mapping.embed.weight"].shape == (32, 5) and "mapping.w_avg" not in d_sd
    c = F.one_hot(torch.tensor([0, 4]), 5).float()
    img = G(torch.randn(2, Z_DIM), c)
    assert D(img, c).shape == (2, 1)
    with pytest.raises(ValueError, match="c must be"):
        G(torch.randn(2, Z_DIM))


def test_configs_round_trip_through_json() -> None:
    G = tiny_generator(32, conv_clamp=256)
    cfg = GeneratorConfig.from_dict(json.loads(json.dumps(G.config.to_dict())))
    assert cfg == G.config and cfg.synthesis.conv_clamp == 256 and cfg.mapping.num_layers == 2
    G2 = Generator.from_config(cfg)
    assert {k: v.shape for k, v in G2.state_dict().items()} == {k: v.shape for k, v in G.state_dict().items()}
    D = tiny_discriminator(32)
    dcfg = DiscriminatorConfig.from_dict(json.loads(json.dumps(D.config.to_dict())))
    assert dcfg == D.config and Discriminator.from_config(dcfg).config == dcfg
    with pytest.raises(ValueError, match="unknown keys"):
        GeneratorConfig.from_dict(G.config.to_dict() | {"bogus": 1})
    with pytest.raises(ValueError, match="format_version"):
        GeneratorConfig.from_dict(G.config.to_dict() | {"format_version": 99})
    with pytest.raises(ValueError, match="unknown keys"):
        Generator(32, 0, 32, 16, 3, {"num_layer": 2})
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(img_resolution=100)


# ----------------------------------------------------------------------------------------------------------
# ONNX export (non-fused, dynamic batch)


class _Mapping(torch.nn.Module):
    def __init__(self, G: Generator) -> None:
        super().__init__()
        self.mapping = G.mapping

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)


class _Synthesis(torch.nn.Module):
    def __init__(self, G: Generator) -> None:
        super().__init__()
        self.synthesis = G.synthesis

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws, noise_mode="const")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside torch.export, not by our code
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_with_dynamic_batch_matches_pytorch(tmp_path, dynamo: bool) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime")
    G = tiny_generator(32).set_fused_modconv(False)  # DESIGN §5: the fused form cannot have a dynamic batch
    set_noise_strength(G, 0.2)
    G.mean_w(n_samples=256)
    graphs = {"mapping": (_Mapping(G).eval(), "z"), "synthesis": (_Synthesis(G).eval(), "ws")}
    for name, (module, input_name) in graphs.items():
        example = torch.randn(2, Z_DIM) if name == "mapping" else torch.randn(2, G.num_ws, W_DIM)
        path = tmp_path / f"{name}.onnx"
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(module, (example,), path, dynamo=True, opset_version=18, input_names=[input_name],
                              output_names=["out"], dynamic_shapes={input_name: {0: batch}})  # fmt: skip
        else:
            with warnings.catch_warnings():  # the TorchScript exporter is deprecated but still works
                warnings.simplefilter("ignore")
                axes = {input_name: {0: "batch"}, "out": {0: "batch"}}
                torch.onnx.export(module, (example,), path, dynamo=False, opset_version=17, input_names=[input_name],
                                  output_names=["out"], dynamic_axes=axes)  # fmt: skip
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch_size in (1, 3):
            x = torch.randn(batch_size, *example.shape[1:])
            with torch.no_grad():
                expected = module(x).numpy()
            (got,) = session.run(None, {input_name: x.numpy()})
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() <= 1e-4, (name, batch_size)


# ----------------------------------------------------------------------------------------------------------
# Discriminator and a short adversarial run


def test_discriminator_output_depends_on_its_input() -> None:
    D = tiny_discriminator(32)
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    logits = D(img)
    assert logits.shape == (4, 1)
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)  # R1 needs the double backward
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    grad.square().sum().backward()
    assert D.b32.fromrgb.weight.grad is not None
    with pytest.raises(ValueError, match="img must be"):
        D(torch.randn(4, 3, 16, 16))


def test_minibatch_std_layer() -> None:
    x = torch.randn(6, 4, 3, 3)
    y = MinibatchStdLayer(group_size=None)(x)
    expected = (x.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    assert y.shape == (6, 5, 3, 3) and torch.allclose(y[:, 4], expected.expand(6, 3, 3))
    y2 = MinibatchStdLayer(group_size=2)(x)  # groups are samples {j, j + 3}
    assert torch.allclose(y2[0, 4, 0, 0], (x[[0, 3]].var(dim=0, unbiased=False) + 1e-8).sqrt().mean())
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStdLayer(group_size=4)(x)


def test_overfit_smoke_g_and_d_with_non_saturating_loss() -> None:
    G, D = tiny_generator(16, seed=1).train(), tiny_discriminator(16, seed=2)
    reals = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    noise = torch.Generator().manual_seed(0)
    d_losses = []
    for _ in range(30):
        z = torch.randn(8, Z_DIM, generator=noise)
        fake = G(z, update_emas=True, noise_mode="random", generator=noise)
        d_loss = F.softplus(D(fake.detach())).mean() + F.softplus(-D(reals)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-D(G(z, noise_mode="random", generator=noise))).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_losses.append(d_loss.item())
    assert all(math.isfinite(v) for v in d_losses)
    print("D losses", [round(v, 3) for v in d_losses])
    assert np.mean(d_losses[-5:]) < d_losses[0] - 0.1, d_losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forms_agree_and_noise_uses_a_cuda_generator() -> None:
    G = tiny_generator(32).cuda()
    set_noise_strength(G, 0.2)
    D = tiny_discriminator(32).cuda()
    z = torch.randn(3, Z_DIM, device="cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare the two forms at full float32 precision
    try:
        with torch.no_grad():
            fused, split = G(z, fused_modconv=True), G(z, fused_modconv=False)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    with torch.no_grad():
        a = G(z, noise_mode="random", generator=torch.Generator(device="cuda").manual_seed(0))
        b = G(z, noise_mode="random", generator=torch.Generator(device="cuda").manual_seed(0))
    assert (fused - split).abs().max() < 1e-4 and torch.equal(a, b)
    assert D(fused).shape == (3, 1) and G.mean_w(n_samples=128).device.type == "cuda"
