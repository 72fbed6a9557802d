"""AlbedoGAN pretraining: StyleGAN2 on UV albedo maps (stage ``albedo`` of ``python -m training.run``).

``python -m training.run albedo --config training/configs/albedo_default.yaml --out runs/a`` (add
``--set albedo.data.kind=folder --set albedo.data.path=DIR`` for a folder of PNGs). Several processes:
``torchrun --nproc_per_node N -m training.run albedo …`` (DistributedDataParallel; gloo on CPU, nccl on CUDA).
Everything lives in the ``albedo`` section of the configuration (:class:`AlbedoTrainConfig`).

**Procedure** (StyleGAN2 / NVlabs ``stylegan2-ada-pytorch``): phases ``Gmain``, ``Greg``, ``Dmain``, ``Dreg`` per
step, as NVlabs runs them. Non-saturating logistic loss; lazy R1 on reals every ``r1_interval`` (16) steps
(``γ/2 · ‖∇D(x)‖²``, times the interval; ``r1_gamma: auto`` is NVlabs' ``0.0002 R² / batch``); optional
path-length regulariser every ``pl_interval`` (4) steps (``pl_weight`` > 0; batch shrink 2, mean decay 0.01);
Adam (β = (0, 0.99), lr 0.0025) with lazy-regularisation scaling ``lr·c, β^c, c = k / (k + 1)`` for a network
that has a lazy regulariser; style mixing with probability 0.9 (:func:`models.stylegan2.mix_styles`, per-sample
cut-offs); generator EMA with NVlabs' half-life ``ema_kimg`` (``auto`` = ``batch · 10 / 32``) and ramp-up 0.05;
mixed precision (autocast + GradScaler) on CUDA only. After the last step: ``G_ema.mean_w(4096)`` (the paper's
truncation centre) and the export files ``generator.safetensors`` + ``generator.json``.

**Augmentation — DiffAugment operations, ADA's non-leaking probability, colour only by default.** UV albedo
maps are spatially registered: a texel means the same point of the face in every sample, so D can and should
judge exact placement (eyes, lips, hairline at their UV positions). Translation and cutout break that: a D
made invariant to shifts stops checking the layout, a translated real is not a valid albedo map, and when
those ops are applied to every image (DiffAugment's default) they can leak into G. So: the ops are
DiffAugment's (differentiable, simple, every random number drawn from an explicit ``torch.Generator``, hence
exactly reproducible — ADA's adaptive pipeline would add an rₜ feedback loop and a 2-D geometric pipeline we
do not want on registered maps), each applied per sample with a fixed probability ``p`` < 1, which is ADA's
condition for the augmented distribution to still identify the clean one (non-leaking, Karras et al. 2020);
the default policy is ``color`` (brightness, saturation, contrast), ``translation`` and ``cutout`` exist for
experiments. A mirrored UV map (``data.mirror``) is a valid albedo map of the mirrored face (the cylindrical
layout is symmetric: the skin mask's IoU with its mirror image is 0.995), so it is offered as a data option.
Augmentation is meant for small folders (< ~5k maps); the synthetic source has as many maps as wanted.

**Exact resume.** Every random draw of step ``s`` on rank ``r`` comes from a ``torch.Generator`` seeded from
``(seed, s, r, phase)`` (latents, mixing cut-offs, noise inputs, augmentation, path-length noise); the data
order is a permutation per epoch seeded from ``(data.seed, epoch)``; model init uses ``seed``. A checkpoint
(``training/checkpoint.py``) holds G, D, G_ema (with ``w_avg``), both Adam states, the step, the data position,
the path-length mean, the GradScaler states and the metric history, so a run killed at any moment and
restarted with the same command continues from the last checkpoint with bit-identical losses on CPU (on CUDA
with ``deterministic: true``). The TensorBoard log is purged past the resume step and ``losses.jsonl`` is cut
back to it.

**Run folder** (rank 0 writes): ``checkpoints/``, ``tb/`` (losses, R1, PL, D real/fake scores, images/s, sample
grids of fixed z, KID), ``samples/`` (PNG grids), ``losses.jsonl`` (every step), ``metrics.jsonl``,
``generator.safetensors`` + ``generator.json`` (G_ema with its ``w_avg`` from 4096 samples; :func:`load_generator`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from facecore.config import ConfigError, check_keys, parse_section, section_dict
from models.stylegan2 import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    mix_styles,
    sample_mixing_cutoff,
)
from models.stylegan2.ops import downsample2d, upsample2d
from training.augment import AugmentConfig, diff_augment
from training.checkpoint import run_checkpoint
from training.config import merge
from training.data.albedo_maps import DataConfig, EpochSampler, build_data
from training.data.images import to_uint8
from training.distributed import DistInfo, barrier, init_distributed
from training.images import save_png
from training.loop import LoopSchedule, TrainingLoop, derive_seed
from training.weights import EXPORT_WEIGHTS, save_generator

logger = logging.getLogger(__name__)


DEFAULT_G: dict[str, Any] = {
    "z_dim": 256,
    "w_dim": 256,
    "mapping": {"num_layers": 4},
    "synthesis": {"channel_base": 4096, "channel_max": 128},
}
"""Generator defaults of this stage (CPU-sized: 1.8 M parameters at 64²); ``albedo.G`` keys override them."""
DEFAULT_D: dict[str, Any] = {"channel_base": 4096, "channel_max": 128}
"""Discriminator defaults of this stage; ``albedo.D`` keys override them."""

# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class MetricConfig:
    """KID against the held-out maps (:mod:`training.evaluation`).

    Attributes:
        every: evaluate every this many steps and at the end; 0 = never.
        at_start: also evaluate the initial generator (the start of the curve).
        num_generated: generated maps per evaluation (the same latents every time).
        num_subsets: KID subsets.
        subset_size: samples per subset; None = half the smaller set.
        resolution: feature resolution.
        seed: latent and subset seed.
    """

    every: int = 1000
    at_start: bool = True
    num_generated: int = 256
    num_subsets: int = 50
    subset_size: int | None = None
    resolution: int = 64
    seed: int = 0


@dataclass(frozen=True)
class AlbedoTrainConfig:
    """The ``albedo`` section of a training configuration (unknown keys are refused).

    Attributes:
        resolution: albedo resolution R (power of two, ≥ 8).
        seed: model initialisation and per-step random streams.
        batch: global batch (split evenly over the DDP ranks).
        steps: training length in steps (``kimg = steps · batch / 1000``).
        max_steps: stop this invocation after this step (time-slicing, tests); the run resumes later.
        lr: Adam learning rate of G (and of D unless ``lr_d``).
        lr_d: D's learning rate; None = ``lr``.
        betas: Adam betas.
        r1_gamma: R1 weight γ, or ``auto`` (``0.0002 R² / batch``); 0 = off.
        r1_interval: lazy R1 interval.
        pl_weight: path-length regulariser weight (StyleGAN2: 2); 0 = off.
        pl_interval: lazy path-length interval.
        pl_decay: decay of the path-length running mean.
        pl_batch_shrink: the path-length pass uses ``batch / shrink`` samples.
        style_mixing_prob: probability of mixing two latents per sample.
        ema_kimg: G_ema half-life in thousands of images, or ``auto`` (``batch · 10 / 32``).
        ema_rampup: half-life ramp-up (``min(ema_kimg, kimg · rampup)``); None = no ramp-up.
        amp: mixed precision on CUDA (ignored on CPU).
        deterministic: deterministic CUDA algorithms (bit-exact resume on CUDA; slower). CPU always is.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        G: generator hyperparameters (:class:`models.stylegan2.GeneratorConfig` keys over :data:`DEFAULT_G`;
            resolution, channels and c_dim are set by the stage).
        D: discriminator hyperparameters (:class:`models.stylegan2.DiscriminatorConfig` keys over
            :data:`DEFAULT_D`).
        data, augment, metric: see :class:`DataConfig`, :class:`AugmentConfig`, :class:`MetricConfig`.
        log_every: TensorBoard scalars and progress-bar refresh interval (steps).
        sample_every: sample-grid interval (steps); 0 = only at the end.
        grid_size: samples in a grid (fixed latents).
        checkpoint_every: checkpoint interval (steps).
        checkpoint_on_stop: also checkpoint when ``max_steps`` stops the run.
        keep_checkpoints: checkpoints kept.
        mean_w_samples: samples for the final truncation centre (paper: 4096).
        progress: show the tqdm progress bar (rank 0).
        init_from: progressive growing: an albedo run folder (or one of its checkpoints) at this or a lower
            resolution; G, G_ema and D start from its weights wherever names and shapes match (with equal
            ``channel_base``/``channel_max`` every lower block does), the new blocks start fresh, and the new
            blocks' toRGB weights start at zero so the grown generator starts as the upsampled small one. Train
            most of the images cheaply at 64², then a short run at 256². Ignored when the run resumes.
        grow_d_warmup: with ``init_from``: the first N steps train only D (G unchanged), so that D's new input
            blocks learn the grown resolution before G follows D's gradients (a fresh D's gradients are noise
            that the carried blocks would absorb).
        grow_freeze_steps: with ``init_from``: for the first N steps only what the source did not have trains in
            G (the new blocks and the learned mean image); the mapping and the carried blocks stay as the source
            trained them (they hold the distribution of colours and shapes, which the grown resolution only
            details).
    """

    resolution: int = 64
    seed: int = 0
    batch: int = 16
    steps: int = 5000
    max_steps: int | None = None
    lr: float = 0.0025
    lr_d: float | None = None
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float | str = "auto"
    r1_interval: int = 16
    pl_weight: float = 0.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing_prob: float = 0.9
    ema_kimg: float | str = "auto"
    ema_rampup: float | None = 0.05
    amp: bool = True
    deterministic: bool = False
    device: str = "auto"
    G: GeneratorConfig = field(default_factory=lambda: _network_config(GeneratorConfig, DEFAULT_G, {}, 64))
    D: DiscriminatorConfig = field(default_factory=lambda: _network_config(DiscriminatorConfig, DEFAULT_D, {}, 64))
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    log_every: int = 10
    sample_every: int = 500
    grid_size: int = 16
    checkpoint_every: int = 500
    checkpoint_on_stop: bool = True
    keep_checkpoints: int = 3
    mean_w_samples: int = 4096
    progress: bool = True
    init_from: str | None = None
    grow_d_warmup: int = 0
    grow_freeze_steps: int = 0

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 8 or r & (r - 1):
            raise ValueError(f"albedo.resolution must be a power of two >= 8, got {r}")
        if self.G.img_resolution != r or self.D.img_resolution != r:
            raise ValueError("G/D img_resolution must equal albedo.resolution (set only albedo.resolution)")
        if self.batch < 1 or self.steps < 1:
            raise ValueError("albedo.batch and albedo.steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("albedo.max_steps must be >= 0")
        if isinstance(self.r1_gamma, str) and self.r1_gamma != "auto":
            raise ValueError(f"albedo.r1_gamma: a number or 'auto', got {self.r1_gamma!r}")
        if isinstance(self.ema_kimg, str) and self.ema_kimg != "auto":
            raise ValueError(f"albedo.ema_kimg: a number or 'auto', got {self.ema_kimg!r}")
        if self.grow_d_warmup < 0 or self.grow_freeze_steps < 0:
            raise ValueError("albedo.grow_d_warmup and albedo.grow_freeze_steps must be >= 0")
        for name in ("r1_interval", "pl_interval", "pl_batch_shrink", "log_every", "checkpoint_every", "grid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"albedo.{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"albedo.device: 'auto', 'cpu' or 'cuda', got {self.device!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def gamma(self) -> float:
        """The R1 weight (``auto`` resolved)."""
        if self.r1_gamma == "auto":
            return 0.0002 * self.resolution**2 / self.batch
        return float(self.r1_gamma)

    @property
    def ema_half_life_kimg(self) -> float:
        return self.batch * 10 / 32 if self.ema_kimg == "auto" else float(self.ema_kimg)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AlbedoTrainConfig:
        """Build from the YAML ``albedo`` section (:func:`training.config.parse_section`); ``G``/``D`` update
        :data:`DEFAULT_G`/:data:`DEFAULT_D` key by key at ``resolution``; errors name the key."""
        data = dict(data or {})
        g = dict(data.pop("G", None) or {})
        d = dict(data.pop("D", None) or {})
        for key in ("img_resolution", "img_channels", "c_dim"):
            if key in g or key in d:
                raise ConfigError(f"albedo.G/D.{key} is fixed by the stage (resolution: albedo.resolution)")
        check_keys(cls, data, "albedo")
        r = parse_section(_Resolution, {"resolution": data.get("resolution", cls.resolution)}, "albedo").resolution
        data["G"] = _network_config(GeneratorConfig, DEFAULT_G, g, r)
        data["D"] = _network_config(DiscriminatorConfig, DEFAULT_D, d, r)
        return parse_section(cls, data, "albedo")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what :meth:`from_dict` reads back)."""
        out = section_dict(self)
        for key in ("G", "D"):
            section = (self.G if key == "G" else self.D).to_dict()
            for fixed in ("format_version", "kind", "img_resolution", "img_channels", "c_dim"):
                section.pop(fixed, None)
            out[key] = section
        return out


