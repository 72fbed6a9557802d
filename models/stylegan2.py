"""StyleGAN2 in pure PyTorch: mapping, synthesis ('skip') and discriminator ('resnet').

No custom CUDA/C++ ops, so everything runs and exports to ONNX on CPU. The module tree and the
parameter/buffer names follow NVlabs ``stylegan2-ada-pytorch`` (``training/networks.py``), so the state dict
of an official checkpoint copies over key by key (``models/stylegan2_pickle.py`` does that):

* ``Generator``: ``mapping`` (:class:`MappingNetwork`: ``fc0 … fc{N-1}``, ``w_avg``, optional ``embed``) and
  ``synthesis`` (:class:`SynthesisNetwork`: blocks ``b4, b8, …``; ``b4.const``; ``b{res}.conv0`` (up),
  ``.conv1``, ``.torgb``; every :class:`SynthesisLayer` holds ``affine``, ``weight``, ``bias``,
  ``noise_strength``, ``noise_const``, ``resample_filter``).
* ``Discriminator``: blocks ``b{res}`` (``fromrgb`` in the first, ``conv0``, ``conv1``, ``skip``) and the
  epilogue ``b4`` (``mbstd``, ``conv``, ``fc``, ``out``); ``mapping`` when conditioned.

Conventions (DESIGN §7): functional core (``upfirdn2d``, ``conv2d_resample``, ``modulated_conv2d``,
``bias_act`` are plain functions the layers call), equalised learning rate (weights stored at unit scale,
the gain ``1/sqrt(fan_in)`` applied at run time), no randomness in ``forward`` other than through an explicit
``torch.Generator``, no training-only logic inside modules (style mixing is :func:`mix_styles`).

``modulated_conv2d`` has two numerically equivalent forms: *fused* (per-sample weights, grouped convolution
with ``groups = batch``) and *non-fused* (scale the input by the styles, one shared convolution, scale the
output by the demodulation coefficients). Only the non-fused form exports to ONNX with a dynamic batch axis
(DESIGN §5); switch with :meth:`Generator.set_fused_modconv` or the ``fused_modconv`` forward argument.
The default is non-fused: it exports, and on CPU it trained faster in every run (64² G+D step, batch 8:
13.6–15.2 vs 3.2–11.6 images/s on a shared 2-core CPU, ``benchmarks/stylegan2_speed.py``), with no consistent
inference difference; NVlabs likewise trains non-fused on GPU and uses the fused form only for fp32 inference.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

CONFIG_FORMAT_VERSION = 1
NoiseMode = Literal["random", "const", "none"]
Padding = int | Sequence[int]

_SQRT2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)
# name -> (function, default gain). Gains keep the signal magnitude (NVlabs ``bias_act`` defaults).
_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, _SQRT2),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), _SQRT2),
}
_NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------------------------------------
# Functional core


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` to unit root-mean-square along ``dim``.

    Args:
        x: (B, D) latent codes.
        dim: dimension to normalise over.
        eps: added to the mean square.

    Returns:
        Tensor of the same shape.
    """
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def setup_filter(taps: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A normalised 2-D FIR filter from 1-D taps (outer product) or a 2-D array.

    Args:
        taps: (K,) separable taps, e.g. ``(1, 3, 3, 1)``, or (Kh, Kw).

    Returns:
        (Kh, Kw) float32 filter summing to 1 (what NVlabs stores as ``resample_filter``).
    """
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    if f.ndim != 2 or f.numel() == 0:
        raise ValueError(f"resample filter must be 1-D taps or a 2-D array, got shape {tuple(f.shape)}")
    return f / f.sum()


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """``p`` | ``(px, py)`` | ``(px0, px1, py0, py1)`` → ``(px0, px1, py0, py1)``."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = [int(v) for v in padding]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding!r}")


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    gain: float = 1.0,
    flip_filter: bool = False,
) -> torch.Tensor:
    """Upsample (zero insertion), pad or crop, FIR-filter and downsample a batch of images.

    Same semantics as ``scipy.signal.upfirdn`` per axis and NVlabs ``upfirdn2d``: 1. insert ``up - 1`` zeros
    after every pixel; 2. pad by ``padding`` (negative values crop); 3. convolve with ``f`` keeping only the
    outputs whose footprint lies inside the padded image; 4. keep every ``down``-th pixel.

    Args:
        x: (B, C, H, W) images.
        f: (Kh, Kw) filter, or None for the identity.
        up: integer upsampling factor.
        down: integer downsampling factor.
        padding: padding of the upsampled image, ``p`` | ``(px, py)`` | ``(px0, px1, py0, py1)``.
        gain: overall scale of the result (``up**2`` keeps the DC level when upsampling).
        flip_filter: False = convolution, True = correlation.

    Returns:
        (B, C, H', W') with ``H' = (H * up + py0 + py1 - Kh) // down + 1``, likewise W'.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects (B, C, H, W), got shape {tuple(x.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    px0, px1, py0, py1 = _parse_padding(padding)
    channels, height, width = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])  # static under tracing
    if up > 1:
        x = x.reshape(-1, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(-1, channels, height * up, width * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(px0, px1, py0, py1) < 0:
        x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    if f is None:
        x = x * gain if gain != 1 else x
        return x[:, :, ::down, ::down] if down > 1 else x
    if f.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D filter, got shape {tuple(f.shape)}")
    f = f.to(x.dtype) * gain
    if not flip_filter:
        f = f.flip([0, 1])
    weight = f[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(x, weight, stride=down, groups=channels)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """FIR upsampling that keeps the DC level: (B, C, H, W) → (B, C, H·up, W·up)."""
    fh, fw = f.shape
    padding = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=padding, gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """FIR downsampling: (B, C, H, W) → (B, C, H/down, W/down)."""
    fh, fw = f.shape
    padding = ((fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2)
    return upfirdn2d(x, f, down=down, padding=padding)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution with optional FIR up- or downsampling; padding is applied once, up front.

    Upsampling runs as a strided transposed convolution followed by the FIR filter; downsampling as the FIR
    filter followed by a strided convolution (1×1 kernels: filter-and-decimate, then convolve).

    Args:
        x: (B, C_in, H, W).
        w: (C_out, C_in // groups, Kh, Kw).
        f: (Fh, Fw) resampling filter (from :func:`setup_filter`); None = identity.
        up: upsampling factor.
        down: downsampling factor (not together with ``up``).
        padding: padding with respect to the upsampled image.
        groups: convolution groups.
        flip_weight: True = correlation (like ``F.conv2d``), False = true convolution.

    Returns:
        (B, C_out, H', W'); for ``padding = K // 2``: ``H' = H * up // down``.
    """
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample supports up- or downsampling, not both at once")
    out_channels, in_per_group, kh, kw = w.shape
    fh, fw = (1, 1) if f is None else (int(f.shape[0]), int(f.shape[1]))
    px0, px1, py0, py1 = _parse_padding(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    kernel_1x1 = kh == 1 and kw == 1

    if up > 1:
        # conv_transpose2d wants (C_in, C_out // groups, Kh, Kw); it convolves (no flip) by construction.
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        if flip_weight and not kernel_1x1:
            wt = wt.flip([2, 3])
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
        return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)

    if not flip_weight and not kernel_1x1:
        w = w.flip([2, 3])
    if down > 1:
        if kernel_1x1:
            x = upfirdn2d(x, f, down=down, padding=(px0, px1, py0, py1))
            return F.conv2d(x, w, groups=groups)
        x = upfirdn2d(x, f, padding=(px0, px1, py0, py1))
        return F.conv2d(x, w, stride=down, groups=groups)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=[py0, px0], groups=groups)
    x = upfirdn2d(x, None, padding=(px0, px1, py0, py1))
    return F.conv2d(x, w, groups=groups)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain)``, with the bias broadcast along dimension 1.

    Args:
        x: (B, C, ...) activations.
        b: (C,) bias or None.
        act: 'linear', 'relu' or 'lrelu' (slope 0.2).
        gain: output scale; None = the activation's default (sqrt(2) for relu/lrelu, 1 for linear).
        clamp: clamp the result to ±clamp; None = no clamping.

    Returns:
        Tensor of the shape of ``x``.
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}")
    fn, default_gain = _ACTIVATIONS[act]
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    x = fn(x)
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused: bool = False,
) -> torch.Tensor:
    """StyleGAN2 modulated (and optionally demodulated) convolution.

    ``w'[b,o,i] = weight[o,i] · styles[b,i]``, demodulated as ``w'' = w' / sqrt(Σ_i,k w'² + 1e-8)``.

    Args:
        x: (B, C_in, H, W) input.
        weight: (C_out, C_in, Kh, Kw) shared weight (already scaled, if at all).
        styles: (B, C_in) modulation coefficients.
        noise: optional noise added after (de)modulation, broadcastable to the output, e.g. (B, 1, H', W').
        up: upsampling factor.
        down: downsampling factor.
        padding: padding with respect to the upsampled image.
        resample_filter: (Fh, Fw) FIR filter for resampling.
        demodulate: apply weight demodulation.
        flip_weight: True = correlation, False = convolution (NVlabs uses False for the up-convolutions).
        fused: True = per-sample weights in one grouped convolution (``groups = B``); False = scale the input,
            one shared convolution, scale the output (exports to ONNX with a dynamic batch axis).

    Returns:
        (B, C_out, H', W').
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must be (B, {in_channels}, H, W), got {tuple(x.shape)}")
    if styles.ndim != 2 or styles.shape[1] != in_channels:
        raise ValueError(f"styles must be (B, {in_channels}), got {tuple(styles.shape)}")

    if x.dtype == torch.float16 and demodulate:  # pre-normalise to avoid fp16 overflow (scale-invariant)
        w_max = weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / w_max)
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    if not fused:
        x = x * styles.to(x.dtype)[:, :, None, None]
        x = conv2d_resample(
            x, weight.to(x.dtype), resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight
        )
        if demodulate:
            # Σ_i,k (weight[o,i,k] styles[b,i])² = Σ_i styles[b,i]² · Σ_k weight[o,i,k]²
            dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    w = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    x = x.reshape(1, -1, x.shape[2], x.shape[3])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(
        x, w.to(x.dtype), resample_filter, up=up, down=down, padding=padding, groups=batch, flip_weight=flip_weight
    )
    x = x.reshape(batch, out_channels, x.shape[2], x.shape[3])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def mix_styles(ws_a: torch.Tensor, ws_b: torch.Tensor, cutoff: int | torch.Tensor) -> torch.Tensor:
    """Style mixing (a training-side helper, never called by the modules).

    Args:
        ws_a: (B, num_ws, w_dim) styles for layers ``[0, cutoff)``.
        ws_b: (B, num_ws, w_dim) styles for layers ``[cutoff, num_ws)``.
        cutoff: an int for the whole batch, or (B,) int64 per sample; ``num_ws`` means no mixing.

    Returns:
        (B, num_ws, w_dim) mixed styles.
    """
    if ws_a.shape != ws_b.shape or ws_a.ndim != 3:
        raise ValueError(f"ws_a and ws_b must both be (B, num_ws, w_dim), got {tuple(ws_a.shape)}, {tuple(ws_b.shape)}")
    layer = torch.arange(ws_a.shape[1], device=ws_a.device)
    if isinstance(cutoff, int):
        mask = (layer < cutoff)[None, :, None]
    else:
        mask = (layer[None, :] < cutoff.to(ws_a.device)[:, None])[:, :, None]
    return torch.where(mask, ws_a, ws_b)


def sample_mixing_cutoff(
    num_ws: int,
    batch_size: int,
    prob: float = 0.9,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sample style-mixing cutoffs: uniform in ``[1, num_ws)`` with probability ``prob``, else ``num_ws``.

    Args:
        num_ws: number of style vectors of the synthesis network.
        batch_size: B.
        prob: mixing probability (StyleGAN2: 0.9).
        generator: RNG to draw from (on ``device``); None = torch's default generator.
        device: device of the result.

    Returns:
        (B,) int64 cutoffs for :func:`mix_styles`.
    """
    if num_ws < 2:
        return torch.full([batch_size], num_ws, dtype=torch.int64, device=device)
    cut = torch.randint(1, num_ws, [batch_size], generator=generator, device=device)
    mix = torch.rand([batch_size], generator=generator, device=device) < prob
    return torch.where(mix, cut, torch.full_like(cut, num_ws))


