"""The shape model of AlbedoGAN, its training step, its data, its metrics, and the ``shape`` stage.

``python -m training.run shape --config training/configs/shape_tiny.yaml --out runs/s`` trains the shape model
alone (AlbedoGAN frozen at its pretrained weights); ``training/alternate.py`` adds the albedo fine-tuning steps
and runs the loop (checkpoints, DDP, logging) for both stages. Everything lives in the ``shape`` section of the
configuration (:class:`ShapeTrainConfig`).

**Shape model** (:class:`ShapeModel`) = :class:`models.encoder.Encoder` (IResNet → shape, expression, pose,
camera, SH light, detail codes) + :class:`models.displacement.DisplacementDecoder` (detail, expression, jaw →
UV displacement) + :class:`models.albedo_head.AlbedoHead` (the encoder backbone's 512-d features → AlbedoGAN
styles ws). The head's features are those of the same backbone pass (a forward hook on ``encoder.backbone``,
removed after the call), so one forward gives codes, displacement and ws.

**Shape step** (:func:`shape_terms`): image → codes → coarse vertices (face model) → displacement → detail
normal map → albedo = AlbedoGAN.synthesis(ws) (frozen; gradients reach the head through it) → render with the
predicted SH light → losses (:mod:`training.losses`):

* ``reconstruction``: masked MSE between the render (sRGB-encoded, the renderer works in linear light) and the
  image, on the rendered pixels times a region mask: ``head`` = the whole rendered head (synthetic: times the
  ground-truth head mask, so background pixels never pull the albedo), ``face`` = the triangles within
  ``face_radius_mm`` of the mean face's nose tip and in front of ``face_depth_mm`` behind it (photos and the
  StyleGAN2 recipe, whose hair, ears and background the face model does not explain);
* ``albedo_symmetry``: the UV albedo against its mirror (the UV half of the symmetric reconstruction);
* ``identity`` / ``perceptual``: cosine distance of :class:`models.identity.FaceEmbedder` embeddings, and the
  squared differences of its intermediate activations, between the render composited over the image and the
  image, both cut to dlib's aligned 150-px face chip from the (ground-truth or detected) 68 landmarks;
* ``landmark``: projected model landmarks vs the 68 ground-truth/detected ones, in **NDC** (x right, y up,
  [-1, 1] across the image; the released code's weight assumes [-1, 1] coordinates), jaw contour weighted
  ``landmark_jaw``, invisible ground-truth points (synthetic) left out;
* ``shape_centre``: each shape code to the mean of its identity group in the batch (batches are made of whole
  groups: recipe → views of one StyleGAN2 identity; synthetic → one identity code and albedo rendered with
  different pose, expression, light, framing and background; photos → the images of one sub-folder);
* priors: ``shape_prior`` (squared Mahalanobis under the face model's generation prior — the encoder starts at
  that prior's mean identity, :func:`start_at_prior_mean`; ``loss.shape_prior: wide`` uses the plain L2 of the
  wide basis instead), ``expression_prior``,
  ``detail_prior`` (squared L2), ``displacement_smoothness`` and ``displacement_magnitude`` (in mm, on the
  UV texels that touch the surface);
* ``w_latent`` (recipe only): the head's ws against the image's known w, squared, in the head's normalised
  units (``(w − w_mean) / w_std``), averaged over layers and dimensions. With the recipe the *known* w makes the
  albedo (the paper's use of the shared latent); the head learns from this L2 alone;
* ground truth, synthetic only, **logged, never trained on unless its weight is set**: ``gt_shape`` (mean
  distance in mm between the predicted and true neutral identity meshes, in the model frame) and
  ``gt_albedo`` (MSE of the albedo against the true one, linear, on the UV mask).

**Deviation (documented):** the render uses the *coarse* mesh for geometry (silhouette, visibility, landmarks)
and the displacement only through the exact detail normal map of the displaced surface
(:func:`models.displacement.detail_normal_map`, tangent space of the coarse surface) — DECA's detail render.
Rendering the displaced grid mesh itself would move the silhouette by at most ``max_mm`` while costing a second,
larger mesh per image; the detailed vertices are used where geometry is measured (the NoW-style metric).

**Metrics** (:func:`evaluate`, written to ``eval.json``): on held-out synthetic renders — a separate stream
(``eval.seed``) that training never draws from — (1) NoW-style shape error: the predicted neutral mesh (coarse,
and detailed with the neutral-expression displacement) is aligned to the true neutral mesh by a similarity on 7
landmarks (eye corners 36/39/42/45, nose tip 30, mouth corners 48/54; NoW's own landmarks), refined by rigid
ICP on scan-to-mesh correspondences; then the scan-to-mesh distance (true skin vertices within
``face_radius_mm`` of the nose tip — the true neutral surface sampled densely at the UV grid points of
``scan_resolution``, the outer skin only, as a scanner sees it — to the closest point on the predicted surface)
in mm, median/mean/std over
all points (the face model is in metres, i.e. real head size); (2) landmark NME (visible points, normalised by
the outer-eye-corner distance); (3) albedo error on seen texels (texels whose triangle is visible in the
ground-truth render; linear RGB): MAE, RMSE and the RMSE after a per-image, per-channel least-squares scale
(albedo × light has a global scale ambiguity).

**Data** (``data.kind``): ``synthetic`` (:class:`SyntheticGroups`, the default, offline, ground truth known),
``stylegan2_recipe`` (:class:`RecipeGroups`, the paper's sharded StyleGAN2 recipe) and ``photos``
(:class:`PhotoGroups`, a folder; 68 landmarks detected once and cached in a JSON file; identity = sub-folder).
Every source feeds the encoder the crops ``/reconstruct`` will feed it: aligned on the eye centres and the nose
(:func:`facecore.detect.alignment_matrix`, from the true or detected landmarks; synthetic faces are rendered
larger and cropped, :func:`align_to_template`). Measured: on unaligned synthetic renders (random framing, offsets
up to 0.4 NDC) the encoder stayed at the constant-prediction landmark error (0.20 NDC) for 150 steps; on aligned
crops it starts at 0.07 and improves from the first steps. Every batch is a deterministic function of
``(data.seed, step, rank)``, which is what makes resuming exact.

**Deviations from the brief, in short:** the render's geometry is the coarse mesh (above); AlbedoGAN stays near
its pretraining by L2-SP, not by a continued adversarial loss (``training/alternate.py``); the encoder starts at
the generation prior's mean identity; the NoW "scan" is the true surface sampled on a dense UV grid (the face
model's skin also has vertices inside the eye sockets and behind the lips that no scanner sees).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.albedo_head import AlbedoHead, AlbedoHeadConfig
from models.displacement import DetailedMesh, DisplacementConfig, DisplacementDecoder, uv_texel_mask
from models.encoder import Encoder, EncoderConfig, EncoderOutputs
from models.face.model import DEFAULT_FACE_MODEL, FaceCodes, FaceModel
from models.render import MeshRenderer, RenderOutputs, WeakPerspectiveCamera, uv_fragments
from training import losses as L
from training.data.synthetic import linear_to_srgb, srgb_to_linear

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
EVAL_FILE = "eval.json"
NOW_LANDMARKS: tuple[int, ...] = (36, 39, 42, 45, 30, 48, 54)
"""iBUG indices of NoW's 7 alignment landmarks: outer/inner eye corners, nose tip, mouth corners."""
NOSE_TIP = 30
DATA_KINDS = ("synthetic", "stylegan2_recipe", "photos")
SHAPE_TERMS = (
    "reconstruction",
    "albedo_symmetry",
    "identity",
    "perceptual",
    "landmark",
    "shape_centre",
    "shape_prior",
    "expression_prior",
    "detail_prior",
    "displacement_smoothness",
    "displacement_magnitude",
    "w_latent",
    "gt_shape",
    "gt_albedo",
)
ALBEDO_TERMS = ("reconstruction", "albedo_symmetry", "identity", "perceptual", "albedo_anchor", "gt_albedo")


# =============================================================================================================
# Configuration
# =============================================================================================================


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")


def _section(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    data = dict(data or {})
    _check_keys(cls, data, where)
    return cls(**data)


@dataclass(frozen=True)
class EncoderSection:
    """``model.encoder``: :class:`models.encoder.EncoderConfig` fields (sizes come from the face model).

    Attributes:
        depth: IResNet depth (18/34/50/100).
        input_size: the square input side (multiple of 16); also the rendered image size.
        detail_dim: detail-code size (shared with the displacement decoder).
        head_hidden: width of the code heads' hidden layer.
        dropout: backbone dropout.
        fc_grid: pooled grid side before the backbone's ``fc`` (7 = ArcFace's, needed for ``arcface_weights``;
            smaller grids shrink the exported encoder, see :class:`models.encoder.IResNet`).
        crop_scale: face-alignment zoom of the crops (1 = the service's framing); sets the initial camera and the
            alignment of photo / recipe images.
        predicted_joints: face-model joints whose rotation is predicted.
        arcface_weights: optional insightface/ArcFace ``.pth`` of the same depth to start the backbone from
            (:func:`models.arcface_loader.load_arcface_weights`; the paper's encoder starts from ArcFace).
    """

    depth: int = 18
    input_size: int = 64
    detail_dim: int = 64
    head_hidden: int = 512
    dropout: float = 0.0
    fc_grid: int = 7
    crop_scale: float = 1.0
    predicted_joints: tuple[str, ...] = ("global", "jaw")
    arcface_weights: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "predicted_joints", tuple(self.predicted_joints))