@dataclass(frozen=True)
class _Resolution:
    resolution: int


def _network_config(cls: type, defaults: Mapping[str, Any], given: Mapping[str, Any], resolution: int) -> Any:
    """``defaults`` ← ``given`` (sub-sections merged key by key) at ``resolution``, RGB, unconditional."""
    merged = merge(defaults, given)
    return parse_section(
        cls, {**merged, "img_resolution": resolution, "img_channels": 3, "c_dim": 0}, f"albedo.{cls.__name__[0]}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Data


# ---------------------------------------------------------------------------------------------------------------
# Randomness and augmentation


# ---------------------------------------------------------------------------------------------------------------
# Training


class GeneratorPass(nn.Module):
    """The generator as the training phases call it: mapping, style mixing, synthesis with random noise.

    A thin wrapper so that DistributedDataParallel sees one forward per phase (training-side logic stays out
    of :class:`models.stylegan2.Generator`).
    """

    def __init__(self, G: Generator) -> None:
        super().__init__()
        self.G = G

    def forward(
        self,
        z: torch.Tensor,
        z_mix: torch.Tensor,
        cutoff: torch.Tensor,
        noise_generator: torch.Generator,
        update_emas: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z, z_mix: (B, z_dim); cutoff: (B,) → images (B, 3, R, R) and styles (B, num_ws, w_dim)."""
        ws = self.G.mapping(z, None, update_emas=update_emas)
        ws = mix_styles(ws, self.G.mapping(z_mix, None), cutoff)
        img = self.G.synthesis(ws, noise_mode="random", generator=noise_generator)
        return img, ws


@dataclass
class StepStats:
    """Per-step values for logging (floats; None where a phase did not run)."""

    step: int
    loss_G: float | None  # None: G did not train this step (a grown run's D warm-up)
    loss_D: float
    D_real: float
    D_fake: float
    r1: float | None = None
    pl: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns: the step reached, whether training is complete, and the metric history."""

    step: int
    done: bool
    metrics: list[dict[str, Any]]
    export: Path | None


class AlbedoTrainer(TrainingLoop):
    """One training run (one process of it): data, networks, optimisers, the phases, samples, the metric."""

    # phase ids of the per-step random streams
    _GMAIN, _GREG, _DMAIN, _DREG = 1, 2, 3, 4

    def __init__(self, config: AlbedoTrainConfig, out: Path, info: DistInfo) -> None:
        self.cfg = config
        self.out = out
        self.info = info
        self.device = info.device
        if config.batch % info.world_size:
            raise ValueError(f"albedo.batch={config.batch} must be divisible by the {info.world_size} processes")
        self.batch_local = config.batch // info.world_size
        group = config.D.epilogue.mbstd_group_size
        self.pl_batch = max(1, self.batch_local // config.pl_batch_shrink)
        g = self.batch_local if group is None else min(group, self.batch_local)
        if self.batch_local % g:
            raise ValueError(
                f"the per-process batch {self.batch_local} must be divisible by D's minibatch-stddev group size {g}"
            )
        self.amp = config.amp and self.device.type == "cuda"
        self.loop = LoopSchedule.of(config, config.steps, "albedo")

        self.train_set, self.held_set = build_data(config.data, config.resolution)
        self.sampler = EpochSampler(len(self.train_set), config.data.seed)

        torch.manual_seed(config.seed)
        self.G = Generator.from_config(config.G).to(self.device).train()
        self.D = Discriminator.from_config(config.D).to(self.device).train()
        grown = grow_from(config.init_from, self.G, self.D) if config.init_from else Grown(0, ())
        #: G's tensors carried over from the source run (``grow_freeze_steps`` keeps them); saved in checkpoints
        self.carried: tuple[str, ...] = grown.carried
        if self.G.synthesis.img_bias is not None:
            self._start_mean_image(grown.resolution)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.G_pass = GeneratorPass(self.G)
        self.opt_G = self._adam(self.G, config.lr, config.pl_interval if config.pl_weight > 0 else None)
        self.opt_D = self._adam(self.D, config.lr_d or config.lr, config.r1_interval if config.gamma > 0 else None)
        self.scaler_G = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_D = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.pl_mean = torch.zeros([], device=self.device)
        if info.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # a few small parameters get grads with other strides than DDP's buckets (e.g. D.b4.out.weight,
            # (1, C)): a copy per step, harmless; keep the log readable
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.G_ddp: nn.Module = nn.parallel.DistributedDataParallel(self.G_pass, device_ids=ids)
            self.D_ddp: nn.Module = nn.parallel.DistributedDataParallel(self.D, device_ids=ids)
        else:
            self.G_ddp, self.D_ddp = self.G_pass, self.D
        self.step = 0
        self.data_position = 0
        self.metric_history: list[dict[str, Any]] = []
        self.reference = None
        self.writer = None

    @torch.no_grad()
    def _start_mean_image(self, grown_from: int = 0, n: int = 1024, chunk: int = 32, min_spread: float = 0.02) -> None:
        """``G.synthesis.mean_image``: start ``img_scale`` at the training maps' per-texel standard deviation (at
        least ``min_spread``) and ``img_bias`` so that G's average output is their average map: the registered
        features (brows, lips, irises) sit at their texels from the first step and the synthesis layers work in
        standardised units. ``grown_from`` > 0 (a source's learned images of that resolution were carried over, see
        :func:`grow_from`): keep them, which keep the source's colours, and add only the detail of the maps'
        mean that the source's resolution could not hold. A resumed run then loads its own images over these."""
        m = min(n, len(self.train_set))
        total = squares = 0.0
        for i in range(0, m, chunk):
            x = self.train_set.batch(self.sampler.indices(i, min(chunk, m - i))).to(self.device)
            total, squares = total + x.sum(0, keepdim=True), squares + x.square().sum(0, keepdim=True)
        mean = total / m
        syn = self.G.synthesis
        if grown_from:
            f, low, steps = syn.b4.resample_filter, mean, 0
            while low.shape[-1] > grown_from:
                low, steps = downsample2d(low, f), steps + 1
            for _ in range(steps):
                low = upsample2d(low, f)
            syn.img_bias.add_(mean - low)
            return
        spread = (squares / m - mean.square()).clamp_min(0.0).sqrt().clamp_min(min_spread)
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        syn.img_bias.zero_()
        syn.img_scale.fill_(1.0)
        out = sum(self.G(torch.randn([min(chunk, n - i), self.G.z_dim], generator=g, device=self.device),
                         noise_mode="const").sum(0, keepdim=True) for i in range(0, n, chunk))  # fmt: skip
        syn.img_scale.copy_(spread)
        syn.img_bias.copy_(mean - spread * out / n)

    def _adam(self, module: nn.Module, lr: float, reg_interval: int | None) -> torch.optim.Adam:
        b1, b2 = self.cfg.betas
        if reg_interval is not None:  # lazy regularisation (StyleGAN2, appendix C)
            ratio = reg_interval / (reg_interval + 1)
            lr, b1, b2 = lr * ratio, b1**ratio, b2**ratio
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(b1, b2), eps=1e-8)

    # -- random streams ----------------------------------------------------------------------------------------

    def _rng(self, phase: int) -> torch.Generator:
        seed = derive_seed(self.cfg.seed, self.step, self.info.rank, phase)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _latents(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_dim = self.G.z_dim
        z = torch.randn([n, z_dim], generator=g, device=self.device)
        z_mix = torch.randn([n, z_dim], generator=g, device=self.device)
        cutoff = sample_mixing_cutoff(self.G.num_ws, n, self.cfg.style_mixing_prob, generator=g, device=self.device)
        return z, z_mix, cutoff

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a = self.cfg.augment
        return diff_augment(x, a.policy, g, a.probability, a.translation, a.cutout)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    # -- one step ------------------------------------------------------------------------------------------------

    def _real_batch(self) -> torch.Tensor:
        start = self.data_position + self.info.rank * self.batch_local
        idx = self.sampler.indices(start, self.batch_local)
        return self.train_set.batch(idx).to(self.device)

    def _opt_step(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, module: nn.Module) -> None:
        if not self.amp:  # NVlabs: replace NaN/Inf gradients rather than corrupting the weights
            for p in module.parameters():
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
        scaler.step(opt)
        scaler.update()

    @property
    def _frozen(self) -> bool:
        """Whether this step of a grown run keeps the carried tensors as they are (``grow_freeze_steps``)."""
        return bool(self.carried) and self.step < self.cfg.grow_freeze_steps

    def _G_step(self) -> None:
        """G's optimiser step; while a grown run freezes them (:attr:`_frozen`), the carried tensors keep their
        values (no gradient, which Adam skips; under DDP one may still arrive)."""
        if self._frozen:
            for name in self.carried:
                self.G.get_parameter(name).grad = None
        self._opt_step(self.opt_G, self.scaler_G, self.G)

    def train_step(self) -> dict[str, Any]:
        """Run the phases of step ``self.step`` (Gmain, Greg, Dmain, Dreg), update G_ema, advance the data."""
        cfg, s = self.cfg, self.step
        reals = self._real_batch()

        # Gmain: maximise D's logit of fakes (non-saturating loss); not while a grown run's D warms up
        loss_G, pl_value = None, None
        if not (self.carried and s < cfg.grow_d_warmup):
            self.G.requires_grad_(True)
            if self._frozen:  # no gradient through the mapping and the carried blocks
                for name in self.carried:
                    self.G.get_parameter(name).requires_grad_(False)
            self.D.requires_grad_(False)
            g = self._rng(self._GMAIN)
            z, z_mix, cut = self._latents(self.batch_local, g)
            self.opt_G.zero_grad(set_to_none=True)
            with self._autocast():
                fake, _ = self.G_ddp(z, z_mix, cut, g)
                logits = self.D(self._augment(fake, g))
                loss_G = F.softplus(-logits.float()).mean()
            self.scaler_G.scale(loss_G).backward()
            self._G_step()

            # Greg: path-length regulariser (lazy)
            if cfg.pl_weight > 0 and s % cfg.pl_interval == 0:
                pl_value = self._path_length_phase()
            self.G.requires_grad_(False)

        # Dmain: logistic loss on fakes (no_sync) and reals (sync)
        self.D.requires_grad_(True)
        g = self._rng(self._DMAIN)
        z, z_mix, cut = self._latents(self.batch_local, g)
        self.opt_D.zero_grad(set_to_none=True)
        with torch.no_grad(), self._autocast():
            fake, _ = self.G_pass(z, z_mix, cut, g, update_emas=True)
        sync_off = self.D_ddp.no_sync() if self.info.world_size > 1 else contextlib.nullcontext()
        with sync_off:
            with self._autocast():
                logits_fake = self.D_ddp(self._augment(fake.detach(), g)).float()
                loss_fake = F.softplus(logits_fake).mean()
            self.scaler_D.scale(loss_fake).backward()
        with self._autocast():
            logits_real = self.D_ddp(self._augment(reals, g)).float()
            loss_real = F.softplus(-logits_real).mean()
        self.scaler_D.scale(loss_real).backward()
        self._opt_step(self.opt_D, self.scaler_D, self.D)

        # Dreg: R1 on (augmented) reals (lazy)
        r1_value = None
        if cfg.gamma > 0 and s % cfg.r1_interval == 0:
            r1_value = self._r1_phase(reals)
        self.D.requires_grad_(False)

        self._update_ema()
        self.data_position += cfg.batch
        return StepStats(
            step=s,
            loss_G=None if loss_G is None else float(loss_G.detach()),
            loss_D=float(loss_fake.detach()) + float(loss_real.detach()),
            D_real=float(logits_real.detach().mean()),
            D_fake=float(logits_fake.detach().mean()),
            r1=r1_value,
            pl=pl_value,
        ).to_json()

    def _path_length_phase(self) -> float:
        cfg = self.cfg
        g = self._rng(self._GREG)
        z, z_mix, cut = self._latents(self.pl_batch, g)
        self.opt_G.zero_grad(set_to_none=True)
        with self._autocast():
            img, ws = self.G_ddp(z, z_mix, cut, g)
        res = img.shape[2] * img.shape[3]
        pl_noise = torch.randn(img.shape, generator=g, device=self.device) / math.sqrt(res)
        scaled = self.scaler_G.scale((img.float() * pl_noise).sum())
        (grads,) = torch.autograd.grad(scaled, ws, create_graph=True)
        grads = grads.float() / self.scaler_G.get_scale()
        lengths = grads.square().sum(2).mean(1).sqrt()
        batch_mean = lengths.mean().detach()
        if self.info.world_size > 1:  # keep pl_mean identical on every rank
            dist.all_reduce(batch_mean)
            batch_mean = batch_mean / self.info.world_size
        self.pl_mean.copy_(self.pl_mean.lerp(batch_mean, cfg.pl_decay))
        penalty = (lengths - self.pl_mean).square()
        loss = (img[:, 0, 0, 0].float() * 0 + penalty * cfg.pl_weight).mean() * cfg.pl_interval
        self.scaler_G.scale(loss).backward()
        self._G_step()
        return float(penalty.detach().mean())

    def _r1_phase(self, reals: torch.Tensor) -> float:
        cfg = self.cfg
        g = self._rng(self._DREG)
        self.opt_D.zero_grad(set_to_none=True)
        x = reals.detach().requires_grad_(True)
        with self._autocast():
            logits = self.D_ddp(self._augment(x, g)).float()
        scaled = self.scaler_D.scale(logits.sum())
        (grads,) = torch.autograd.grad(scaled, x, create_graph=True)
        grads = grads.float() / self.scaler_D.get_scale()
        penalty = grads.square().sum(dim=(1, 2, 3))
        loss = (logits[:, 0] * 0 + penalty * (cfg.gamma / 2)).mean() * cfg.r1_interval
        self.scaler_D.scale(loss).backward()
        self._opt_step(self.opt_D, self.scaler_D, self.D)
        return float(penalty.detach().mean())

    def ema_beta(self) -> float:
        """NVlabs: half-life ``ema_kimg`` (ramped up to ``kimg · rampup``) → per-step decay."""
        ema_nimg = self.cfg.ema_half_life_kimg * 1000
        if self.cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.data_position * self.cfg.ema_rampup)
        return 0.5 ** (self.cfg.batch / max(ema_nimg, 1e-8))

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = self.ema_beta()
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_G": self.opt_G, "opt_D": self.opt_D}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "data_position": self.data_position,
            "batch": self.cfg.batch,
            "world_size": self.info.world_size,
            "pl_mean": float(self.pl_mean),
            "scaler_G": self.scaler_G.state_dict(),
            "scaler_D": self.scaler_D.state_dict(),
            "metric_history": self.metric_history,
            "G_config": self.cfg.G.to_dict(),
            "D_config": self.cfg.D.to_dict(),
            "config": self.cfg.to_dict(),
            "carried": list(self.carried),
        }

    def check_resumable(self, path: Path, extra: Mapping[str, Any]) -> None:
        if extra.get("G_config") != self.cfg.G.to_dict() or extra.get("D_config") != self.cfg.D.to_dict():
            raise ValueError(
                f"{path} was trained with other G/D hyperparameters than the configuration; use a new --out "
                "folder or the original configuration"
            )

    def restore(self, extra: Mapping[str, Any]) -> None:
        step = self.step
        self.data_position = int(extra["data_position"])
        self.pl_mean.fill_(float(extra["pl_mean"]))
        if extra.get("scaler_G") and self.amp:
            self.scaler_G.load_state_dict(extra["scaler_G"])
            self.scaler_D.load_state_dict(extra["scaler_D"])
        self.metric_history = [m for m in extra.get("metric_history", []) if m["step"] <= step]
        self.carried = tuple(extra.get("carried", self.carried))
        changed = sorted(
            k
            for k in set(_flatten(extra.get("config", {}))) | set(_flatten(self.cfg.to_dict()))
            if k.split(".")[0] not in _RESUME_FREE
            and _flatten(extra.get("config", {})).get(k) != _flatten(self.cfg.to_dict()).get(k)
        )
        if changed:
            logger.warning("resuming with changed settings %s: training continues, not bit-exactly", changed)
        if extra.get("world_size") != self.info.world_size:
            logger.warning(
                "resuming on %d processes (checkpoint: %s): the data is the same, the latents per process are not",
                self.info.world_size,
                extra.get("world_size"),
            )
        logger.info("resumed at step %d (%.1f kimg)", step, self.data_position / 1000)

    # -- logging, samples, metric --------------------------------------------------------------------------------

    def on_logs_open(self) -> None:
        # the metric of step s is computed before checkpoint s: the checkpoint's history is the truth
        (self.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.metric_history))

    def on_start(self) -> None:
        self.save_reals()
        if self.cfg.metric.every and self.cfg.metric.at_start:
            self.evaluate()

    def progress_postfix(self, log: Mapping[str, Any]) -> dict[str, str]:
        g = "—" if log["loss_G"] is None else f"{log['loss_G']:.3f}"  # D warm-up of a grown run
        return {"G": g, "D": f"{log['loss_D']:.3f}"}

    def after_step(self, log: Mapping[str, Any], final: bool) -> None:
        cfg = self.cfg
        if (cfg.sample_every and self.step % cfg.sample_every == 0) or final:
            self.save_samples()
        if cfg.metric.every and (self.step % cfg.metric.every == 0 or final):
            self.evaluate()

    def on_schedule_end(self) -> None:
        self.export()

    def log_scalars(self, window: list[dict[str, Any]], seconds: float) -> None:
        w, step = self.writer, self.step
        if w is None or not window:
            return
        images_per_s = len(window) * self.cfg.batch / seconds if seconds > 0 else 0.0
        for key in ("loss_G", "loss_D", "D_real", "D_fake", "r1", "pl"):
            vals = [st[key] for st in window if st.get(key) is not None]
            if vals:
                tag = {"D_real": "Scores/real", "D_fake": "Scores/fake", "r1": "Loss/r1_penalty",
                       "pl": "Loss/pl_penalty"}.get(key, f"Loss/{key[5:]}")  # fmt: skip
                w.add_scalar(tag, sum(vals) / len(vals), step)
        w.add_scalar("Speed/images_per_s", images_per_s, step)
        w.add_scalar("Progress/kimg", self.data_position / 1000, step)
        w.add_scalar("Progress/ema_beta", self.ema_beta(), step)
        if self.cfg.pl_weight > 0:
            w.add_scalar("Loss/pl_mean", float(self.pl_mean), step)

    @torch.no_grad()
    def _grid_latents(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, 0, 0, 0x6D1D))
        return torch.randn([self.cfg.grid_size, self.G.z_dim], generator=g)

    @torch.no_grad()
    def save_samples(self) -> None:
        if not self.info.is_main:
            return
        z = self._grid_latents().to(self.device)
        imgs = torch.cat([self.G_ema(zb, None, noise_mode="const") for zb in z.split(16)]).float().cpu()
        grid = make_grid((imgs + 1) / 2)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        save_png(to_uint8(grid).permute(1, 2, 0).numpy(), self.out / "samples" / f"fakes{self.step:08d}.png")
        if self.writer is not None:
            self.writer.add_image("Samples/G_ema", grid, self.step)

    def save_reals(self) -> None:
        if not self.info.is_main:
            return
        n = min(self.cfg.grid_size, len(self.train_set))
        grid = make_grid(self.train_set.batch(self.sampler.indices(0, n)) * 0.5 + 0.5)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        save_png(to_uint8(grid).permute(1, 2, 0).numpy(), self.out / "samples" / "reals.png")
        if self.writer is not None:
            self.writer.add_image("Samples/reals", grid, 0)

    def _reference(self):
        from training.evaluation import AlbedoFeatures, ReferenceSet

        if self.reference is None:
            ds = self.held_set or self.train_set
            n = min(len(ds), 4096)
            if self.held_set is None:
                logger.info("metric reference: %d training maps (albedo.data.holdout is 0)", n)
            extractor = AlbedoFeatures(resolution=self.cfg.metric.resolution).to(self.device)
            batches = (ds.batch(range(i, min(i + 64, n))) * 0.5 + 0.5 for i in range(0, n, 64))
            self.reference = ReferenceSet.from_images(extractor, batches)
        return self.reference

    def evaluate(self) -> dict[str, Any] | None:
        """KID of G_ema against the reference set (rank 0; other ranks wait)."""
        from training.evaluation import evaluate_generator

        m = self.cfg.metric
        result = None
        if self.info.is_main:
            ref = self._reference()
            n = m.num_generated
            size = m.subset_size or max(2, min(n, len(ref)) // 2)
            t0 = time.perf_counter()
            kid = evaluate_generator(
                self.G_ema, ref, n, seed=m.seed, num_subsets=m.num_subsets, subset_size=size, device=self.device
            )
            result = {"step": self.step, "kimg": self.data_position / 1000, **kid.to_dict()}
            self.metric_history.append(result)
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(result) + "\n")
            if self.writer is not None:
                self.writer.add_scalar("Metric/kid", kid.mean, self.step)
                self.writer.add_scalar("Metric/kid_std", kid.std, self.step)
            logger.info("step %d: KID %.5f ± %.5f (%.1f s)", self.step, kid.mean, kid.std, time.perf_counter() - t0)
        barrier(self.info)
        return result

    # -- the loop ------------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        done, _ = self.run_loop()
        return TrainResult(self.step, done, list(self.metric_history), self.out / EXPORT_WEIGHTS if done else None)

    def export(self) -> None:
        """Truncation centre from ``mean_w_samples`` latents, then ``generator.safetensors`` + ``.json``."""
        if self.info.is_main:
            self.G_ema.mean_w(self.cfg.mean_w_samples)
            save_generator(self.G_ema, self.out, {"step": self.step, "kimg": self.data_position / 1000,
                                                   "metric": self.metric_history[-1] if self.metric_history else None,
                                                   "mean_w_samples": self.cfg.mean_w_samples})  # fmt: skip
        barrier(self.info)


