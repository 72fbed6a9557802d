"""StyleGAN2 hyperparameters: frozen dataclasses with the keys of NVlabs' constructor kwargs, saved beside the
weights as versioned JSON (:class:`facecore.config.VersionedConfig`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from facecore.config import VersionedConfig, parse_section
from models.stylegan2.ops import _ACTIVATIONS


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
        mean_image: the output is ``img_bias + img_scale · synthesis(ws)`` with two learned (img_channels, R, R)
            images (not in NVlabs). For data whose pixels mean the same place in every image (registered UV albedo
            maps), started at the training maps' per-texel mean and spread, they carry the registered average
            (brows, lips, irises at their texels) from the first step and the styled layers learn standardised
            variation (a skin-tone shift is as large where the data varies as it should be, small where it does
            not).
    """

    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None
    architecture: str = "skip"
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    use_noise: bool = True
    activation: str = "lrelu"
    mean_image: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "resample_filter", tuple(self.resample_filter))
        if self.architecture != "skip":
            raise ValueError(f"synthesis architecture {self.architecture!r} is not implemented; only 'skip'")
        if self.channel_base < 1 or self.channel_max < 1:
            raise ValueError("channel_base and channel_max must be positive")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown synthesis activation {self.activation!r}")


@dataclass(frozen=True)
class GeneratorConfig(VersionedConfig):
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

    KIND: ClassVar[str] = "stylegan2.Generator"

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
class DiscriminatorConfig(VersionedConfig):
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

    KIND: ClassVar[str] = "stylegan2.Discriminator"

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


def _as_config(cls: type, kwargs: Mapping[str, Any] | None, where: str) -> Any:
    if isinstance(kwargs, cls):
        return kwargs
    return parse_section(cls, kwargs, where)


def _channels(channel_base: int, channel_max: int, resolutions: Sequence[int]) -> dict[int, int]:
    return {res: min(channel_base // res, channel_max) for res in resolutions}
