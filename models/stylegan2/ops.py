"""The functional core of StyleGAN2 in pure PyTorch: resampling FIR filters, biased activation, modulated conv.

Plain functions the layers call (NVlabs ``torch_utils/ops``, without the custom CUDA kernels): every op has one
pure-PyTorch path, which is also what ONNX export traces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Padding = int | Sequence[int]

_SQRT2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)
# name -> (function, default gain). Gains keep the signal magnitude (NVlabs ``bias_act`` defaults).
_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, _SQRT2),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), _SQRT2),
}


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


def upsampling_matrix(f: torch.Tensor, size: int, up: int = 2) -> torch.Tensor:
    """(size·up, size) ``M`` with ``upsample2d(x, f, up) == M @ x @ M.T`` for (…, size, size) images ``x`` and a
    separable filter ``f`` (an outer product, as :func:`setup_filter` makes from taps): the 1-D operator, borders
    included, read off :func:`upsample2d` itself. Two matrix products cost a fraction of the zero insertion, padding
    and depthwise convolution (an exported graph's upsampling of a 64² image to 256²: ~2.3 → ~0.5 ms on a CPU)."""
    c = size // 2
    deltas = torch.zeros(size, 1, size, size, dtype=f.dtype, device=f.device)
    deltas[torch.arange(size), 0, torch.arange(size), c] = 1.0  # image k: one pixel at (k, c)
    out = upsample2d(deltas, f, up)[:, 0]  # image k: M[:, k] ⊗ M[:, c]
    return out.sum(-1).T / out[c].sum().sqrt()  # rows sum to M[:, k]·ΣM[:, c]; image c sums to (ΣM[:, c])²


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