class Grown(NamedTuple):
    """What :func:`grow_from` carried over: the learned mean image's resolution (0: none) and G's parameters."""

    resolution: int
    carried: tuple[str, ...]


def grow_from(source: str | Path, G: Generator, D: Discriminator) -> Grown:
    """Start ``G`` and ``D`` from the G_ema and D of a (lower-resolution) albedo run (see ``init_from``).

    A learned mean image (``mean_image``) of the source at a lower resolution is carried over upsampled (the
    resampling filter of the skip images), so the grown G draws the source's images, colours included.

    Returns:
        :class:`Grown`: the resolution of the mean image carried over this way (0 if none was) and the names of
        G's parameters taken as they were (the mean image, resampled, is not among them).

    Raises:
        FileNotFoundError: no checkpoint at ``source``.
        ValueError: nothing of the source fits (other widths), which would silently be a fresh start.
    """
    carried = 0
    ckpt = run_checkpoint(source)
    if ckpt is None:
        raise FileNotFoundError(f"albedo.init_from: no albedo checkpoint at {source}")
    params_G: tuple[str, ...] = ()
    for name, module in (("G_ema", G), ("D", D)):
        state = load_file(str(ckpt / f"{name}.safetensors"))
        own = module.state_dict()
        taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(taken) < len(state) // 2:
            raise ValueError(f"albedo.init_from: {ckpt}/{name} does not fit (other channel widths?)")
        module.load_state_dict(taken, strict=False)
        new = sorted(set(own) - set(taken))
        if name == "G_ema":
            params_G = tuple(sorted(k for k, _ in module.named_parameters() if k in taken))
            with torch.no_grad():
                for key in new:
                    if ".torgb." in key and not key.split(".")[-2].startswith("affine"):
                        module.get_parameter(key).zero_()
                for key in ("synthesis.img_bias", "synthesis.img_scale"):
                    if key in new and key in state and own[key].shape[-1] % state[key].shape[-1] == 0:
                        value, f = state[key].to(own[key]), module.synthesis.b4.resample_filter
                        while value.shape[-1] < own[key].shape[-1]:
                            value = upsample2d(value, f)
                        module.get_parameter(key).copy_(value)
                        carried = state[key].shape[-1]
        logger.info("%s from %s: %d tensors taken, %d new (%s)", "G" if name == "G_ema" else name, ckpt,
                    len(taken), len(new), ", ".join(sorted({".".join(k.split(".")[:2]) for k in new})))  # fmt: skip
    return Grown(carried, params_G)


