"""The StyleGAN2 generator: mapping network (z, c → w) and 'skip' synthesis network (w → image), plus the
training-side style-mixing helpers (never called by the modules)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from models.stylegan2.config import GeneratorConfig, MappingConfig, SynthesisConfig, _as_config, _channels
from models.stylegan2.layers import FullyConnectedLayer
from models.stylegan2.ops import (
    _ACTIVATIONS,
    bias_act,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
    upsampling_matrix,
)

logger = logging.getLogger(__name__)

NoiseMode = Literal["random", "const", "none"]
_NOISE_MODES = ("random", "const", "none")


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
        mean_image: bool = False,
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
        # the learned per-pixel images of SynthesisConfig.mean_image (registered layouts); None = plain StyleGAN2
        shape = (1, img_channels, img_resolution, img_resolution)
        self.img_bias = nn.Parameter(torch.zeros(shape)) if mean_image else None
        self.img_scale = nn.Parameter(torch.ones(shape)) if mean_image else None

    def last_drawing_resolution(self) -> int:
        """The highest block resolution whose ``torgb`` draws anything (a weight or bias not zero). The blocks above
        it add exactly zero to the image: a generator grown from a lower resolution (``training.albedo.grow_from``
        zeroes the new blocks' ``torgb``) and not trained since draws at the old resolution, upsampled."""
        last = self.block_resolutions[0]
        for res in self.block_resolutions:
            torgb = getattr(self, f"b{res}").torgb
            if bool(torgb.weight.detach().any()) or bool(torgb.bias.detach().any()):
                last = res
        return last

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
        fused_modconv: bool | None = None,
        draw_until: int | None = None,
        upsampling: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Synthesise images.

        Args:
            ws: (B, num_ws, w_dim) styles.
            noise_mode: 'const' (the stored ``noise_const``; deterministic, the default), 'random' (fresh noise
                drawn from ``generator``) or 'none'.
            generator: RNG for ``noise_mode='random'``, on the device of ``ws``.
            fused_modconv: override :attr:`fused_modconv` for this call.
            draw_until: the blocks above this resolution only upsample the running image; with
                :meth:`last_drawing_resolution` the result is the same (the convolutions skipped feed nothing that
                is drawn). For inference and export: a block skipped gets no gradient (a grown block's zeroed
                ``torgb`` would never learn), and the resolution is found outside any trace (it reads weights).
            upsampling: :meth:`skipped_upsampling` of ``draw_until``, computed once (an export passes it as a
                constant; None: computed here).

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
        last = self.img_resolution if draw_until is None else draw_until
        if last not in self.block_resolutions:
            raise ValueError(f"draw_until must be one of {self.block_resolutions}, got {draw_until}")
        for res in self.block_resolutions:
            if res > last:  # draws nothing: the running image upsampled is the block's output (below, at once)
                break
            block = getattr(self, f"b{res}")
            cur = ws[:, w_idx : w_idx + block.num_conv + block.num_torgb]
            x, img = block(x, img, cur, noise_mode=noise_mode, generator=generator, fused_modconv=fused)
            w_idx += block.num_conv
        if last < self.img_resolution:
            up = self.skipped_upsampling(last) if upsampling is None else upsampling
            img = up @ img @ up.T
        return img if self.img_bias is None else self.img_bias + self.img_scale * img

    def skipped_upsampling(self, draw_until: int) -> torch.Tensor:
        """(R, draw_until) ``M``: the upsamplings of the blocks above ``draw_until`` as one matrix, the image
        ``M @ img @ M.T`` (:func:`models.stylegan2.ops.upsampling_matrix`)."""
        up = None
        for res in self.block_resolutions:
            if res > draw_until:
                step = upsampling_matrix(getattr(self, f"b{res}").resample_filter, res // 2)
                up = step if up is None else step @ up
        if up is None:
            raise ValueError(f"no block above {draw_until}²")
        return up


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