# ----------------------------------------------------------------------------------------------------------
# Hyperparameters


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}")


def _plain(value: Any) -> Any:
    """Dataclass fields → JSON-compatible values (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class MappingConfig:
    """Mapping-network hyperparameters (the keys of NVlabs ``mapping_kwargs``).

    Attributes:
        num_layers: fully connected layers (StyleGAN2: 8).
        embed_features: label-embedding width; None = w_dim.
        layer_features: hidden width; None = w_dim.
        activation: activation of the hidden layers.
        lr_multiplier: learning-rate multiplier of the mapping layers (StyleGAN2: 0.01).
        w_avg_beta: decay of the tracked W average; None = no ``w_avg`` (no truncation possible).
    """

    num_layers: int = 8
    embed_features: int | None = None
    layer_features: int | None = None
    activation: str = "lrelu"
    lr_multiplier: float = 0.01
    w_avg_beta: float | None = 0.995

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"mapping num_layers must be >= 1, got {self.num_layers}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown mapping activation {self.activation!r}")


@dataclass(frozen=True)
class SynthesisConfig:
    """Synthesis-network hyperparameters (the keys of NVlabs ``synthesis_kwargs``).

    Attributes:
        channel_base: channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: upper bound of the channels.
        num_fp16_res: accepted for checkpoint compatibility and stored; this implementation computes in the
            parameters' dtype (use ``torch.autocast`` for mixed precision).
        conv_clamp: clamp conv outputs to ±conv_clamp (NVlabs uses 256 with fp16); None = off.
        architecture: only 'skip' (StyleGAN2's generator).
        resample_filter: 1-D FIR taps for up-sampling.
        use_noise: per-layer noise inputs.
        activation: activation of the synthesis layers.
    """

    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None
    architecture: str = "skip"
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    use_noise: bool = True
    activation: str = "lrelu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "resample_filter", tuple(self.resample_filter))
        if self.architecture != "skip":
            raise ValueError(f"synthesis architecture {self.architecture!r} is not implemented; only 'skip'")
        if self.channel_base < 1 or self.channel_max < 1:
            raise ValueError("channel_base and channel_max must be positive")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown synthesis activation {self.activation!r}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild a :class:`Generator`; saved as JSON beside the safetensors weights.

    Attributes:
        z_dim: latent Z size (StyleGAN2: 512).
        c_dim: conditioning label size, 0 = unconditional.
        w_dim: intermediate latent W size.
        img_resolution: output resolution, a power of two (64–1024 in practice; ≥ 4 accepted).
        img_channels: output channels (3 for RGB albedo).
        mapping: mapping-network hyperparameters.
        synthesis: synthesis-network hyperparameters.
    """

    z_dim: int = 512
    c_dim: int = 0
    w_dim: int = 512
    img_resolution: int = 256
    img_channels: int = 3
    mapping: MappingConfig = field(default_factory=MappingConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)

    def __post_init__(self) -> None:
        r = self.img_resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {r}")
        if self.w_dim < 1 or self.z_dim < 0 or self.c_dim < 0 or self.img_channels < 1:
            raise ValueError("w_dim and img_channels must be positive, z_dim and c_dim non-negative")
        if self.z_dim == 0 and self.c_dim == 0:
            raise ValueError("a generator needs z_dim > 0 or c_dim > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict with ``format_version`` and ``kind``."""
        out = {"format_version": CONFIG_FORMAT_VERSION, "kind": "stylegan2.Generator"}
        out.update(_plain(dataclasses.asdict(self)))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Inverse of :meth:`to_dict`; unknown keys or another format version raise ``ValueError``."""
        data = dict(data)
        _check_format(data, "stylegan2.Generator")
        _check_keys(cls, data, "GeneratorConfig")
        mapping = data.pop("mapping", {})
        synthesis = data.pop("synthesis", {})
        _check_keys(MappingConfig, mapping, "GeneratorConfig.mapping")
        _check_keys(SynthesisConfig, synthesis, "GeneratorConfig.synthesis")
        return cls(**data, mapping=MappingConfig(**mapping), synthesis=SynthesisConfig(**synthesis))


@dataclass(frozen=True)
class EpilogueConfig:
    """Discriminator epilogue hyperparameters (NVlabs ``epilogue_kwargs``).

    Attributes:
        mbstd_group_size: minibatch-stddev group size; None = whole minibatch. The batch must be divisible by
            ``min(group_size, batch)``.
        mbstd_num_channels: stddev feature channels; 0 = no minibatch stddev.
        activation: activation of ``conv`` and ``fc``.
    """

    mbstd_group_size: int | None = 4
    mbstd_num_channels: int = 1
    activation: str = "lrelu"


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Everything needed to rebuild a :class:`Discriminator`.

    Attributes:
        c_dim: conditioning label size, 0 = unconditional.
        img_resolution: input resolution (power of two ≥ 8).
        img_channels: input channels.
        architecture: only 'resnet'.
        channel_base: channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: upper bound of the channels.
        num_fp16_res: stored for compatibility, not applied (see :class:`SynthesisConfig`).
        conv_clamp: clamp conv outputs; None = off.
        cmap_dim: width of the mapped label; None = channels at 4².
        activation: activation of the blocks.
        resample_filter: 1-D FIR taps for down-sampling.
        mapping: label-mapping hyperparameters (used when c_dim > 0; ``w_avg_beta`` is ignored).
        epilogue: epilogue hyperparameters.
    """

    c_dim: int = 0
    img_resolution: int = 256
    img_channels: int = 3
    architecture: str = "resnet"
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None
    cmap_dim: int | None = None
    activation: str = "lrelu"
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    epilogue: EpilogueConfig = field(default_factory=EpilogueConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resample_filter", tuple(self.resample_filter))
        r = self.img_resolution
        if r < 8 or r & (r - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {r}")
        if self.architecture != "resnet":
            raise ValueError(f"discriminator architecture {self.architecture!r} is not implemented; only 'resnet'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict with ``format_version`` and ``kind``."""
        out = {"format_version": CONFIG_FORMAT_VERSION, "kind": "stylegan2.Discriminator"}
        out.update(_plain(dataclasses.asdict(self)))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscriminatorConfig:
        """Inverse of :meth:`to_dict`; unknown keys or another format version raise ``ValueError``."""
        data = dict(data)
        _check_format(data, "stylegan2.Discriminator")
        _check_keys(cls, data, "DiscriminatorConfig")
        mapping = data.pop("mapping", {})
        epilogue = data.pop("epilogue", {})
        _check_keys(MappingConfig, mapping, "DiscriminatorConfig.mapping")
        _check_keys(EpilogueConfig, epilogue, "DiscriminatorConfig.epilogue")
        return cls(**data, mapping=MappingConfig(**mapping), epilogue=EpilogueConfig(**epilogue))


def _check_format(data: dict[str, Any], kind: str) -> None:
    version = data.pop("format_version", CONFIG_FORMAT_VERSION)
    got_kind = data.pop("kind", kind)
    if version != CONFIG_FORMAT_VERSION:
        raise ValueError(f"config format_version {version} is not supported (this code reads {CONFIG_FORMAT_VERSION})")
    if got_kind != kind:
        raise ValueError(f"config is for {got_kind!r}, expected {kind!r}")


def _as_config(cls: type, kwargs: Mapping[str, Any] | None, where: str) -> Any:
    if isinstance(kwargs, cls):
        return kwargs
    kwargs = dict(kwargs or {})
    _check_keys(cls, kwargs, where)
    return cls(**kwargs)


def _channels(channel_base: int, channel_max: int, resolutions: Sequence[int]) -> dict[int, int]:
    return {res: min(channel_base // res, channel_max) for res in resolutions}


# ----------------------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer with optional activation.

    Parameters: ``weight`` (out, in) stored as ``randn / lr_multiplier``, ``bias`` (out,).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_features) → (B, out_features)."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype) * self.bias_gain if self.bias_gain != 1 else b.to(x.dtype)
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution with optional FIR resampling, bias, activation and clamp.

    Parameters: ``weight`` (out, in, k, k), ``bias`` (out,) if enabled; buffer ``resample_filter`` (4, 4).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[int] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = _ACTIVATIONS[activation][1]
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x: (B, in, H, W) → (B, out, H·up/down, W·up/down)."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(
            x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding, flip_weight=self.up == 1
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class MappingNetwork(nn.Module):
    """z (and label c) → w: 2nd-moment normalisation, ``num_layers`` FC layers, truncation toward ``w_avg``.

    Parameters: ``fc{i}.weight``, ``fc{i}.bias``, ``embed.*`` when ``c_dim > 0``; buffer ``w_avg`` (w_dim,)
    when ``num_ws`` and ``w_avg_beta`` are not None.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Map latents to W.

        Args:
            z: (B, z_dim) latents (None when z_dim == 0).
            c: (B, c_dim) labels; None or (B, 0) when c_dim == 0.
            truncation_psi: ``w ← w_avg + ψ (w − w_avg)``; 1 = off, 0 = every w equals ``w_avg``.
            truncation_cutoff: truncate only the first ``cutoff`` style vectors; None = all.
            update_emas: update ``w_avg`` with this batch (decay ``w_avg_beta``); training only.

        Returns:
            (B, num_ws, w_dim), or (B, w_dim) when ``num_ws`` is None.
        """
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must be (B, {self.z_dim}), got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must be (B, {self.c_dim}), got {None if c is None else tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if update_emas:
            if not hasattr(self, "w_avg"):
                raise ValueError("update_emas=True but this mapping network tracks no w_avg (w_avg_beta is None)")
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # a real copy: callers may edit layers in place
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ValueError("truncation needs w_avg; this mapping network has w_avg_beta=None or num_ws=None")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally 2× up), noise, bias, lrelu.

    Parameters: ``affine`` (w_dim → in_channels, bias init 1), ``weight`` (out, in, k, k), ``noise_strength``
    (scalar), ``bias`` (out,); buffers ``resample_filter`` (4, 4), ``noise_const`` (res, res).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[int] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = _ACTIVATIONS[activation][1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
        fused_modconv: bool = False,
        gain: float = 1.0,
    ) -> torch.Tensor:
        """x: (B, in, res/up, res/up), w: (B, w_dim) → (B, out, res, res)."""
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            if generator is None:
                raise ValueError(
                    "noise_mode='random' needs an explicit torch.Generator (generator=...) on the "
                    "input's device; pass torch.default_generator to use the global RNG"
                )
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=self.up == 1,
            fused=fused_modconv,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 convolution without demodulation to image channels.

    Parameters: ``affine`` (w_dim → in_channels, bias init 1), ``weight`` (img_channels, in, 1, 1), ``bias``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = False) -> torch.Tensor:
        """x: (B, in, H, W), w: (B, w_dim) → (B, img_channels, H, W)."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' generator: (const | conv0 up) → conv1 → torgb, image upsampled and summed."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[int] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        use_noise: bool = True,
        activation: str = "lrelu",
    ) -> None:
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"synthesis architecture {architecture!r} is not implemented; only 'skip'")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        layer_kwargs = dict(
            w_dim=w_dim,
            resolution=resolution,
            use_noise=use_noise,
            activation=activation,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
        fused_modconv: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, in, res/2, res/2) or None, img: (B, C, res/2, res/2) or None, ws: (B, num_conv + 1, w_dim).

        Returns:
            x: (B, out, res, res) features and img: (B, img_channels, res, res) running image.
        """
        layer_kwargs = dict(noise_mode=noise_mode, generator=generator, fused_modconv=fused_modconv)
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], **layer_kwargs)
        else:
            x = self.conv0(x, ws[:, 0], **layer_kwargs)
            x = self.conv1(x, ws[:, 1], **layer_kwargs)
        y = self.torgb(x, ws[:, self.num_conv], fused_modconv=fused_modconv).to(torch.float32)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws → image through blocks ``b4 … b{img_resolution}``.

    Attributes:
        num_ws: number of style vectors consumed (``2·log2(R) − 2``).
        block_resolutions: [4, 8, …, R].
        fused_modconv: default form of :func:`modulated_conv2d` (False = non-fused, exportable; see
            :meth:`Generator.set_fused_modconv`).
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        architecture: str = "skip",
        resample_filter: Sequence[int] = (1, 3, 3, 1),
        use_noise: bool = True,
        activation: str = "lrelu",
    ) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.fused_modconv = False
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = _channels(channel_base, channel_max, self.block_resolutions)
        if num_fp16_res:
            logger.debug("num_fp16_res=%d recorded but not applied (pure-PyTorch path, use autocast)", num_fp16_res)
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                architecture=architecture,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                use_noise=use_noise,
                activation=activation,
            )
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        """Synthesise images.

        Args:
            ws: (B, num_ws, w_dim) styles.
            noise_mode: 'const' (the stored ``noise_const``; deterministic, the default), 'random' (fresh noise
                drawn from ``generator``) or 'none'.
            generator: RNG for ``noise_mode='random'``, on the device of ``ws``.
            fused_modconv: override :attr:`fused_modconv` for this call.

        Returns:
            (B, img_channels, R, R) float32 images, roughly in [-1, 1].
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be (B, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        fused = self.fused_modconv if fused_modconv is None else fused_modconv
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws[:, w_idx : w_idx + block.num_conv + block.num_torgb]
            x, img = block(x, img, cur, noise_mode=noise_mode, generator=generator, fused_modconv=fused)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z, c → ws) then ``synthesis`` (ws → image).

    Constructor arguments mirror NVlabs (``mapping_kwargs`` are :class:`MappingConfig` fields,
    ``synthesis_kwargs`` are :class:`SynthesisConfig` fields); unknown keys raise ``ValueError``.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: Mapping[str, Any] | MappingConfig | None = None,
        synthesis_kwargs: Mapping[str, Any] | SynthesisConfig | None = None,
    ) -> None:
        super().__init__()
        mapping_cfg = _as_config(MappingConfig, mapping_kwargs, "Generator mapping_kwargs")
        synthesis_cfg = _as_config(SynthesisConfig, synthesis_kwargs, "Generator synthesis_kwargs")
        self._config = GeneratorConfig(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping=mapping_cfg,
            synthesis=synthesis_cfg,
        )
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **dataclasses.asdict(synthesis_cfg)
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **dataclasses.asdict(mapping_cfg)
        )

    @classmethod
    def from_config(cls, config: GeneratorConfig) -> Generator:
        """Build from a :class:`GeneratorConfig` (fresh random weights)."""
        return cls(
            config.z_dim,
            config.c_dim,
            config.w_dim,
            config.img_resolution,
            config.img_channels,
            mapping_kwargs=config.mapping,
            synthesis_kwargs=config.synthesis,
        )

    @property
    def config(self) -> GeneratorConfig:
        """The hyperparameters this generator was built with."""
        return self._config

    @property
    def fused_modconv(self) -> bool:
        """Whether modulated convolutions run fused (grouped conv) by default."""
        return self.synthesis.fused_modconv

    def set_fused_modconv(self, fused: bool) -> Generator:
        """Choose the default modulated-convolution form (False, the default, is what ONNX export needs).

        Returns:
            self, for chaining.
        """
        self.synthesis.fused_modconv = bool(fused)
        return self

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        """z (B, z_dim), c (B, c_dim) or None → images (B, img_channels, R, R).

        See :meth:`MappingNetwork.forward` and :meth:`SynthesisNetwork.forward` for the arguments.
        """
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, noise_mode=noise_mode, generator=generator, fused_modconv=fused_modconv)

    @torch.no_grad()
    def mean_w(
        self,
        n_samples: int = 4096,
        *,
        generator: torch.Generator | None = None,
        c: torch.Tensor | None = None,
        batch_size: int = 1024,
    ) -> torch.Tensor:
        """Estimate the truncation centre from ``n_samples`` random z, store it in ``mapping.w_avg``.

        Args:
            n_samples: number of z samples (AlbedoGAN: 4096).
            generator: RNG for z on the module's device; None = a fresh generator seeded with 0 (deterministic).
            c: (n_samples, c_dim) or (1, c_dim) labels when ``c_dim > 0``.
            batch_size: samples per mapping call.

        Returns:
            (w_dim,) the new ``w_avg`` (a copy).
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if self.c_dim > 0 and c is None:
            raise ValueError(f"this generator is conditional (c_dim={self.c_dim}); pass c")
        if not hasattr(self.mapping, "w_avg"):
            raise ValueError("this generator has no w_avg buffer (mapping w_avg_beta is None)")
        device = self.mapping.w_avg.device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(0)
        total = torch.zeros([self.w_dim], dtype=torch.float64, device=device)
        done = 0
        while done < n_samples:
            n = min(batch_size, n_samples - done)
            z = torch.randn([n, self.z_dim], generator=generator, device=device)
            cc = None
            if c is not None:
                cc = c.to(device).expand(n_samples, -1)[done : done + n] if c.shape[0] == 1 else c[done : done + n]
            ws = self.mapping(z, cc)
            total += ws[:, 0].to(torch.float64).sum(dim=0)
            done += n
        self.mapping.w_avg.copy_((total / n_samples).to(self.mapping.w_avg.dtype))
        logger.info("w_avg set from %d samples", n_samples)
        return self.mapping.w_avg.clone()


# ----------------------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """One 'resnet' discriminator resolution: (fromrgb) → conv0 → conv1 (down), plus a 1×1 ``skip`` (down)."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: Sequence[int] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError("in_channels must be 0 (first block) or tmp_channels")
        if architecture != "resnet":
            raise ValueError(f"discriminator architecture {architecture!r} is not implemented; only 'resnet'")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, kernel_size=1, activation=activation, conv_clamp=conv_clamp
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp
        )
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            kernel_size=3,
            activation=activation,
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.skip = Conv2dLayer(
            tmp_channels, out_channels, kernel_size=1, bias=False, down=2, resample_filter=resample_filter
        )

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        """Downsample features by 2.

        Args:
            x: (B, tmp, res, res) features, or None in the first block.
            img: (B, img_channels, res, res) images, read by the first block only.

        Returns:
            (B, out, res/2, res/2).
        """
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=_SQRT_HALF)
        x = self.conv0(x)
        x = self.conv1(x, gain=_SQRT_HALF)
        return y + x