# settings that may change between a run and its resumption without changing the training trajectory
_RESUME_FREE = frozenset(
    {"steps", "max_steps", "progress", "checkpoint_on_stop", "log_every", "sample_every", "grid_size",
     "checkpoint_every", "keep_checkpoints", "mean_w_samples", "metric", "device", "init_from"}
)  # fmt: skip


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def make_grid(images01: torch.Tensor, cols: int | None = None) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (3, rows·H, cols·W) grid (missing cells black)."""
    n, c, h, w = images01.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * h, cols * w)
    for i, img in enumerate(images01.clamp(0, 1)):
        r, k = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return grid


# ---------------------------------------------------------------------------------------------------------------
# Export


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def train(config: AlbedoTrainConfig, out: str | Path) -> TrainResult:
    """Train (or resume) in ``out``; joins the torchrun process group when launched by torchrun."""
    out = Path(out)
    info = init_distributed(config.device)
    try:
        if info.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            if config.deterministic:
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "albedo_config.json").write_text(json.dumps(config.to_dict(), indent=1))
        barrier(info)
        logger.info(
            "albedo: %d² on %s × %d, batch %d, %d steps (%.0f kimg), γ=%.4g, aug %s",
            config.resolution,
            info.device,
            info.world_size,
            config.batch,
            config.steps,
            config.steps * config.batch / 1000,
            config.gamma,
            list(config.augment.policy) or "off",
        )
        return AlbedoTrainer(config, out, info).fit()
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """Stage ``albedo`` of ``python -m training.run``: train on ``cfg['albedo']`` in ``out``.

    ``data.path: auto`` (with ``data.kind: folder``) is the albedo folder of the same run's ``extract`` stage,
    ``OUT/extract/albedo``: the paper's recipe, AlbedoGAN trained on extracted textures.
    """
    section = dict(cfg.get("albedo") or {})
    section["data"] = resolve_data(section.get("data") or {}, Path(out).parent)
    train(AlbedoTrainConfig.from_dict(section), out)


def resolve_data(data: Mapping[str, Any], run_dir: Path) -> dict:
    """An albedo data section with ``path: auto`` (``kind: folder``) made the run's extracted maps,
    ``RUN/extract/albedo`` (raises FileNotFoundError when the extract stage has not written them)."""
    data = dict(data)
    if data.get("kind") == "folder" and data.get("path") == "auto":
        extracted = Path(run_dir) / "extract" / "albedo"
        if not extracted.is_dir():
            raise FileNotFoundError(f"albedo.data.path: auto needs the extract stage's output {extracted} (run it)")
        data["path"] = str(extracted)
    return data


def grow_section(cfg: Mapping[str, Any], out: Path) -> dict | None:
    """The ``grow`` stage's training section: ``cfg['albedo']`` with ``cfg['grow']`` merged over it, or None when
    the config has no ``grow`` section. ``init_from: auto`` is the same run's ``albedo`` stage (``out``'s sibling)."""
    if not cfg.get("grow"):
        return None
    section = merge(cfg.get("albedo") or {}, cfg["grow"])
    if section.get("init_from") == "auto":
        section["init_from"] = str(Path(out).parent / "albedo")
    section["data"] = resolve_data(section.get("data") or {}, Path(out).parent)
    return section


def run_grow(cfg: Mapping[str, Any], out: Path) -> None:
    """Stage ``grow`` of ``python -m training.run``: the ``albedo`` stage's generator grown to a higher resolution
    (progressive growing: :func:`grow_from`), trained on :func:`grow_section` in ``out``. The shape and alternate
    stages keep training against the ``albedo`` stage's smaller generator (a renderer step at 256² costs ~16× one
    at 64²); the ``export`` stage puts the grown one in the bundle. Without a ``grow`` section: nothing to do."""
    section = grow_section(cfg, out)
    if section is None:
        logger.info("grow: no 'grow' section in the config; the bundle keeps the albedo stage's generator")
        return
    run({**cfg, "albedo": section}, out)


def iter_checkpoints(run_dir: str | Path) -> Iterator[Path]:
    """The checkpoint folders of a run, oldest first."""
    ckpts = Path(run_dir) / "checkpoints"
    yield from sorted(p for p in ckpts.glob("ckpt-*") if (p / "meta.json").is_file())
