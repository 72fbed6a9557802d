"""The shape model of AlbedoGAN: its configuration (:class:`ShapeTrainConfig`), construction and the pretrained
AlbedoGAN it trains against; this docstring also documents its training step, data and metrics.

``python -m training.run shape --config training/configs/shape_tiny.yaml --out runs/s`` trains the shape model
alone (AlbedoGAN frozen at its pretrained weights); ``alternate`` adds the albedo fine-tuning steps. Both stages
run in ``training/alternate.py`` on the one loop of ``training/loop.py``; the step's terms are in
``training/objectives.py``, the data in ``training/data/groups.py``, the metrics in ``training/evaluation.py``, the
final weights' files in ``training/weights.py``. Everything lives in the ``shape`` section of the configuration.

**Shape model** (:class:`models.shape_model.ShapeModel`) = :class:`models.encoder.Encoder` (IResNet → shape,
expression, pose, camera, SH light, detail codes) + :class:`models.displacement.DisplacementDecoder` (detail,
expression, jaw → UV displacement) + :class:`models.albedo_head.AlbedoHead` (the encoder backbone's 512-d features →
AlbedoGAN styles ws). The head's features are those of the same backbone pass (a forward hook on
``encoder.backbone``, removed after the call), so one forward gives codes, displacement and ws.

**Shape step** (:func:`training.objectives.shape_terms`): image → codes → coarse vertices (face model) →
displacement → detail normal map → albedo = AlbedoGAN.synthesis(ws) (frozen; gradients reach the head through
it) → render with the predicted SH light → losses (:mod:`training.losses`):

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

**Metrics** (:func:`training.evaluation.evaluate`, written to ``eval.json``): on held-out synthetic renders — a
separate stream (``eval.seed``) that training never draws from — (1) NoW-style shape error: the predicted neutral
mesh (coarse, and detailed with the neutral-expression displacement) is aligned to the true neutral mesh by a
similarity on 7 landmarks (eye corners 36/39/42/45, nose tip 30, mouth corners 48/54; NoW's own landmarks), refined
by rigid ICP on scan-to-mesh correspondences; then the scan-to-mesh distance (true skin vertices within
``face_radius_mm`` of the nose tip — the true neutral surface sampled densely at the UV grid points of
``scan_resolution``, the outer skin only, as a scanner sees it — to the closest point on the predicted surface) in
mm, median/mean/std over all points (the face model is in metres, i.e. real head size); (2) landmark NME (visible
points, normalised by the outer-eye-corner distance); (3) albedo error on seen texels (texels whose triangle is
visible in the ground-truth render; linear RGB): MAE, RMSE and the RMSE after a per-image, per-channel least-squares
scale (albedo × light has a global scale ambiguity).

**Data** (``data.kind``): ``synthetic`` (:class:`training.data.groups.SyntheticGroups`, the default, offline, ground
truth known), ``stylegan2_recipe`` (:class:`training.data.groups.RecipeGroups`, the paper's sharded StyleGAN2
recipe) and ``photos`` (:class:`training.data.groups.PhotoGroups`, a folder; 68 landmarks detected once and cached
in a JSON file; identity = sub-folder). Every source feeds the encoder the crops ``/reconstruct`` will feed it:
aligned on the eye centres and the nose (:func:`facecore.detect.alignment_matrix`, from the true or detected
landmarks; synthetic faces are rendered larger and cropped, :func:`training.data.groups.align_to_template`).
Measured: on unaligned synthetic renders (random framing, offsets up to 0.4 NDC) the encoder stayed at the
constant-prediction landmark error (0.20 NDC) for 150 steps; on aligned crops it starts at 0.07 and improves from
the first steps. Every batch is a deterministic function of ``(data.seed, step, rank)``, which is what makes
resuming exact.

**Deviations from the brief, in short:** the render's geometry is the coarse mesh (above); AlbedoGAN stays near
its pretraining by L2-SP, not by a continued adversarial loss (``training/alternate.py``); the encoder starts at
the generation prior's mean identity; the NoW "scan" is the true surface sampled on a dense UV grid (the face
model's skin also has vertices inside the eye sockets and behind the lips that no scanner sees).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facecore.config import check_keys, parse_section, section_dict
from models.albedo_head import AlbedoHead
from models.displacement import DisplacementConfig, DisplacementDecoder
from models.encoder import Encoder, EncoderConfig
from models.face.model import DEFAULT_FACE_MODEL, FaceModel
from models.shape_model import ShapeModel
from training import losses as L

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

    def __post_init__(self) -> None:
        for fixed in ("detail_dim", "n_expr"):
            if fixed in self.displacement:
                raise ValueError(f"model.displacement.{fixed} is fixed (encoder.detail_dim / the face model)")
        known = {f.name for f in dataclasses.fields(DisplacementConfig)}
        if set(self.displacement) - known:
            raise ValueError(f"model.displacement: unknown keys {sorted(set(self.displacement) - known)}")


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
        align_jitter: synthetic with ``align``: standard deviation of the noise added to the alignment's anchors
            (eye centres, nose bottom), in eye-centre distances: the service crops on dlib's detected 5 points, not
            the true ones, and an encoder trained on exact crops takes any offset of the face in its crop for
            the template's framing (see ``benchmarks/alignment_noise.py``). 0 = exact crops.
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
    align_jitter: float = 0.0
    render_scale: float = 1.6
    face_fill: tuple[float, float] | None = None
    landmark_cache: str | None = None
    detector: str = "auto"

    def __post_init__(self) -> None:
        if self.face_fill is not None:
            object.__setattr__(self, "face_fill", tuple(float(x) for x in self.face_fill))
        if not 1.0 <= self.render_scale <= 4.0:
            raise ValueError(f"data.render_scale: expected 1–4, got {self.render_scale}")
        if not 0.0 <= self.align_jitter <= 0.5:
            raise ValueError(f"data.align_jitter: expected 0–0.5 eye-centre distances, got {self.align_jitter}")
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
        align_jitter: the noise of their crops' anchors (``data.align_jitter``); None = the training data's.
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
    align_jitter: float | None = None


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
        """Build from a YAML section (:func:`training.config.parse_section`); ``weights`` and ``albedo_step``
        update their defaults key by key; unknown keys raise ``ConfigError`` naming them."""
        data = dict(data or {})
        check_keys(cls, data, where)
        data["weights"] = {**_default_shape_weights(), **dict(data.get("weights") or {})}
        step = dict(data.get("albedo_step") or {})
        defaults = AlbedoStepSection()
        step["optim"] = {**section_dict(defaults.optim), **dict(step.get("optim") or {})}
        step["weights"] = {**defaults.weights, **dict(step.get("weights") or {})}
        data["albedo_step"] = step
        return parse_section(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what :meth:`from_dict` reads back)."""
        return section_dict(self)

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


# =============================================================================================================
# Batches and data sources
# =============================================================================================================


# =============================================================================================================
# The shape model
# =============================================================================================================


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


# =============================================================================================================
# Loss terms
# =============================================================================================================


# =============================================================================================================
# Metrics: NoW-style scan-to-mesh error, landmark NME, albedo error on seen texels
# =============================================================================================================


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
    from training.checkpoint import latest_checkpoint
    from training.weights import EXPORT_WEIGHTS, load_checkpoint_generator, load_generator

    if cfg.path == "random":
        logger.warning("AlbedoGAN: a RANDOMLY INITIALISED generator (albedogan.path=random): smoke tests only")
        g_cfg = parse_section(
            GeneratorConfig,
            {"img_resolution": cfg.resolution, "img_channels": 3, "c_dim": 0, **cfg.G},
            "shape.albedogan.G",
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
