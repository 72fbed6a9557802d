"""Albedo-latent head: the shape encoder's 512-d backbone features → AlbedoGAN styles ``ws``.

Every image gets an albedo from AlbedoGAN through this head (``albedo = G.synthesis(head(features))``):
in the paper's StyleGAN2 recipe the image's w is known and supervises the head directly (an L2 in
normalised w units); for synthetic renders and photos w is unknown and the head is trained through the
renderer (photometric, identity and perceptual losses). It also gives ``/reconstruct`` an "albedo from the
generator" path: ``image → encoder backbone → head → ws → AlbedoGAN``.

Architecture: ``features (F) → [Linear → LeakyReLU(0.2)] × (num_layers − 1) → Linear`` to one w (broadcast
to every synthesis layer) or to ``num_ws`` per-layer ws (``per_layer``). The output is read in normalised
units around the generator's W distribution::

    ws = w_mean + w_std · mlp(features)

``w_mean`` and ``w_std`` (buffers, saved with the weights) are the per-dimension mean and standard deviation of
W under the generator's mapping network (:meth:`AlbedoHead.from_generator`, a fixed seed). The last linear
layer starts at zero, so a fresh head predicts ``w_mean`` for every image: the mean albedo, a stable start.

Features are those of :class:`models.encoder.IResNet` (``encoder.backbone(2·image − 1)``, 512-d); see
:class:`training.shape.ShapeModel` for how training obtains them in the same forward as the codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from facecore.config import VersionedConfig


@dataclass(frozen=True)
class AlbedoHeadConfig(VersionedConfig):
    """Everything needed to rebuild an :class:`AlbedoHead`; saved as JSON beside its weights.

    Attributes:
        in_features: F, the backbone feature size (the encoder's embedding, 512).
        w_dim: AlbedoGAN's W size (from the generator).
        num_ws: AlbedoGAN's number of style vectors (from the generator).
        per_layer: predict ``num_ws`` different ws (True) or one w broadcast to every layer (False).
        hidden: width of the hidden layers.
        num_layers: linear layers (≥ 1; 1 = a linear map).
    """

    KIND: ClassVar[str] = "albedo_head.AlbedoHead"

    in_features: int
    w_dim: int
    num_ws: int
    per_layer: bool = False
    hidden: int = 512
    num_layers: int = 2

    def __post_init__(self) -> None:
        if min(self.in_features, self.w_dim, self.num_ws, self.hidden, self.num_layers) < 1:
            raise ValueError(f"AlbedoHeadConfig: every size must be positive, got {self}")

    @property
    def out_features(self) -> int:
        return self.w_dim * (self.num_ws if self.per_layer else 1)


class AlbedoHead(nn.Module):
    """(B, F) backbone features → (B, num_ws, w_dim) AlbedoGAN styles.

    Args:
        in_features, w_dim, num_ws, per_layer, hidden, num_layers: see :class:`AlbedoHeadConfig`.

    Buffers:
        w_mean: (w_dim,) centre of the output (the generator's mean w).
        w_std: (w_dim,) per-dimension scale of the output (the generator's W spread), > 0.
    """

    w_mean: torch.Tensor
    w_std: torch.Tensor

    def __init__(
        self,
        in_features: int,
        w_dim: int,
        num_ws: int,
        per_layer: bool = False,
        hidden: int = 512,
        num_layers: int = 2,
    ):
        super().__init__()
        self._config = AlbedoHeadConfig(in_features, w_dim, num_ws, per_layer, hidden, num_layers)
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, self._config.out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_mean", torch.zeros(w_dim))
        self.register_buffer("w_std", torch.ones(w_dim))

    @classmethod
    def from_config(cls, config: AlbedoHeadConfig) -> AlbedoHead:
        """Build from an :class:`AlbedoHeadConfig` (fresh weights, ``w_mean`` 0, ``w_std`` 1)."""
        return cls(**dataclasses.asdict(config))

    @classmethod
    def from_generator(
        cls, generator: nn.Module, in_features: int = 512, n_samples: int = 4096, seed: int = 0, **kwargs: Any
    ) -> AlbedoHead:
        """A fresh head whose output statistics are those of ``generator``'s W (mapping of ``n_samples`` z).

        Args:
            generator: a :class:`models.stylegan2.Generator` (unconditional).
            in_features: backbone feature size.
            n_samples: z samples for the mean and standard deviation of W.
            seed: seed of those z (on the generator's device).
            **kwargs: ``per_layer``, ``hidden``, ``num_layers``.
        """
        head = cls(in_features, int(generator.w_dim), int(generator.num_ws), **kwargs)
        head.set_w_statistics(*w_statistics(generator, n_samples, seed))
        return head

    @property
    def config(self) -> AlbedoHeadConfig:
        return self._config

    @torch.no_grad()
    def set_w_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the output centre and scale, each (w_dim,); std must be positive."""
        w_dim = self._config.w_dim
        if mean.shape != (w_dim,) or std.shape != (w_dim,):
            raise ValueError(f"mean, std: expected ({w_dim},) each, got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all()):
            raise ValueError("w statistics: std must be positive and mean finite")
        self.w_mean.copy_(mean)
        self.w_std.copy_(std)

    def normalise(self, ws: torch.Tensor) -> torch.Tensor:
        """(…, w_dim) styles → the head's normalised units ``(ws − w_mean) / w_std`` (for an L2 on w)."""
        return (ws - self.w_mean) / self.w_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, F) → ws (B, num_ws, w_dim)."""
        cfg = self._config
        if features.dim() != 2 or features.shape[1] != cfg.in_features:
            raise ValueError(f"features: expected shape (B, {cfg.in_features}), got {tuple(features.shape)}")
        delta = self.out(self.mlp(features))
        B = features.shape[0]
        if cfg.per_layer:
            delta = delta.view(B, cfg.num_ws, cfg.w_dim)
        else:
            delta = delta.view(B, 1, cfg.w_dim).expand(B, cfg.num_ws, cfg.w_dim)
        return self.w_mean + self.w_std * delta


@torch.no_grad()
def w_statistics(
    generator: nn.Module, n_samples: int = 4096, seed: int = 0, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (each (w_dim,)) of W = mapping(z), z ~ N(0, I), no truncation.

    The standard deviation is floored at 1e-3 of its mean value over dimensions (no zero scales).
    """
    if n_samples < 2:
        raise ValueError(f"n_samples: expected at least 2, got {n_samples}")
    if getattr(generator, "c_dim", 0):
        raise ValueError("w_statistics: conditional generators are not supported")
    device = next(generator.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    total = torch.zeros(generator.w_dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < n_samples:
        n = min(batch_size, n_samples - done)
        z = torch.randn(n, generator.z_dim, generator=g, device=device)
        w = generator.mapping(z, None)[:, 0].to(torch.float64)
        total += w.sum(0)
        total_sq += (w * w).sum(0)
        done += n
    mean = total / n_samples
    var = (total_sq - n_samples * mean * mean).clamp_min(0.0) / (n_samples - 1)
    std = var.sqrt()
    std = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
    return mean.float(), std.float()