@dataclass(frozen=True)
class AlbedoHeadSection:
    """``model.albedo_head``: see :class:`models.albedo_head.AlbedoHeadConfig`.

    Attributes:
        per_layer: one w per synthesis layer instead of a single w.
        hidden: hidden width.
        num_layers: linear layers.
        detach_features: stop the head's gradients at the backbone features (the head then does not shape the
            encoder's features).
        w_samples: z samples for the head's W statistics.
    """

    per_layer: bool = False
    hidden: int = 512
    num_layers: int = 2
    detach_features: bool = False
    w_samples: int = 4096


@dataclass(frozen=True)
class ModelSection:
    """``model``: the networks of the shape model.

    Attributes:
        face_model: path of the face-model npz; None = the built-in default.
        encoder: see :class:`EncoderSection`.
        displacement: :class:`models.displacement.DisplacementConfig` keys except ``detail_dim`` and ``n_expr``.
        albedo_head: see :class:`AlbedoHeadSection`.
    """

    face_model: str | None = None
    encoder: EncoderSection = field(default_factory=EncoderSection)
    displacement: dict[str, Any] = field(default_factory=lambda: {"resolution": 64, "coarse_resolution": 16})
    albedo_head: AlbedoHeadSection = field(default_factory=AlbedoHeadSection)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelSection:
        data = dict(data or {})
        _check_keys(cls, data, "model")
        disp = dict(data.pop("displacement", None) or cls().displacement)
        for fixed in ("detail_dim", "n_expr"):
            if fixed in disp:
                raise ValueError(f"model.displacement.{fixed} is fixed (encoder.detail_dim / the face model)")
        known = {f.name for f in dataclasses.fields(DisplacementConfig)}
        if set(disp) - known:
            raise ValueError(f"model.displacement: unknown keys {sorted(set(disp) - known)}")
        return cls(
            face_model=data.get("face_model"),
            encoder=_section(EncoderSection, data.get("encoder"), "model.encoder"),
            displacement=disp,
            albedo_head=_section(AlbedoHeadSection, data.get("albedo_head"), "model.albedo_head"),
        )


@dataclass(frozen=True)
class AlbedoGANSection:
    """``albedogan``: where the pretrained AlbedoGAN comes from.

    Attributes:
        path: ``auto`` (the ``albedo`` stage's folder beside this stage's, as ``python -m training.run all``
            lays them out), a folder holding ``generator.safetensors`` + ``generator.json`` (the albedo stage's
            export), a checkpoint folder (``ckpt-…``) or a run folder with ``checkpoints/``; or ``random``: a
            freshly initialised generator built from ``G`` — for smoke tests only (logged as a warning).
        checkpoint_module: the generator to take from a checkpoint (``G_ema`` or ``G``).
        resolution: albedo resolution of a ``random`` generator.
        seed: initialisation seed of a ``random`` generator.
        G: :class:`models.stylegan2.GeneratorConfig` keys of a ``random`` generator.
    """

    path: str = "auto"
    checkpoint_module: str = "G_ema"
    resolution: int = 16
    seed: int = 0
    G: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSection:
    """``data``: what the shape model trains on.

    Attributes:
        kind: ``synthetic``, ``stylegan2_recipe`` or ``photos``.
        path: the recipe's output folder (with ``shards/``) or the photo folder.
        seed: stream / order seed.
        groups: identities per (global) batch; divisible by the number of DDP processes.
        views: images per identity (synthetic: renders of one identity; recipe: a seeded subset of its ≤ 11
            views; photos: of its sub-folder, fewer when it has fewer).
        num_identities: synthetic only: cycle through this many identities (None = an endless stream).
        albedo_size: synthetic: resolution of the ground-truth albedo it renders with.
        align: synthetic: crop and align the renders like the service's face crops (the inputs ``/reconstruct``
            gives the encoder), from their true landmarks; False = use the framed renders as they are.
        render_scale: synthetic with ``align``: renders are ``render_scale × input_size`` pixels, then cropped.
        face_fill: synthetic: fraction of the render spanned by the landmarks' box; None = (0.31, 0.38) with
            ``align`` (the aligned crop then covers ≈ the render at zoom ≈ 1, no aliasing, no black borders for
            frontal faces), (0.6, 0.8) without.
        landmark_cache: photos: JSON file of the detected landmarks; None = ``<run>/photo_landmarks.json``.
        detector: photos: face detector (``auto``, ``hog``, ``cnn``).
    """

    kind: str = "synthetic"
    path: str | None = None
    seed: int = 0
    groups: int = 4
    views: int = 2
    num_identities: int | None = None
    albedo_size: int = 64
    align: bool = True
    render_scale: float = 1.6
    face_fill: tuple[float, float] | None = None
    landmark_cache: str | None = None
    detector: str = "auto"

    def __post_init__(self) -> None:
        if self.face_fill is not None:
            object.__setattr__(self, "face_fill", tuple(float(x) for x in self.face_fill))
        if not 1.0 <= self.render_scale <= 4.0:
            raise ValueError(f"data.render_scale: expected 1–4, got {self.render_scale}")
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data.kind: expected one of {list(DATA_KINDS)}, got {self.kind!r}")
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"data.path: set it to the {self.kind} folder (data.kind={self.kind})")
        if self.groups < 1 or self.views < 1:
            raise ValueError("data.groups and data.views must be >= 1")
        if self.groups * self.views < 2:
            raise ValueError("a batch needs at least 2 images (the encoder's BatchNorm): raise data.groups or views")
        if self.num_identities is not None and self.num_identities < 1:
            raise ValueError("data.num_identities must be >= 1 (or null for an endless stream)")

    @property
    def fill(self) -> tuple[float, float]:
        """The synthetic face fill range (``face_fill`` or its default for ``align``)."""
        if self.face_fill is not None:
            return self.face_fill  # type: ignore[return-value]
        return (0.31, 0.38) if self.align else (0.6, 0.8)


@dataclass(frozen=True)
class LossSection:
    """``loss``: how the terms are computed (their weights are in ``weights``).

    Attributes:
        region: photometric region, ``auto`` (``head`` for synthetic data, ``face`` otherwise), ``head`` or
            ``face`` (see the module docstring).
        face_radius_mm: the ``face`` region: triangles within this distance of the mean face's nose tip …
        face_depth_mm: … and at most this far behind it (no ears, no back of the head).
        landmark_jaw: weight of the 17 jaw-contour landmarks (the others 1).
        shape_prior: ``generation`` (squared Mahalanobis distance under the face model's generation prior: keeps
            heads plausible; the prior is narrow in a few directions) or ``wide`` (squared L2 of the coefficients,
            i.e. the wide basis' own unit-variance prior: weaker, for faces outside the adult prior).
        chip_size: side of the face chips fed to the face-embedding network (resized to 150 inside).
        perceptual_layers: one weight per :data:`models.identity.FEATURE_LAYERS` entry.
    """

    region: str = "auto"
    face_radius_mm: float = 85.0
    face_depth_mm: float = 60.0
    landmark_jaw: float = 0.5
    shape_prior: str = "generation"
    chip_size: int = 112
    perceptual_layers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "perceptual_layers", tuple(float(x) for x in self.perceptual_layers))
        if self.shape_prior not in ("generation", "wide"):
            raise ValueError(f"loss.shape_prior: expected generation or wide, got {self.shape_prior!r}")
        if self.region not in ("auto", "head", "face"):
            raise ValueError(f"loss.region: expected auto, head or face, got {self.region!r}")
        if self.chip_size < 16:
            raise ValueError("loss.chip_size must be >= 16")


def _default_shape_weights() -> dict[str, float]:
    w = L.LossWeights().as_dict()
    w.pop("albedo_target")
    return {**w, "w_latent": 1.0, "gt_shape": 0.0, "gt_albedo": 0.0}


