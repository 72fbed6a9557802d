"""The StyleGAN2 'resnet' discriminator: per-resolution blocks, minibatch standard deviation, epilogue."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.stylegan2.config import DiscriminatorConfig, EpilogueConfig, MappingConfig, _as_config, _channels
from models.stylegan2.generator import MappingNetwork
from models.stylegan2.layers import Conv2dLayer, FullyConnectedLayer
from models.stylegan2.ops import _SQRT_HALF, setup_filter


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
