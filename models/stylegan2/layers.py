"""The equalised-learning-rate layers that the generator and the discriminator share."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from models.stylegan2.ops import _ACTIVATIONS, bias_act, conv2d_resample, setup_filter


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