@dataclass(frozen=True)
class OptimSection:
    """An Adam optimiser.

    Attributes:
        lr: learning rate.
        betas: Adam betas.
        weight_decay: decoupled weight decay (AdamW) — 0 = plain Adam.
        grad_clip: clip the global gradient norm to this; None = off.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class AlbedoStepSection:
    """``albedo_step``: AlbedoGAN fine-tuning through the renderer (``training/alternate.py``).

    Attributes:
        optim: the synthesis network's Adam (StyleGAN-style betas by default).
        weights: term weights (:data:`ALBEDO_TERMS`); ``albedo_anchor`` is L2-SP, ``Σ (θ − θ₀)²`` over the
            synthesis parameters (θ₀ = the pretrained weights).
    """

    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=2e-4, betas=(0.0, 0.99), grad_clip=10.0))
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "reconstruction": 2.0,
            "albedo_symmetry": 1.0,
            "identity": 0.2,
            "perceptual": 0.1,
            "albedo_anchor": 0.01,
            "gt_albedo": 0.0,
        }
    )


@dataclass(frozen=True)
class ScheduleSection:
    """``schedule``: ``cycles × (shape_steps shape steps, then albedo_steps albedo steps)``.

    The ``shape`` stage runs ``cycles × shape_steps`` shape steps and ignores ``albedo_steps``.
    """

    shape_steps: int = 500
    albedo_steps: int = 100
    cycles: int = 1

    def __post_init__(self) -> None:
        if self.shape_steps < 0 or self.albedo_steps < 0 or self.cycles < 1 or self.shape_steps + self.albedo_steps < 1:
            raise ValueError(f"schedule: need shape_steps, albedo_steps >= 0 (not both 0) and cycles >= 1, got {self}")

    @property
    def period(self) -> int:
        return self.shape_steps + self.albedo_steps

    @property
    def total(self) -> int:
        return self.cycles * self.period

    def phase(self, step: int) -> str:
        """``"shape"`` or ``"albedo"`` for a step (0-based)."""
        return "shape" if step % self.period < self.shape_steps else "albedo"


@dataclass(frozen=True)
class EvalSection:
    """``eval``: held-out synthetic evaluation (``eval.json``).

    Attributes:
        num_samples: held-out renders.
        seed: their stream seed (must differ from a synthetic ``data.seed``).
        batch: evaluation batch.
        at_start: also evaluate the initial model (the "before" column).
        every: also evaluate every this many steps (0 = only at the start and the end).
        face_radius_mm: the "scan": points of the true neutral skin surface within this distance of the nose tip.
        scan_resolution: the scan samples the true surface at the UV grid points of this resolution (the outer
            skin only, like a scanner: the face model's skin also has vertices inside the eye sockets and lips).
        icp_iterations: rigid refinements after the landmark alignment.
        albedo_size: resolution of the held-out renders' true albedo.
    """

    num_samples: int = 32
    seed: int = 1_000_003
    batch: int = 8
    at_start: bool = True
    every: int = 0
    face_radius_mm: float = 95.0
    scan_resolution: int = 128
    icp_iterations: int = 5
    albedo_size: int = 64


@dataclass(frozen=True)
class ShapeTrainConfig:
    """The ``shape`` (or ``alternate``) section of a training configuration.

    Attributes:
        seed: model initialisation seed.
        max_steps: stop this invocation at this step (time slicing, tests); the run resumes later.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads for this run (None = torch's default). On a busy 2-core machine 1 thread is
            often faster than 2 (OpenMP threads waiting for each other).
        deterministic: deterministic CUDA algorithms (CPU always is).
        init_from: ``alternate`` only: initial encoder/decoder/head weights, ``auto`` (the ``shape`` stage's
            ``final/`` beside this stage's folder, if present), a ``final/`` folder, or None (fresh).
        model, albedogan, data, loss, optim, albedo_step, schedule, eval: the sections above.
        weights: shape-step term weights (:data:`SHAPE_TERMS`; defaults :class:`training.losses.LossWeights`).
        log_every: TensorBoard scalar interval; image_every: image-grid interval (0 = only at the end).
        checkpoint_every, keep_checkpoints, checkpoint_on_stop: checkpointing.
        progress: tqdm progress bar (rank 0).
    """

    seed: int = 0
    max_steps: int | None = None
    device: str = "auto"
    threads: int | None = None
    deterministic: bool = False
    init_from: str | None = "auto"
    model: ModelSection = field(default_factory=ModelSection)
    albedogan: AlbedoGANSection = field(default_factory=AlbedoGANSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    weights: dict[str, float] = field(default_factory=_default_shape_weights)
    optim: OptimSection = field(default_factory=OptimSection)
    albedo_step: AlbedoStepSection = field(default_factory=AlbedoStepSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log_every: int = 10
    image_every: int = 200
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    checkpoint_on_stop: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1 (or null)")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.data.kind == "synthetic" and self.data.seed == self.eval.seed:
            raise ValueError("eval.seed must differ from data.seed: the evaluation renders must be held out")
        for name, weights, known in (
            ("weights", self.weights, SHAPE_TERMS),
            ("albedo_step.weights", self.albedo_step.weights, ALBEDO_TERMS),
        ):
            unknown = sorted(set(weights) - set(known))
            if unknown:
                raise ValueError(f"{name}: unknown terms {unknown}; known: {list(known)}")
            for k, v in weights.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                    raise ValueError(f"{name}.{k}: expected a finite number >= 0, got {v!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "shape") -> ShapeTrainConfig:
        """Build from a YAML section; unknown keys raise ``ValueError`` naming them."""
        data = dict(data or {})
        _check_keys(cls, data, where)
        weights = {**_default_shape_weights(), **dict(data.pop("weights", None) or {})}
        albedo_step = dict(data.pop("albedo_step", None) or {})
        _check_keys(AlbedoStepSection, albedo_step, f"{where}.albedo_step")
        step_defaults = AlbedoStepSection()
        albedo_step_cfg = AlbedoStepSection(
            optim=_section(
                OptimSection,
                {**dataclasses.asdict(step_defaults.optim), **(albedo_step.get("optim") or {})},
                f"{where}.albedo_step.optim",
            ),
            weights={**step_defaults.weights, **dict(albedo_step.get("weights") or {})},
        )
        return cls(
            **{
                k: v
                for k, v in data.items()
                if k not in ("model", "albedogan", "data", "loss", "optim", "schedule", "eval")
            },
            model=ModelSection.from_dict(data.get("model")),
            albedogan=_section(AlbedoGANSection, data.get("albedogan"), f"{where}.albedogan"),
            data=_section(DataSection, data.get("data"), f"{where}.data"),
            loss=_section(LossSection, data.get("loss"), f"{where}.loss"),
            weights=weights,
            optim=_section(OptimSection, data.get("optim"), f"{where}.optim"),
            albedo_step=albedo_step_cfg,
            schedule=_section(ScheduleSection, data.get("schedule"), f"{where}.schedule"),
            eval=_section(EvalSection, data.get("eval"), f"{where}.eval"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what :meth:`from_dict` reads back)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def region(self) -> str:
        if self.loss.region != "auto":
            return self.loss.region
        return "head" if self.data.kind == "synthetic" else "face"

    def uses_embedder(self, albedo_steps: bool) -> bool:
        terms = [self.weights.get("identity", 0), self.weights.get("perceptual", 0)]
        if albedo_steps:
            terms += [self.albedo_step.weights.get("identity", 0), self.albedo_step.weights.get("perceptual", 0)]
        return any(t > 0 for t in terms)


# =============================================================================================================
# Small helpers
# =============================================================================================================


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy ``SeedSequence`` hashing)."""
    words: list[int] = []
    for v in values:
        v = int(v)
        words += [v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return ((int(state[1]) << 32) | int(state[0])) & ((1 << 63) - 1)


def albedo_from_generator(img: torch.Tensor) -> torch.Tensor:
    """AlbedoGAN output (B, 3, R, R) in [-1, 1], sRGB-encoded (as the albedo stage trains it) → linear [0, 1]."""
    return srgb_to_linear((img + 1.0) * 0.5)


def pixels_to_ndc(points_px: torch.Tensor, size: int) -> torch.Tensor:
    """(…, 2) pixels (x right, y down, centres at integers) of a size×size image → NDC (x right, y up)."""
    x = (points_px[..., 0] + 0.5) / size * 2.0 - 1.0
    y = 1.0 - (points_px[..., 1] + 0.5) / size * 2.0
    return torch.stack([x, y], -1)


def ndc_to_pixels(points_ndc: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`pixels_to_ndc`."""
    x = (points_ndc[..., 0] + 1.0) * 0.5 * size - 0.5
    y = (1.0 - points_ndc[..., 1]) * 0.5 * size - 0.5
    return torch.stack([x, y], -1)


def affine_theta(out_to_in: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """(B, 2, 3) pixel affines (output pixels → input pixels, centres at integers) → ``F.affine_grid`` matrices
    (normalised coordinates, ``align_corners=False``): ``q = (O/I)·A·x + ((O−1)/I)·A·1 + (2t + 1)/I − 1``."""
    m = np.asarray(out_to_in, np.float64)
    a, t = m[:, :, :2], m[:, :, 2]
    size_in, size_out = float(in_size), float(out_size)
    out = np.zeros(m.shape, np.float32)
    out[:, :, :2] = size_out / size_in * a
    out[:, :, 2] = (size_out - 1.0) / size_in * a.sum(2) + (2.0 * t + 1.0) / size_in - 1.0
    return out


def chip_theta(landmarks_px: np.ndarray, image_size: int, chip_size: int) -> np.ndarray:
    """(B, 2, 3) ``F.affine_grid`` matrices that cut dlib's aligned face chip
    (:func:`models.identity.dlib_chip_matrix` of the 68 landmarks) out of image_size² images."""
    from models.identity import DLIB_CHIP_PADDING, dlib_chip_matrix

    pts = np.asarray(landmarks_px, np.float64)
    mats = [dlib_chip_matrix(p, size=int(chip_size), padding=DLIB_CHIP_PADDING) for p in pts]
    return affine_theta(np.stack(mats) if mats else np.zeros((0, 2, 3)), image_size, chip_size)


def align_to_template(
    image: torch.Tensor,
    landmarks_px: torch.Tensor,
    visibility: torch.Tensor,
    mask: torch.Tensor | None,
    out_size: int,
    crop_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Crop and align images like the service's face alignment (:func:`facecore.detect.alignment_matrix`: eye
    centres and nose bottom onto the template, zoomed out by ``crop_scale``), in torch (bilinear, black outside).

    Args:
        image: (B, C, H, W) images (square).
        landmarks_px: (B, 68, 2) their landmarks, pixels.
        visibility: (B, 68) landmark weights; points that leave the crop get 0.
        mask: (B, 1, H, W) or None, warped like the images.
        out_size: the crop side.
        crop_scale: the alignment's zoom-out.

    Returns:
        (images (B, C, S, S), landmarks (B, 68, 2) in crop pixels, visibility, mask).
    """
    from facecore.detect import alignment_matrix, invert_affine

    pts = landmarks_px.detach().cpu().double().numpy()
    to_crop = np.stack([alignment_matrix(p, out_size, crop_scale) for p in pts])  # image → crop pixels
    to_image = np.stack([invert_affine(m) for m in to_crop])
    theta = torch.from_numpy(affine_theta(to_image, image.shape[-1], out_size)).to(image)
    grid = F.affine_grid(theta, [image.shape[0], image.shape[1], out_size, out_size], align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask is not None:
        mask = F.grid_sample(mask.to(image.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = torch.from_numpy(to_crop).to(landmarks_px)
    lm = landmarks_px @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    inside = ((lm >= -0.5) & (lm <= out_size - 0.5)).all(-1)
    return warped, lm, visibility.to(image.dtype) * inside.to(image.dtype), mask


def cut_chips(images: torch.Tensor, theta: torch.Tensor, chip_size: int) -> torch.Tensor:
    """(B, 3, S, S) images → (B, 3, C, C) face chips (bilinear, zeros outside)."""
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], 3, chip_size, chip_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# =============================================================================================================
# Batches and data sources
# =============================================================================================================


@dataclass(frozen=True, eq=False)
class ShapeBatch:
    """A training batch of the shape model (channels first).

    Attributes:
        image: (B, 3, S, S) sRGB-encoded RGB in [0, 1] (the encoder's input).
        landmarks_px: (B, 68, 2) iBUG landmarks, pixels (x right, y down, centres at integers).
        visibility: (B, 68) float weights of the landmarks (0 = hidden / unknown).
        identity: (B,) long identity labels (only equality matters); images of a group are contiguous.
        chip_theta: (B, 2, 3) face-chip sampling matrices (:func:`chip_theta`).
        w: (B, w_dim) the known StyleGAN2 w of each image (recipe), else None.
        mask: (B, 1, S, S) ground-truth head mask (synthetic), else None.
        gt: the synthetic ground truth (:class:`training.data.synthetic.SyntheticBatch`), else None.
    """

    image: torch.Tensor
    landmarks_px: torch.Tensor
    visibility: torch.Tensor
    identity: torch.Tensor
    chip_theta: torch.Tensor
    w: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    gt: Any = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> ShapeBatch:
        def move(x: Any) -> Any:
            return None if x is None else x.to(device)

        return dataclasses.replace(
            self,
            image=self.image.to(device),
            landmarks_px=self.landmarks_px.to(device),
            visibility=self.visibility.to(device),
            identity=self.identity.to(device),
            chip_theta=self.chip_theta.to(device),
            w=move(self.w),
            mask=move(self.mask),
            gt=move(self.gt),
        )


class GroupSource:
    """A source of identity groups: ``batch(step, rank, world_size)`` is deterministic in its arguments.

    Step ``s`` of rank ``r`` takes the groups at stream positions ``(s·world + r)·g … + g − 1`` with
    ``g = data.groups / world``, so every rank gets whole groups and the stream position is the step.
    """

    def __init__(self, cfg: DataSection, image_size: int, chip_size: int):
        self.cfg = cfg
        self.image_size = image_size
        self.chip_size = chip_size

    def groups_per_rank(self, world_size: int) -> int:
        if self.cfg.groups % world_size:
            raise ValueError(f"data.groups={self.cfg.groups} must be divisible by the {world_size} processes")
        return self.cfg.groups // world_size

    def positions(self, step: int, rank: int, world_size: int) -> list[int]:
        g = self.groups_per_rank(world_size)
        first = (step * world_size + rank) * g
        return list(range(first, first + g))

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> ShapeBatch:
        return self.groups_batch(self.positions(step, rank, world_size))

    def groups_batch(self, positions: Sequence[int]) -> ShapeBatch:
        raise NotImplementedError

    def _finish(
        self,
        image: torch.Tensor,
        landmarks_px: torch.Tensor,
        visibility: torch.Tensor,
        identity: torch.Tensor,
        **extra: Any,
    ) -> ShapeBatch:
        theta = torch.from_numpy(chip_theta(landmarks_px.cpu().numpy(), self.image_size, self.chip_size))
        theta = theta.to(image.device)
        return ShapeBatch(
            image=image,
            landmarks_px=landmarks_px.float(),
            visibility=visibility.float(),
            identity=identity.long().to(image.device),
            chip_theta=theta,
            **extra,
        )


class SyntheticGroups(GroupSource):
    """Identity groups of synthetic renders with full ground truth (:mod:`training.data.synthetic`).

    Group ``p`` (stream position; modulo ``num_identities`` when set) renders samples ``p·views + v``: each keeps
    its own expression, pose, light, framing and background, and takes the identity code and the albedo of the
    group's first sample. Identity label = the group number. With ``data.align`` the renders
    (``render_scale × image_size`` pixels) are cropped like the service's face crops (:func:`align_to_template`).
    """

    def __init__(
        self,
        cfg: DataSection,
        image_size: int,
        chip_size: int,
        face_model: FaceModel,
        device: str = "cpu",
        crop_scale: float = 1.0,
    ):
        super().__init__(cfg, image_size, chip_size)
        from training.data.synthetic import SyntheticConfig, SyntheticFaces

        self.crop_scale = crop_scale
        size = int(round(image_size * cfg.render_scale)) if cfg.align else image_size
        self.faces = SyntheticFaces(
            SyntheticConfig(image_size=size, albedo_size=cfg.albedo_size, seed=cfg.seed, face_fill=cfg.fill),
            face_model,
            device,
        )

    def groups_batch(self, positions: Sequence[int]) -> ShapeBatch:
        v = self.cfg.views
        groups = [p % self.cfg.num_identities if self.cfg.num_identities else p for p in positions]
        members = [g * v + k for g in groups for k in range(v)]
        gt = render_synthetic_groups(self.faces, members, v)
        identity = torch.tensor([g for g in groups for _ in range(v)])
        image, lm, vis, mask = gt.image_srgb, gt.landmarks_px, gt.landmarks_visible.float(), gt.mask
        if self.cfg.align:
            image, lm, vis, mask = align_to_template(image, lm, vis, mask, self.image_size, self.crop_scale)
        return self._finish(image, lm, vis, identity, mask=mask, gt=gt)


def render_synthetic_groups(faces: Any, indices: Sequence[int], views: int) -> Any:
    """Render ``indices`` (consecutive runs of ``views`` form a group) with each group's first identity and albedo.

    Returns:
        :class:`training.data.synthetic.SyntheticBatch` (its ``codes.shape`` and albedo are the group's).
    """
    from training.data.synthetic import AlbedoParams

    albedo, scene = faces.sample_params(indices)
    anchor = torch.tensor([(i // views) * views for i in range(len(indices))])
    albedo = AlbedoParams.select(albedo, anchor)
    codes = FaceCodes(scene.codes.shape[anchor], scene.codes.expression, scene.codes.pose)
    scene = dataclasses.replace(scene, codes=codes)
    return faces.render(torch.tensor(list(indices)), albedo.to(faces.device), scene.to(faces.device))


def _epoch_order(blocks: Sequence[Sequence[int]], seed: int, epoch: int) -> list[int]:
    """A permutation of all items: the blocks in a seeded order, each block's items permuted (block-local
    shuffling keeps one shard in memory at a time)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x0DE7))
    order: list[int] = []
    for b in torch.randperm(len(blocks), generator=g).tolist():
        items = list(blocks[b])
        order += [items[i] for i in torch.randperm(len(items), generator=g).tolist()]
    return order


class _AlignedGroups(GroupSource):
    """Shared by the recipe and photo sources: epoch orders over groups, aligned crops from landmarks."""

    def __init__(self, cfg: DataSection, image_size: int, chip_size: int, crop_scale: float):
        super().__init__(cfg, image_size, chip_size)
        self.crop_scale = crop_scale
        self.group_items: list[list[int]] = []  # group → item indices
        self.blocks: list[list[int]] = []  # block → group indices
        self._order: tuple[int, list[int]] | None = None

    def _group_at(self, position: int) -> int:
        n = len(self.group_items)
        epoch = position // n
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(self.blocks, self.cfg.seed, epoch))
        return self._order[1][position % n]

    def _views(self, group: int, position: int) -> list[int]:
        items = self.group_items[group]
        if len(items) <= self.cfg.views:
            return list(items)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, position, 0x51E7))
        return sorted(items[i] for i in torch.randperm(len(items), generator=g)[: self.cfg.views].tolist())

    def _load(self, item: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(H, W, 3) uint8 image, (68, 2) landmarks, extra fields."""
        raise NotImplementedError

    def groups_batch(self, positions: Sequence[int]) -> ShapeBatch:
        from facecore.detect import align_face, transform_points

        images, points, ids, ws = [], [], [], []
        for p in positions:
            group = self._group_at(p)
            for item in self._views(group, p):
                img, pts, extra = self._load(item)
                aligned = align_face(img, pts, self.image_size, self.crop_scale)
                images.append(aligned.crop)
                points.append(transform_points(pts, aligned.matrix))
                ids.append(group)
                if "w" in extra:
                    ws.append(extra["w"])
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        lm = torch.from_numpy(np.stack(points)).float()
        w = torch.from_numpy(np.stack(ws)).float() if ws else None
        return self._finish(image, lm, torch.ones(lm.shape[:2]), torch.tensor(ids), w=w)


class RecipeGroups(_AlignedGroups):
    """The paper's StyleGAN2 recipe (:class:`training.data.stylegan_recipe.ShardDataset`): identity groups of
    up to 11 w-space edits with detected landmarks and the known w. Shards are visited in a seeded order and
    groups shuffled within a shard (one shard in memory at a time)."""

    def __init__(self, cfg: DataSection, image_size: int, chip_size: int, crop_scale: float):
        super().__init__(cfg, image_size, chip_size, crop_scale)
        from training.data.stylegan_recipe import ShardDataset

        self.dataset = ShardDataset(cfg.path)
        start = 0
        for f in self.dataset._files:
            with np.load(f) as z:
                ident = z["identity"]
            block = []
            for value in np.unique(ident):
                block.append(len(self.group_items))
                self.group_items.append((start + np.flatnonzero(ident == value)).tolist())
            self.blocks.append(block)
            start += len(ident)
        if not self.group_items:
            raise ValueError(f"{cfg.path}: the recipe dataset holds no images")
        self.w_dim = int(self.dataset[0]["w"].shape[-1])

    def _load(self, item: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        row = self.dataset[item]
        return row["image"], row["landmarks"].astype(np.float64), {"w": row["w"]}


class PhotoGroups(_AlignedGroups):
    """A folder of face photos (jpg/png, recursive). Landmarks are detected once (dlib, 68 points) and cached in
    a JSON file keyed by relative path, size and modification time; photos without a face are skipped (logged).
    Identity = the photo's sub-folder (photos directly in the folder are each their own identity)."""

    SUFFIXES = (".jpg", ".jpeg", ".png")

    def __init__(
        self, cfg: DataSection, image_size: int, chip_size: int, crop_scale: float, cache: Path, detect: bool = True
    ):
        super().__init__(cfg, image_size, chip_size, crop_scale)
        root = Path(cfg.path)
        if not root.is_dir():
            raise FileNotFoundError(f"data.path: {root} is not a folder of photos")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"data.path: no .jpg/.jpeg/.png photos under {root}")
        self.root = root
        table = self.landmark_table(files, cache, detect)
        self.files: list[Path] = []
        self.points: list[np.ndarray] = []
        by_identity: dict[str, list[int]] = {}
        for f in files:
            pts = table[f.relative_to(root).as_posix()]["points"]
            if pts is None:
                continue
            rel = f.relative_to(root)
            key = rel.parent.as_posix() if rel.parent != Path(".") else rel.as_posix()
            by_identity.setdefault(key, []).append(len(self.files))
            self.files.append(f)
            self.points.append(np.asarray(pts, np.float64))
        if not self.files:
            raise ValueError(f"data.path: no face was found in any of the {len(files)} photos under {root}")
        self.group_items = [by_identity[k] for k in sorted(by_identity)]
        self.blocks = [list(range(len(self.group_items)))]
        self._cache: dict[int, np.ndarray] = {}

    def landmark_table(self, files: Sequence[Path], cache: Path, detect: bool) -> dict[str, dict[str, Any]]:
        """``{relative path: {"size", "mtime", "points": (68, 2) list or None}}``, detecting what is missing."""
        table: dict[str, dict[str, Any]] = json.loads(cache.read_text()) if cache.is_file() else {}
        missing = []
        for f in files:
            rel, st = f.relative_to(self.root).as_posix(), f.stat()
            entry = table.get(rel)
            if entry is None or entry.get("size") != st.st_size or entry.get("mtime") != st.st_mtime_ns:
                missing.append((f, rel, st))
        if missing and not detect:
            raise FileNotFoundError(f"{cache}: landmarks of {len(missing)} photos are missing (detect on rank 0)")
        if missing:
            from PIL import Image

            from models.landmarks import NoFaceError, landmarks68

            logger.info("detecting 68 landmarks in %d photos (cached in %s)", len(missing), cache)
            for f, rel, st in missing:
                with Image.open(f) as im:
                    img = np.asarray(im.convert("RGB"))
                try:
                    pts = landmarks68(img, detector=self.cfg.detector).tolist()  # type: ignore[arg-type]
                except NoFaceError:
                    logger.warning("no face in %s: skipped", f)
                    pts = None
                table[rel] = {"size": st.st_size, "mtime": st.st_mtime_ns, "points": pts}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps(table))
            tmp.replace(cache)
        return table

    def _load(self, item: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if item not in self._cache:
            from PIL import Image

            with Image.open(self.files[item]) as im:
                self._cache[item] = np.asarray(im.convert("RGB"))
        return self._cache[item], self.points[item], {}


# =============================================================================================================
# The shape model
# =============================================================================================================


@dataclass(frozen=True, eq=False)
class ShapeOutputs:
    """What :class:`ShapeModel` predicts for a batch.

    Attributes:
        codes: the encoder's :class:`models.encoder.EncoderOutputs`.
        displacement: (B, 1, R, R) UV displacement along the normals, metres.
        ws: (B, num_ws, w_dim) AlbedoGAN styles from the albedo head.
    """

    codes: EncoderOutputs
    displacement: torch.Tensor
    ws: torch.Tensor


class ShapeModel(nn.Module):
    """Encoder + displacement decoder + albedo head: (B, 3, S, S) RGB in [0, 1] → :class:`ShapeOutputs`.

    Args:
        encoder: the :class:`models.encoder.Encoder`.
        displacement: the :class:`models.displacement.DisplacementDecoder` (same detail size).
        albedo_head: the :class:`models.albedo_head.AlbedoHead` (fed the encoder backbone's features).
        jaw_index: the face model's jaw joint (the decoder's jaw-pose input).
        detach_head_features: stop the head's gradient at the backbone features.
    """

    def __init__(
        self,
        encoder: Encoder,
        displacement: DisplacementDecoder,
        albedo_head: AlbedoHead,
        jaw_index: int,
        detach_head_features: bool = False,
    ):
        super().__init__()
        if encoder.config.detail_dim != displacement.config.detail_dim:
            raise ValueError("encoder and displacement decoder disagree on the detail-code size")
        self.encoder = encoder
        self.displacement = displacement
        self.albedo_head = albedo_head
        self.jaw_index = int(jaw_index)
        self.detach_head_features = detach_head_features

    def forward(self, image: torch.Tensor) -> ShapeOutputs:
        captured: list[torch.Tensor] = []
        handle = self.encoder.backbone.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            codes = self.encoder(image)
        finally:
            handle.remove()
        features = captured[-1].detach() if self.detach_head_features else captured[-1]
        ws = self.albedo_head(features)
        disp = self.displacement(codes.detail, codes.expression, codes.pose[:, self.jaw_index])
        return ShapeOutputs(codes=codes, displacement=disp, ws=ws)


def build_shape_model(cfg: ModelSection, face_model: FaceModel, generator: nn.Module) -> ShapeModel:
    """Fresh networks sized from the face model and the generator (the head's W statistics from ``generator``)."""
    e = cfg.encoder
    enc_cfg = EncoderConfig.for_face_model(
        face_model,
        predicted_joints=e.predicted_joints,
        crop_scale=e.crop_scale,
        depth=e.depth,
        detail_dim=e.detail_dim,
        input_size=e.input_size,
        head_hidden=e.head_hidden,
        dropout=e.dropout,
        fc_grid=e.fc_grid,
    )
    disp_cfg = DisplacementConfig.for_face_model(face_model, detail_dim=e.detail_dim, **cfg.displacement)
    h = cfg.albedo_head
    head = AlbedoHead.from_generator(
        generator,
        in_features=512,
        n_samples=h.w_samples,
        per_layer=h.per_layer,
        hidden=h.hidden,
        num_layers=h.num_layers,
    )
    encoder = Encoder.from_config(enc_cfg)
    if e.arcface_weights:
        from models.arcface_loader import load_arcface_weights

        load_arcface_weights(encoder, e.arcface_weights)
    start_at_prior_mean(encoder, face_model)
    return ShapeModel(
        encoder,
        DisplacementDecoder.from_config(disp_cfg),
        head,
        face_model.joint_names.index("jaw"),
        h.detach_features,
    )


@torch.no_grad()
def start_at_prior_mean(encoder: Encoder, face_model: FaceModel) -> None:
    """Make a fresh encoder predict the generation prior's mean identity instead of the wide basis' mean.

    The encoder's last layer starts at zero weight with the initial prediction as its bias (shape code 0 = the
    mean of the *wide* basis, built from all ages and face changes); the plausible-adult prior the shape term
    regularises towards has its own mean (≈ 5 wide-basis units away; the prior's Mahalanobis distance of code 0
    is ≈ 5700 against ≈ K for its own samples). The shape codes are the first ``n_shape`` outputs of
    ``encoder.out`` (:class:`models.encoder.Encoder`'s output order).
    """
    K = encoder.config.n_shape
    if tuple(face_model.shape_prior_mean.shape) != (K,):
        raise ValueError("the encoder's shape size does not match the face model's prior")
    encoder.out.bias[:K] = face_model.shape_prior_mean.to(encoder.out.bias)


# =============================================================================================================
# Rendering pipeline (buffers shared by the steps and the metrics)
# =============================================================================================================


class FacePipeline(nn.Module):
    """The non-trainable machinery around the networks: face model, renderer, UV sampling and masks.

    Args:
        face_model: the face model.
        image_size: rendered image side (the encoder input).
        displacement_resolution: the displacement map side (UV grid sampling of the detail normal map).
        albedo_resolution: AlbedoGAN's output side (UV mask of the albedo symmetry term).
        face_radius_mm, face_depth_mm: the ``face`` photometric region (see :class:`LossSection`).
        landmark_jaw: jaw-contour landmark weight.
    """

    def __init__(
        self,
        face_model: FaceModel,
        image_size: int,
        displacement_resolution: int,
        albedo_resolution: int,
        face_radius_mm: float = 85.0,
        face_depth_mm: float = 60.0,
        landmark_jaw: float = 0.5,
    ):
        super().__init__()
        self.face_model = face_model
        self.image_size = image_size
        self.renderer = MeshRenderer.from_face_model(face_model, image_size)
        self.sampling = DetailedMesh(face_model, displacement_resolution)
        self.register_buffer("disp_mask", uv_texel_mask(face_model, displacement_resolution, "any"), persistent=False)
        self.register_buffer("albedo_mask", uv_texel_mask(face_model, albedo_resolution, "any"), persistent=False)
        self.register_buffer("landmark_weights", L.ibug68_landmark_weights(landmark_jaw), persistent=False)
        region = face_region(face_model, face_radius_mm / 1000.0, face_depth_mm / 1000.0)
        self.register_buffer("face_region", region.float(), persistent=False)

    def geometry(self, codes: EncoderOutputs, displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed coarse vertices (B, V, 3) and the tangent-space detail normal map (B, 3, R, R)."""
        verts = self.face_model(codes.shape, codes.expression, codes.pose)
        return verts, self.sampling.normal_map(verts, displacement)

    def render(
        self,
        verts: torch.Tensor,
        camera: torch.Tensor,
        albedo_linear: torch.Tensor,
        light: torch.Tensor,
        normal_map: torch.Tensor | None,
    ) -> RenderOutputs:
        return self.renderer(
            verts, WeakPerspectiveCamera.from_vector(camera), albedo_linear, light, normal_map_uv=normal_map
        )

    def region_mask(self, render: RenderOutputs, region: str, gt_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, S, S) photometric weights: the rendered pixels, restricted to the region."""
        mask = render.mask
        if region == "face":
            fid = render.face_id
            mask = mask * torch.where(fid >= 0, self.face_region[fid.clamp_min(0)], 0.0)[:, None]
        if gt_mask is not None:
            mask = mask * gt_mask.to(mask.dtype)
        return mask

    def landmarks_ndc(self, verts: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """(B, 68, 2) projected model landmarks in NDC."""
        lm = self.face_model.landmarks(verts)
        return WeakPerspectiveCamera.from_vector(camera).project(lm)[..., :2]


def face_region(face_model: FaceModel, radius_m: float, depth_m: float) -> torch.Tensor:
    """(F,) bool: triangles of the mean head whose centroid lies within ``radius_m`` of the nose tip and at most
    ``depth_m`` behind it (the face, without ears, neck back and scalp)."""
    with torch.no_grad():
        mean = face_model.mean
        tip = face_model.landmarks(mean[None])[0, NOSE_TIP]
        centroid = mean[face_model.faces].mean(1)
        near = (centroid - tip).norm(dim=-1) < radius_m
        front = centroid[:, 2] > tip[2] - depth_m
    return (near & front).cpu()


# =============================================================================================================
# Loss terms
# =============================================================================================================


@dataclass(frozen=True, eq=False)
class StepOutputs:
    """Everything a step computed that logging may want (detached use only)."""

    render: RenderOutputs
    composite: torch.Tensor
    albedo_linear: torch.Tensor
    verts: torch.Tensor
    normal_map: torch.Tensor
    camera: torch.Tensor


class LossContext:
    """Per-run constants of the loss computation: pipeline, embedder, weights, region."""

    def __init__(
        self,
        pipeline: FacePipeline,
        embedder: nn.Module | None,
        loss: LossSection,
        region: str,
    ):
        self.pipeline = pipeline
        self.embedder = embedder
        self.loss = loss
        self.region = region


def photometric_terms(
    ctx: LossContext,
    batch: ShapeBatch,
    render: RenderOutputs,
    need: Mapping[str, float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Reconstruction, identity and perceptual terms of a render against the batch's images.

    Returns:
        (terms, composite): composite is the render over the image, sRGB (B, 3, S, S).
    """
    pred = linear_to_srgb(render.image)
    composite = render.mask * pred + (1.0 - render.mask) * batch.image
    mask = ctx.pipeline.region_mask(render, ctx.region, batch.mask)
    terms = {"reconstruction": L.reconstruction_loss(pred, batch.image, mask)}
    want_id, want_pc = need.get("identity", 0) > 0, need.get("perceptual", 0) > 0
    if (want_id or want_pc) and ctx.embedder is None:
        raise ValueError("identity/perceptual weights are set but no face-embedding network was loaded")
    if want_id or want_pc:
        size = ctx.loss.chip_size
        chip_pred = cut_chips(composite, batch.chip_theta, size)
        with torch.no_grad():
            chip_true = cut_chips(batch.image, batch.chip_theta, size)
        if want_id:
            with torch.no_grad():
                target = ctx.embedder(chip_true)
            terms["identity"] = L.identity_loss(ctx.embedder(chip_pred), target)
        if want_pc:
            with torch.no_grad():
                target_f = ctx.embedder.features(chip_true)
            terms["perceptual"] = L.perceptual_loss(
                ctx.embedder.features(chip_pred), target_f, ctx.loss.perceptual_layers
            )
    return terms, composite


def gt_shape_error_mm(face_model: FaceModel, shape: torch.Tensor, gt_shape: torch.Tensor) -> torch.Tensor:
    """Mean per-vertex distance (mm) between the predicted and true neutral identity meshes (model frame)."""
    pred = face_model(shape)
    true = face_model(gt_shape)
    return 1000.0 * (pred - true).norm(dim=-1).mean()


def gt_albedo_error(albedo_linear: torch.Tensor, gt_albedo: torch.Tensor, uv_mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE of a linear albedo against the true one (resized to its resolution with antialiasing)."""
    from training.data.images import resize_uv

    target = resize_uv(gt_albedo.to(albedo_linear.dtype), albedo_linear.shape[-1])
    return L.reconstruction_loss(albedo_linear, target, uv_mask)


def shape_terms(
    ctx: LossContext,
    out: ShapeOutputs,
    batch: ShapeBatch,
    generator: nn.Module,
    head: AlbedoHead,
    weights: Mapping[str, float],
) -> tuple[dict[str, torch.Tensor], StepOutputs]:
    """The shape step's loss terms (unweighted scalars keyed by :data:`SHAPE_TERMS`; see the module docstring).

    Args:
        ctx: the pipeline, embedder and loss settings.
        out: the shape model's outputs for ``batch.image``.
        batch: the batch.
        generator: AlbedoGAN (frozen: its parameters get no gradient; the head's ws do).
        head: the albedo head (its W statistics normalise ``w_latent``).
        weights: the term weights (terms with weight 0 that cost a network pass are skipped).
    """
    p = ctx.pipeline
    fm = p.face_model
    codes = out.codes
    verts, normal_map = p.geometry(codes, out.displacement)
    known_w = batch.w is not None
    ws = batch.w[:, None, :].expand(-1, generator.num_ws, -1) if known_w else out.ws
    albedo = albedo_from_generator(generator.synthesis(ws, noise_mode="const"))
    render = p.render(verts, codes.camera, albedo, codes.light, normal_map)
    terms, composite = photometric_terms(ctx, batch, render, weights)
    terms["albedo_symmetry"] = L.albedo_symmetry_loss(albedo, p.albedo_mask)
    if known_w:
        diff = head.normalise(out.ws) - head.normalise(batch.w.to(out.ws.dtype))[:, None, :]
        terms["w_latent"] = diff.square().mean()
    S = p.image_size
    terms["landmark"] = L.landmark_loss(
        p.landmarks_ndc(verts, codes.camera),
        pixels_to_ndc(batch.landmarks_px, S),
        weights=p.landmark_weights,
        visibility=batch.visibility,
    )
    terms["shape_centre"] = L.shape_centre_loss(codes.shape, batch.identity)
    if ctx.loss.shape_prior == "generation":
        terms["shape_prior"] = L.l2_prior(codes.shape, fm.shape_prior_mean, fm.shape_prior_chol)
    else:
        terms["shape_prior"] = L.l2_prior(codes.shape)
    terms["expression_prior"] = L.l2_prior(codes.expression)
    terms["detail_prior"] = L.l2_prior(codes.detail)
    disp_mm = 1000.0 * out.displacement
    terms["displacement_smoothness"] = L.displacement_smoothness(disp_mm, p.disp_mask)
    terms["displacement_magnitude"] = L.displacement_magnitude(disp_mm, p.disp_mask)
    if batch.gt is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights.get("gt_shape", 0) > 0):
            terms["gt_shape"] = gt_shape_error_mm(fm, codes.shape, batch.gt.codes.shape)
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights.get("gt_albedo", 0) > 0):
            terms["gt_albedo"] = gt_albedo_error(albedo, batch.gt.albedo_uv, p.albedo_mask)
    return terms, StepOutputs(render, composite, albedo, verts, normal_map, codes.camera)


# =============================================================================================================
# Metrics: NoW-style scan-to-mesh error, landmark NME, albedo error on seen texels
# =============================================================================================================


def _safe(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() > 1e-30, x, torch.full_like(x, 1e-30))


def closest_point_on_triangle(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Closest point of triangle (a, b, c) to p; all (…, 3). Voronoi-region test of the triangle's vertices,
    edges and face (Ericson, *Real-Time Collision Detection* §5.1.5), vectorised with ``where`` in reverse
    priority order."""
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = _safe(va + vb + vc)
    out = a + ab * (vb / denom)[..., None] + ac * (vc / denom)[..., None]  # inside the face
    e = (d4 - d3) / _safe((d4 - d3) + (d5 - d6))
    out = torch.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[..., None], b + (c - b) * e[..., None], out)
    out = torch.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[..., None], a + ac * (d2 / _safe(d2 - d6))[..., None], out)
    out = torch.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
    out = torch.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[..., None], a + ab * (d1 / _safe(d1 - d3))[..., None], out)
    out = torch.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
    return torch.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)


class MeshDistance:
    """Point-to-surface distance for one triangle topology.

    For every query point the ``k`` nearest vertices are found and the exact closest point is taken over their
    incident triangles (exact whenever the closest triangle touches one of those vertices — always the case for
    points near a reasonably even mesh).

    Args:
        faces: (F, 3) long triangles.
        n_verts: V.
        k: nearest vertices per query point.
    """

    def __init__(self, faces: torch.Tensor, n_verts: int, k: int = 8):
        f = faces.detach().cpu().long().numpy()
        incident: list[list[int]] = [[] for _ in range(n_verts)]
        for i, tri in enumerate(f):
            for v in tri:
                incident[v].append(i)
        width = max(1, max(len(x) for x in incident))
        adj = np.full((n_verts, width), -1, np.int64)
        for v, lst in enumerate(incident):
            adj[v, : len(lst)] = lst
        self.faces = torch.from_numpy(f)
        self.adjacency = torch.from_numpy(adj)
        self.k = k

    def closest(
        self, points: torch.Tensor, verts: torch.Tensor, chunk: int = 2048
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (P, 3), verts (V, 3) → closest surface points (P, 3) and distances (P,)."""
        faces, adj = self.faces.to(verts.device), self.adjacency.to(verts.device)
        best_pts, best_d = [], []
        k = min(self.k, verts.shape[0])
        for start in range(0, points.shape[0], chunk):
            p = points[start : start + chunk]
            knn = torch.cdist(p, verts).topk(k, largest=False).indices  # (P, k)
            cand = adj[knn].flatten(1)  # (P, k·D), −1 = none
            valid = cand >= 0
            tri = verts[faces[cand.clamp_min(0)]]  # (P, C, 3, 3)
            q = closest_point_on_triangle(p[:, None], tri[..., 0, :], tri[..., 1, :], tri[..., 2, :])
            d = (q - p[:, None]).norm(dim=-1).masked_fill(~valid, float("inf"))
            i = d.argmin(1)
            best_pts.append(q[torch.arange(len(p)), i])
            best_d.append(d[torch.arange(len(p)), i])
        return torch.cat(best_pts), torch.cat(best_d)


def umeyama(
    src: torch.Tensor, dst: torch.Tensor, with_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity (or rigid, ``with_scale=False``) ``dst ≈ s·R·src + t`` for (N, 3) point sets.

    Returns:
        (s, R (3, 3), t (3,)), no reflection (Umeyama 1991).
    """
    src64, dst64 = src.double(), dst.double()
    mu_s, mu_d = src64.mean(0), dst64.mean(0)
    xs, xd = src64 - mu_s, dst64 - mu_d
    cov = xd.T @ xs / len(src64)
    U, S, Vt = torch.linalg.svd(cov)
    d = torch.ones(3, dtype=torch.float64, device=src.device)
    if torch.det(U) * torch.det(Vt) < 0:
        d[2] = -1.0
    R = U @ torch.diag(d) @ Vt
    var_s = xs.square().sum() / len(src64)
    s = (S * d).sum() / var_s if with_scale else torch.ones((), dtype=torch.float64, device=src.device)
    t = mu_d - s * R @ mu_s
    return s.to(src.dtype), R.to(src.dtype), t.to(src.dtype)


def now_scan_to_mesh(
    scan: torch.Tensor,
    scan_landmarks: torch.Tensor,
    verts: torch.Tensor,
    landmarks: torch.Tensor,
    distance: MeshDistance,
    icp_iterations: int = 5,
    icp_points: int = 1500,
) -> torch.Tensor:
    """NoW-style error of one predicted mesh against one scan: (P,) distances in the units of the inputs.

    The mesh is aligned to the scan by the similarity that maps its landmarks onto the scan's (7 NoW
    landmarks), then by ``icp_iterations`` rigid refinements (closest mesh points of the scan points → rigid
    Umeyama); the result is the distance of every scan point to the aligned mesh surface.

    Args:
        scan: (P, 3) scan points.
        scan_landmarks: (L, 3) the scan's landmarks.
        verts: (V, 3) predicted mesh vertices (topology of ``distance``).
        landmarks: (L, 3) the predicted mesh's landmarks.
        distance: the :class:`MeshDistance` of the predicted topology.
        icp_iterations: rigid refinements.
        icp_points: the refinements use an even subset of at most this many scan points.
    """
    s, R, t = umeyama(landmarks, scan_landmarks, with_scale=True)
    v = s * verts @ R.T + t
    subset = scan[:: max(1, -(-scan.shape[0] // icp_points))]  # the rigid fits need no more points
    for _ in range(icp_iterations):
        closest, _ = distance.closest(subset, v)
        _, R, t = umeyama(closest, subset, with_scale=False)
        v = v @ R.T + t
    return distance.closest(scan, v)[1]


@dataclass
class EvalSet:
    """Held-out synthetic renders and what the metrics need of their ground truth (built once per run)."""

    batches: list[ShapeBatch]  # the encoder's inputs (aligned like the training data) + ground truth, on CPU
    scans: list[torch.Tensor]  # per sample (P_i, 3) true neutral outer skin surface near the nose tip
    scan_landmarks: list[torch.Tensor]  # per sample (7, 3)
    seen: list[torch.Tensor]  # per batch (B, 1, Ra, Ra) seen-texel masks


def build_eval_set(cfg: ShapeTrainConfig, face_model: FaceModel, albedo_resolution: int) -> EvalSet:
    """Render ``eval.num_samples`` held-out faces (stream ``eval.seed``, framed and aligned like the synthetic
    training data) and precompute their scans and seen texels."""
    e, d = cfg.eval, cfg.data
    data = DataSection(
        kind="synthetic",
        seed=e.seed,
        groups=e.batch,
        views=1,
        albedo_size=e.albedo_size,
        align=d.align if d.kind == "synthetic" else True,
        render_scale=d.render_scale,
        face_fill=d.face_fill if d.kind == "synthetic" else None,
    )
    enc = cfg.model.encoder
    source = SyntheticGroups(data, enc.input_size, cfg.loss.chip_size, face_model, "cpu", enc.crop_scale)
    fm = source.faces.face_model
    scanner = DetailedMesh(fm, e.scan_resolution)
    seen_texels = SeenTexels(fm, albedo_resolution)
    out = EvalSet([], [], [], [])
    for start in range(0, e.num_samples, e.batch):
        batch = source.groups_batch(range(start, min(start + e.batch, e.num_samples)))
        out.batches.append(batch)
        gt = batch.gt
        for scan, scan_lm in now_scans(fm, scanner, gt.codes.shape, e.face_radius_mm):
            out.scans.append(scan)
            out.scan_landmarks.append(scan_lm)
        out.seen.append(seen_texels(gt.camera, gt.verts_world))
    return out


@torch.no_grad()
def now_scans(
    face_model: FaceModel, scanner: DetailedMesh, shape: torch.Tensor, radius_mm: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """NoW-style "scans" of true identities: per row of ``shape`` (B, K), the neutral outer skin surface sampled
    densely (``scanner``) within ``radius_mm`` of the nose tip, (P, 3) metres, and its 7 NoW landmarks (7, 3)."""
    neutral = face_model(shape)
    lm = face_model.landmarks(neutral)
    surface = scanner(neutral)  # (B, N, 3)
    out = []
    for i in range(len(shape)):
        near = (surface[i] - lm[i, NOSE_TIP]).norm(dim=-1) < radius_mm / 1000.0
        out.append((surface[i][near], lm[i, list(NOW_LANDMARKS)]))
    return out


class SeenTexels:
    """Which albedo texels a render shows: texels whose triangle is visible (z-buffer at 256 px).

    Args:
        face_model: the rendered model (topology and UV layout).
        resolution: the albedo map's side.
    """

    def __init__(self, face_model: FaceModel, resolution: int):
        self.texel_face = uv_fragments(face_model.uv, face_model.uv_faces, resolution).face_id[0]  # (R, R)
        self.renderer = MeshRenderer.from_face_model(face_model, 256)
        self.n_faces = face_model.faces.shape[0]

    @torch.no_grad()
    def __call__(self, camera: WeakPerspectiveCamera, verts_world: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) posed vertices seen through ``camera`` → (B, 1, R, R) float mask of the seen texels."""
        fid = self.renderer.rasterize(camera.project(verts_world)).face_id.flatten(1)  # (B, H·W)
        visible = torch.zeros(len(verts_world), self.n_faces + 1, dtype=torch.bool)
        visible.scatter_(1, fid.cpu() + 1, True)
        seen = visible[:, 1:][:, self.texel_face.clamp_min(0)] & (self.texel_face >= 0)
        return seen[:, None].float()


def _summary(values: torch.Tensor) -> dict[str, float]:
    v = values.double()
    return {"median": float(v.median()), "mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}


@torch.no_grad()
def evaluate(
    model: ShapeModel,
    generator: nn.Module,
    pipeline: FacePipeline,
    data: EvalSet,
    icp_iterations: int = 5,
) -> dict[str, Any]:
    """The held-out metrics (see the module docstring). The model is put in eval mode and restored.

    Returns:
        ``{"now_coarse_mm": {median, mean, std}, "now_detailed_mm": {…}, "landmark_nme": float,
        "albedo_mae", "albedo_rmse", "albedo_rmse_scale_invariant": float, "gt_shape_mm": float,
        "num_samples": int}``.
    """
    from training.data.images import resize_uv

    was_training = model.training
    model.eval()
    fm = pipeline.face_model
    device = pipeline.disp_mask.device
    coarse_dist = MeshDistance(fm.faces, fm.n_verts)
    sampling = pipeline.sampling
    detailed_dist = MeshDistance(sampling.grid_faces, sampling.n_points)
    coarse_all, detailed_all, nme, gt_shape = [], [], [], []
    abs_err, sq_err, si_err, texels = 0.0, 0.0, 0.0, 0.0
    sample = 0
    S = pipeline.image_size
    try:
        for bi, batch in enumerate(data.batches):
            batch = batch.to(device)
            gt = batch.gt
            out = model(batch.image)
            codes = out.codes
            verts = fm(codes.shape, codes.expression, codes.pose)
            lm_px = ndc_to_pixels(pipeline.landmarks_ndc(verts, codes.camera), S)
            nme.append(L.normalised_landmark_error(lm_px, batch.landmarks_px, batch.visibility, reduction="none"))
            gt_shape.append(
                torch.stack(
                    [gt_shape_error_mm(fm, codes.shape[i : i + 1], gt.codes.shape[i : i + 1]) for i in range(len(gt))]
                )
            )
            neutral = fm(codes.shape)
            zeros_e = torch.zeros_like(codes.expression)
            disp0 = model.displacement(codes.detail, zeros_e, torch.zeros_like(codes.pose[:, 0]))
            detailed = sampling(neutral, disp0)
            lm = fm.landmarks(neutral)[:, list(NOW_LANDMARKS)]
            for i in range(len(gt)):
                scan, scan_lm = data.scans[sample].to(device), data.scan_landmarks[sample].to(device)
                coarse_all.append(now_scan_to_mesh(scan, scan_lm, neutral[i], lm[i], coarse_dist, icp_iterations))
                detailed_all.append(now_scan_to_mesh(scan, scan_lm, detailed[i], lm[i], detailed_dist, icp_iterations))
                sample += 1
            albedo = albedo_from_generator(generator.synthesis(out.ws, noise_mode="const"))
            target = resize_uv(gt.albedo_uv, albedo.shape[-1])
            seen = data.seen[bi].to(device)
            diff = (albedo - target) * seen
            abs_err += float(diff.abs().sum())
            sq_err += float(diff.square().sum())
            texels += float(seen.sum()) * 3
            scale = (albedo * target * seen).sum((2, 3), keepdim=True) / _safe(
                (albedo.square() * seen).sum((2, 3), keepdim=True)
            )
            si_err += float(((scale * albedo - target) * seen).square().sum())
    finally:
        model.train(was_training)
    coarse = 1000.0 * torch.cat(coarse_all)
    detailed = 1000.0 * torch.cat(detailed_all)
    n = max(texels, 1.0)
    return {
        "num_samples": sample,
        "now_coarse_mm": _summary(coarse),
        "now_detailed_mm": _summary(detailed),
        "landmark_nme": float(torch.cat(nme).mean()),
        "gt_shape_mm": float(torch.cat(gt_shape).mean()),
        "albedo_mae": abs_err / n,
        "albedo_rmse": math.sqrt(sq_err / n),
        "albedo_rmse_scale_invariant": math.sqrt(si_err / n),
    }


# =============================================================================================================
# AlbedoGAN loading, final weights
# =============================================================================================================


def load_albedogan(cfg: AlbedoGANSection, out: Path, device: torch.device) -> tuple[nn.Module, str]:
    """The pretrained AlbedoGAN named by ``cfg`` (see :class:`AlbedoGANSection`) and a description of its source.

    Raises:
        FileNotFoundError: nothing usable at the path (never falls back to random weights; ``random`` is an
            explicit choice).
    """
    from models.stylegan2 import Generator, GeneratorConfig
    from training.albedo import EXPORT_WEIGHTS, load_checkpoint_generator, load_generator
    from training.checkpoint import latest_checkpoint

    if cfg.path == "random":
        logger.warning("AlbedoGAN: a RANDOMLY INITIALISED generator (albedogan.path=random): smoke tests only")
        g_cfg = GeneratorConfig.from_dict(
            {
                "format_version": 1,
                "kind": "stylegan2.Generator",
                "img_resolution": cfg.resolution,
                "img_channels": 3,
                "c_dim": 0,
                **cfg.G,
            }
        )
        torch.manual_seed(cfg.seed)
        G = Generator.from_config(g_cfg)
        G.mean_w(1024, generator=torch.Generator().manual_seed(cfg.seed))
        return G.to(device).eval(), "random"
    path = out.parent / "albedo" if cfg.path == "auto" else Path(cfg.path)
    if (path / EXPORT_WEIGHTS).is_file():
        return load_generator(path, device), str(path / EXPORT_WEIGHTS)
    if (path / "meta.json").is_file():
        return load_checkpoint_generator(path, cfg.checkpoint_module, str(device)), str(path)
    ckpt = latest_checkpoint(path / "checkpoints") if (path / "checkpoints").is_dir() else None
    if ckpt is not None:
        return load_checkpoint_generator(ckpt, cfg.checkpoint_module, str(device)), str(ckpt)
    hint = " (albedogan.path=auto looks for the albedo stage beside this one)" if cfg.path == "auto" else ""
    raise FileNotFoundError(
        f"no pretrained AlbedoGAN at {path}{hint}: run `python -m training.run albedo` first, or set "
        "albedogan.path to its folder / checkpoint (albedogan.path=random only for smoke tests)"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_module(module: nn.Module, config: Mapping[str, Any], folder: Path, name: str) -> None:
    from safetensors.torch import save_file

    tmp_w, tmp_c = folder / f".{name}.safetensors.tmp", folder / f".{name}.json.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp_w))
    tmp_c.write_text(json.dumps(dict(config), indent=1))
    tmp_w.replace(folder / f"{name}.safetensors")
    tmp_c.replace(folder / f"{name}.json")


def save_final(
    folder: Path,
    model: ShapeModel,
    generator: nn.Module,
    face_model_path: Path,
    info: Mapping[str, Any],
) -> Path:
    """Write the trained networks where the export stage picks them up.

    ``folder`` gets ``encoder``, ``displacement``, ``albedo_head`` and ``generator`` (each ``.safetensors`` + ``.json``
    config with a format version; the generator in the albedo stage's export format, loadable with
    :func:`training.albedo.load_generator`) and ``shape_model.json`` (face model path and sha256, the jaw joint,
    the crop scale, the training info).
    """
    from training.albedo import save_generator

    folder.mkdir(parents=True, exist_ok=True)
    _save_module(model.encoder, model.encoder.config.to_dict(), folder, "encoder")
    _save_module(model.displacement, model.displacement.config.to_dict(), folder, "displacement")
    _save_module(model.albedo_head, model.albedo_head.config.to_dict(), folder, "albedo_head")
    save_generator(generator, folder, info)
    meta = {
        "format_version": 1,
        "kind": "shape.ShapeModel",
        "face_model": {"path": str(face_model_path), "sha256": _sha256(face_model_path)},
        "jaw_index": model.jaw_index,
        "detach_head_features": model.detach_head_features,
        "training": dict(info),
    }
    (folder / "shape_model.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_final(folder: str | Path, device: str | torch.device = "cpu") -> tuple[ShapeModel, nn.Module]:
    """Inverse of :func:`save_final`: (shape model, generator), strict; missing files raise FileNotFoundError."""
    from safetensors.torch import load_file

    from training.albedo import load_generator

    folder = Path(folder)
    for name in ("encoder", "displacement", "albedo_head", "shape_model"):
        if not (folder / f"{name}.json").is_file():
            raise FileNotFoundError(f"{folder}: {name}.json is missing (not a shape-model folder)")
    meta = json.loads((folder / "shape_model.json").read_text())
    if meta.get("kind") != "shape.ShapeModel" or meta.get("format_version") != 1:
        raise ValueError(f"{folder}/shape_model.json: not a shape.ShapeModel of format version 1")

    def load(module: nn.Module, name: str) -> nn.Module:
        try:
            module.load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{folder}/{name}.safetensors does not match its config: {exc}") from exc
        return module

    enc = load(
        Encoder.from_config(EncoderConfig.from_dict(json.loads((folder / "encoder.json").read_text()))), "encoder"
    )
    disp = load(
        DisplacementDecoder.from_config(
            DisplacementConfig.from_dict(json.loads((folder / "displacement.json").read_text()))
        ),
        "displacement",
    )
    head = load(
        AlbedoHead.from_config(AlbedoHeadConfig.from_dict(json.loads((folder / "albedo_head.json").read_text()))),
        "albedo_head",
    )
    model = ShapeModel(enc, disp, head, meta["jaw_index"], meta["detach_head_features"])  # type: ignore[arg-type]
    return model.to(device), load_generator(folder, device)


def face_model_path(cfg: ModelSection) -> Path:
    return Path(cfg.face_model) if cfg.face_model else DEFAULT_FACE_MODEL


@lru_cache(maxsize=2)
def _load_face_model(path: str) -> FaceModel:
    return FaceModel.from_file(path)


def load_face_model(cfg: ModelSection) -> FaceModel:
    """The face model of the configuration (a fresh module; the arrays are read once per process)."""
    return FaceModel(_load_face_model(str(face_model_path(cfg))).arrays)


# =============================================================================================================
# Stage entry point
# =============================================================================================================


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """Stage ``shape`` of ``python -m training.run``: the shape model alone on ``cfg['shape']`` in ``out``.

    Runs ``schedule.cycles × schedule.shape_steps`` shape steps (no albedo steps: AlbedoGAN stays at its
    pretrained weights). The loop, checkpoints, DDP and logging are :func:`training.alternate.train`'s.
    """
    from training.alternate import train

    config = ShapeTrainConfig.from_dict(cfg.get("shape"), "shape")
    train(config, out, stage="shape")