class MinibatchStdLayer(nn.Module):
    """Append the mean standard deviation over groups of samples as ``num_channels`` extra feature maps."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) → (N, C + num_channels, H, W). N must be divisible by ``min(group_size, N)``."""
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        f = self.num_channels
        if n % g or c % f:
            raise ValueError(
                f"minibatch-stddev: batch {n} must be divisible by group size {g} and channels {c} by num_channels {f}"
            )
        y = x.reshape(g, -1, f, c // f, h, w)  # sample (i·n/g + j) is member i of group j
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # (n/g, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: minibatch stddev → conv → fc → out (projection onto the mapped label when conditioned)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, 4, 4), cmap: (B, cmap_dim) or None → (B, 1) logits."""
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2 'resnet' discriminator with minibatch standard deviation and optional label projection.

    Blocks ``b{R}, …, b8`` halve the resolution; ``b4`` is the :class:`DiscriminatorEpilogue`.
    """

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,
        block_kwargs: Mapping[str, Any] | None = None,
        mapping_kwargs: Mapping[str, Any] | MappingConfig | None = None,
        epilogue_kwargs: Mapping[str, Any] | EpilogueConfig | None = None,
    ) -> None:
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        unknown = sorted(set(block_kwargs) - {"activation", "resample_filter"})
        if unknown:
            raise ValueError(
                f"Discriminator block_kwargs: unknown keys {unknown}; expected activation, resample_filter"
            )
        mapping_cfg = _as_config(MappingConfig, mapping_kwargs, "Discriminator mapping_kwargs")
        epilogue_cfg = _as_config(EpilogueConfig, epilogue_kwargs, "Discriminator epilogue_kwargs")
        self._config = DiscriminatorConfig(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            architecture=architecture,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            cmap_dim=cmap_dim,
            mapping=mapping_cfg,
            epilogue=epilogue_cfg,
            **block_kwargs,
        )
        cfg = self._config
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels = _channels(channel_base, channel_max, self.block_resolutions + [4])
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0,
                channels[res],
                channels[res // 2],
                resolution=res,
                img_channels=img_channels,
                architecture=architecture,
                activation=cfg.activation,
                resample_filter=cfg.resample_filter,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            mapping_args = dataclasses.asdict(mapping_cfg) | {"w_avg_beta": None}
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, **mapping_args)
        self.b4 = DiscriminatorEpilogue(
            channels[4],
            cmap_dim=cmap_dim,
            resolution=4,
            img_channels=img_channels,
            conv_clamp=conv_clamp,
            **dataclasses.asdict(epilogue_cfg),
        )

    @classmethod
    def from_config(cls, config: DiscriminatorConfig) -> Discriminator:
        """Build from a :class:`DiscriminatorConfig` (fresh random weights)."""
        return cls(
            config.c_dim,
            config.img_resolution,
            config.img_channels,
            architecture=config.architecture,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
            num_fp16_res=config.num_fp16_res,
            conv_clamp=config.conv_clamp,
            cmap_dim=config.cmap_dim,
            block_kwargs={"activation": config.activation, "resample_filter": config.resample_filter},
            mapping_kwargs=config.mapping,
            epilogue_kwargs=config.epilogue,
        )

    @property
    def config(self) -> DiscriminatorConfig:
        """The hyperparameters this discriminator was built with."""
        return self._config

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """img: (B, img_channels, R, R), c: (B, c_dim) or None → (B, 1) real/fake logits."""
        r = self.img_resolution
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, r, r):
            raise ValueError(f"img must be (B, {self.img_channels}, {r}, {r}), got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, cmap)
