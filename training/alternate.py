"""Alternate descent (AlbedoGAN §3.3): shape steps ⇄ AlbedoGAN fine-tuning steps, and the training loop of both
the ``shape`` and the ``alternate`` stages.

``python -m training.run alternate --config training/configs/alternate_tiny.yaml --out runs/a``; several
processes: ``torchrun --nproc_per_node N -m training.run alternate …`` (DistributedDataParallel, gloo on CPU,
nccl on CUDA; both kinds of steps are data-parallel). The section read is ``alternate`` merged over ``shape``
(so ``python -m training.run all`` can state the common settings once under ``shape`` and only the schedule and
the albedo step under ``alternate``); it is a :class:`training.shape.ShapeTrainConfig`.

**Schedule** (``schedule``): ``cycles × (shape_steps shape steps, then albedo_steps albedo steps)``; the phase of a
step is a function of its number, so the position in the schedule is the step counter.

* **Shape step** (:func:`training.shape.shape_terms`): encoder + displacement decoder + albedo head are trained;
  AlbedoGAN is frozen (its current weights: the pretrained ones in the first cycle, the fine-tuned ones after).
* **Albedo step** (:meth:`Trainer.albedo_step`): the shape model is frozen (eval mode, no gradients, so its
  BatchNorm statistics do not move); AlbedoGAN's synthesis network is fine-tuned through the renderer with the
  detailed shape (coarse mesh + the displacement's normal map), the predicted camera and light, and the albedo
  head's ws (the known w with the recipe): image reconstruction, identity, perceptual and albedo symmetry.
  **Keeping AlbedoGAN near its pretrained distribution**: L2-SP (Li et al., ICML 2018, "Explicit inductive bias
  for transfer learning with convolutional networks"), ``albedo_anchor = Σ (θ − θ₀)²`` over the synthesis
  parameters with θ₀ the pretrained weights (kept in every checkpoint), plus a small learning rate and few steps
  per cycle. The mapping network is not trained, so ``w_avg`` and the W distribution the head predicts into stay
  those of the pretrained model. (Continuing the adversarial loss on the albedo dataset is the alternative the
  paper's setting allows; it needs the discriminator and the albedo data in this stage — not done here.)

**Exact resume.** A checkpoint (``training/checkpoint.py``) holds the shape model (encoder, decoder, head, with
BatchNorm statistics), AlbedoGAN (current and pretrained), both Adam states, the RNG states, the step (= the
position in the schedule and in the data stream) and the metric history. Batches are a function of
``(data.seed, step, rank)`` and nothing else draws random numbers, so a run stopped at any step (``max_steps``,
a kill) and restarted with the same command continues with bit-identical losses on CPU (on CUDA with
``deterministic: true``). ``losses.jsonl`` is cut back and TensorBoard purged past the resume step.

**Run folder** (rank 0 writes): ``checkpoints/``, ``tb/`` (every loss term per phase, steps/s, images/s, image
grids: input | render | mesh under a fixed light | albedo), ``losses.jsonl``, ``train_config.json``, ``final/``
(:func:`training.shape.save_final`: encoder, displacement decoder, albedo head, AlbedoGAN as safetensors + JSON
configs) and ``eval.json`` (held-out synthetic metrics at the start and at the end, :func:`training.shape.evaluate`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training import losses as L
from training.config import merge
from training.data.groups import PhotoGroups, RecipeGroups, ShapeBatch, SyntheticGroups
from training.data.images import to_uint8
from training.data.skin import linear_to_srgb
from training.distributed import DistInfo, barrier, init_distributed
from training.evaluation import build_eval_set, evaluate
from training.images import save_png
from training.loop import LoopSchedule, TrainingLoop
from training.objectives import (
    FacePipeline,
    LossContext,
    StepOutputs,
    albedo_from_generator,
    gt_albedo_error,
    photometric_terms,
    shape_terms,
)
from training.shape import (
    EVAL_FILE,
    FINAL_DIR,
    ScheduleSection,
    ShapeTrainConfig,
    build_shape_model,
    face_model_path,
    load_albedogan,
    load_face_model,
)
from training.weights import load_final, save_final

logger = logging.getLogger(__name__)


class SynthesisPass(nn.Module):
    """AlbedoGAN's synthesis network as the albedo step calls it (constant noise), for DistributedDataParallel."""

    def __init__(self, synthesis: nn.Module):
        super().__init__()
        self.synthesis = synthesis

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws, noise_mode="const")


# =============================================================================================================
# The trainer
# =============================================================================================================


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        step: the step reached.
        done: whether the schedule is complete (final weights and eval.json written).
        logs: the per-step logs of this invocation (``{"step", "phase", term: value…, "total"}``).
        eval: the final evaluation (None unless done).
    """

    step: int
    done: bool
    logs: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] | None = None


def stage_schedule(config: ShapeTrainConfig, stage: str) -> ScheduleSection:
    """The schedule a stage runs: ``alternate`` as configured, ``shape`` as ``cycles × shape_steps`` shape steps."""
    if stage == "alternate":
        return config.schedule
    if stage != "shape":
        raise ValueError(f"stage: expected 'shape' or 'alternate', got {stage!r}")
    total = config.schedule.cycles * config.schedule.shape_steps
    if total < 1:
        raise ValueError("shape stage: schedule.shape_steps × cycles must be >= 1")
    return ScheduleSection(shape_steps=total, albedo_steps=0, cycles=1)


class Trainer(TrainingLoop):
    """One process of a shape / alternate training run."""

    def __init__(self, config: ShapeTrainConfig, out: Path, info: DistInfo, stage: str = "alternate"):
        self.cfg = config
        self.out = out
        self.info = info
        self.stage = stage
        self.device = info.device
        self.schedule = stage_schedule(config, stage)
        self.total = self.schedule.total
        self.loop = LoopSchedule.of(config, self.total, stage)
        has_albedo = self.schedule.albedo_steps > 0

        torch.manual_seed(config.seed)
        self.face_model = load_face_model(config.model).to(self.device)
        self.G, self.G_source = load_albedogan(config.albedogan, out, self.device)
        self.G.eval().requires_grad_(False)
        self.G_init = copy.deepcopy(self.G).eval().requires_grad_(False)
        torch.manual_seed(config.seed)
        self.model = build_shape_model(config.model, self.face_model, self.G).to(self.device)
        self.init_source = self._init_from() if stage == "alternate" else None

        S = config.model.encoder.input_size
        self.pipeline = FacePipeline(
            self.face_model,
            S,
            self.model.displacement.config.resolution,
            self.G.img_resolution,
            config.loss.face_radius_mm,
            config.loss.face_depth_mm,
            config.loss.landmark_jaw,
        ).to(self.device)
        embedder = None
        if config.uses_embedder(has_albedo):
            from models.identity import FaceEmbedder

            embedder = FaceEmbedder.from_dlib_dat().to(self.device)
        self.ctx = LossContext(self.pipeline, embedder, config.loss, config.region)
        self.source = self._make_source()
        if config.data.kind == "stylegan2_recipe" and self.source.w_dim != self.G.w_dim:
            raise ValueError(
                f"the recipe's w has {self.source.w_dim} dimensions but AlbedoGAN's W has {self.G.w_dim}: the recipe's "
                "known w can only drive an AlbedoGAN sharing the 2-D StyleGAN2's W space"
            )
        self.shape_weights = dict(config.weights)
        self.albedo_weights = dict(config.albedo_step.weights)

        self.opt_shape = self._adam([p for p in self.model.parameters() if p.requires_grad], config.optim)
        self.G.synthesis.requires_grad_(True)
        self.opt_albedo = self._adam(list(self.G.synthesis.parameters()), config.albedo_step.optim)
        self.synthesis = SynthesisPass(self.G.synthesis)
        if info.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.model_ddp: nn.Module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self._may_leave_unused()
            )
            self.synthesis_ddp: nn.Module = nn.parallel.DistributedDataParallel(self.synthesis, device_ids=ids)
        else:
            self.model_ddp, self.synthesis_ddp = self.model, self.synthesis
        self.G.synthesis.requires_grad_(False)

        self.step = 0
        self.eval_history: list[dict[str, Any]] = []
        self.eval_set = None
        self.writer = None

    # -- construction helpers ----------------------------------------------------------------------------------

    def _may_leave_unused(self) -> bool:
        """Whether some shape-model parameters may get no gradient in a shape step (DDP must then look for them):
        the albedo head needs a photometric or symmetry term (recipe: ``w_latent``), the decoder a photometric
        or displacement term."""
        w = self.shape_weights
        photometric = any(w.get(k, 0) > 0 for k in ("reconstruction", "identity", "perceptual"))
        if self.cfg.data.kind == "stylegan2_recipe":
            head = w.get("w_latent", 0) > 0
        else:
            head = photometric or w.get("albedo_symmetry", 0) > 0
        decoder = photometric or any(w.get(k, 0) > 0 for k in ("displacement_smoothness", "displacement_magnitude"))
        return not (head and decoder)

    @staticmethod
    def _adam(params: list[nn.Parameter], opt: Any) -> torch.optim.Optimizer:
        if opt.weight_decay > 0:
            return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, foreach=True)
        return torch.optim.Adam(params, lr=opt.lr, betas=opt.betas, foreach=True)

    def _init_from(self) -> str | None:
        value = self.cfg.init_from
        if value is None:
            return None
        folder = self.out.parent / "shape" / FINAL_DIR if value == "auto" else Path(value)
        if not (folder / "shape_model.json").is_file():
            if value == "auto":
                logger.info("init_from=auto: no shape stage at %s, starting from fresh networks", folder)
                return None
            raise FileNotFoundError(f"init_from: {folder} holds no trained shape model (shape_model.json)")
        trained, _ = load_final(folder, self.device)
        for name in ("encoder", "displacement", "albedo_head"):
            mine, theirs = getattr(self.model, name), getattr(trained, name)
            if mine.config != theirs.config:
                raise ValueError(f"init_from: {folder}/{name} was trained with another configuration than this run's")
            mine.load_state_dict(theirs.state_dict())
        logger.info("initialised the shape model from %s", folder)
        return str(folder)

    def _make_source(self) -> Any:
        d, e = self.cfg.data, self.cfg.model.encoder
        chip = self.cfg.loss.chip_size
        if d.kind == "synthetic":
            return SyntheticGroups(d, e.input_size, chip, self.face_model, str(self.device), e.crop_scale)
        if d.kind == "stylegan2_recipe":
            return RecipeGroups(d, e.input_size, chip, e.crop_scale)
        cache = Path(d.landmark_cache) if d.landmark_cache else self.out / "photo_landmarks.json"
        if self.info.is_main:
            PhotoGroups(d, e.input_size, chip, e.crop_scale, cache, detect=True)
        barrier(self.info)
        return PhotoGroups(d, e.input_size, chip, e.crop_scale, cache, detect=False)

    # -- the two steps -------------------------------------------------------------------------------------------

    def batch(self, step: int) -> ShapeBatch:
        return self.source.batch(step, self.info.rank, self.info.world_size).to(self.device)

    def _clip_and_step(self, opt: torch.optim.Optimizer, params: list[torch.Tensor], clip: float | None) -> None:
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def shape_step(self, batch: ShapeBatch) -> tuple[dict[str, float], Any]:
        """One optimisation step of the shape model (AlbedoGAN frozen). Returns the log and the step's outputs."""
        self.model.train()
        out = self.model_ddp(batch.image)
        terms, aux = shape_terms(self.ctx, out, batch, self.G, self.model.albedo_head, self.shape_weights)
        total, log = L.combine(terms, self.shape_weights)
        self.opt_shape.zero_grad(set_to_none=True)
        total.backward()
        self._clip_and_step(self.opt_shape, list(self.model.parameters()), self.cfg.optim.grad_clip)
        return log, aux

    def albedo_anchor(self) -> torch.Tensor:
        """L2-SP: ``Σ (θ − θ₀)²`` over the synthesis parameters (θ₀ = the pretrained AlbedoGAN)."""
        params = zip(self.G.synthesis.parameters(), self.G_init.synthesis.parameters(), strict=True)
        return sum(((p - p0).square().sum() for p, p0 in params), torch.zeros((), device=self.device))

    def albedo_step(self, batch: ShapeBatch) -> tuple[dict[str, float], Any]:
        """One fine-tuning step of AlbedoGAN's synthesis network through the renderer (shape model frozen)."""
        p = self.pipeline
        self.model.eval()
        with torch.no_grad():
            out = self.model(batch.image)
            verts, normal_map = p.geometry(out.codes, out.displacement)
            ws = out.ws if batch.w is None else batch.w[:, None, :].expand(-1, self.G.num_ws, -1)
        self.G.synthesis.requires_grad_(True)
        try:
            albedo = albedo_from_generator(self.synthesis_ddp(ws))
            render = p.render(verts, out.codes.camera, albedo, out.codes.light, normal_map)
            terms, composite = photometric_terms(self.ctx, batch, render, self.albedo_weights)
            terms["albedo_symmetry"] = L.albedo_symmetry_loss(albedo, p.albedo_mask)
            terms["albedo_anchor"] = self.albedo_anchor()
            if batch.gt is not None:
                with torch.set_grad_enabled(self.albedo_weights.get("gt_albedo", 0) > 0):
                    terms["gt_albedo"] = gt_albedo_error(albedo, batch.gt.albedo_uv, p.albedo_mask)
            total, log = L.combine(terms, self.albedo_weights)
            self.opt_albedo.zero_grad(set_to_none=True)
            total.backward()
            self._clip_and_step(
                self.opt_albedo, list(self.G.synthesis.parameters()), self.cfg.albedo_step.optim.grad_clip
            )
        finally:
            self.G.synthesis.requires_grad_(False)
        return log, StepOutputs(render, composite, albedo, verts, normal_map, out.codes.camera)

    def train_step(self) -> dict[str, Any]:
        """Run step ``self.step`` (its phase from the schedule); keeps its batch and outputs for the images."""
        phase = self.schedule.phase(self.step)
        batch = self.batch(self.step)
        log, aux = self.shape_step(batch) if phase == "shape" else self.albedo_step(batch)
        self.last = (batch, aux)
        return {"step": self.step, "phase": phase, **self._reduce_log(log)}

    def _reduce_log(self, log: dict[str, float]) -> dict[str, float]:
        if self.info.world_size == 1:
            return log
        keys = sorted(log)
        t = torch.tensor([log[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.info.world_size).tolist(), strict=True))

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"shape_model": self.model, "G": self.G, "G_init": self.G_init}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_shape": self.opt_shape, "opt_albedo": self.opt_albedo}

    def _fingerprint(self) -> dict[str, Any]:
        m = self.model
        return {
            "stage": self.stage,
            "encoder": m.encoder.config.to_dict(),
            "displacement": m.displacement.config.to_dict(),
            "albedo_head": m.albedo_head.config.to_dict(),
            "generator": self.G.config.to_dict(),
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            **self._fingerprint(),
            "world_size": self.info.world_size,
            "eval_history": self.eval_history,
            "config": self.cfg.to_dict(),
            "generator_source": self.G_source,
            "init_from": self.init_source,
        }

    def check_resumable(self, path: Path, extra: Mapping[str, Any]) -> None:
        for key, value in self._fingerprint().items():
            if extra.get(key) != value:
                raise ValueError(
                    f"{path}: its {key} differs from this run's configuration; use a new --out folder or the original "
                    "configuration"
                )

    def restore(self, extra: Mapping[str, Any]) -> None:
        self.eval_history = [e for e in extra.get("eval_history", []) if e["step"] <= self.step]
        self.init_source = extra.get("init_from")
        if extra.get("world_size") != self.info.world_size:
            logger.warning(
                "resuming with %d processes (checkpoint: %s): not bit-exact",
                self.info.world_size,
                extra.get("world_size"),
            )
        logger.info("resumed at step %d of %d", self.step, self.total)

    # -- logging ---------------------------------------------------------------------------------------------

    def log_scalars(self, window: list[dict[str, Any]], seconds: float) -> None:
        if self.writer is None or not window:
            return
        for phase in ("shape", "albedo"):
            rows = [r for r in window if r["phase"] == phase]
            for key in sorted({k for r in rows for k in r} - {"step", "phase", "seconds"}):
                vals = [r[key] for r in rows if key in r]
                self.writer.add_scalar(f"{phase}/{key}", sum(vals) / len(vals), self.step)
        if seconds > 0:
            self.writer.add_scalar("Speed/steps_per_s", len(window) / seconds, self.step)
            batch = self.cfg.data.groups * self.cfg.data.views
            self.writer.add_scalar("Speed/images_per_s", len(window) * batch / seconds, self.step)

    def progress_postfix(self, log: Mapping[str, Any]) -> dict[str, str]:
        return {"phase": log["phase"], "loss": f"{log['total']:.4f}"}

    def after_step(self, log: Mapping[str, Any], final: bool) -> None:
        cfg = self.cfg
        if (cfg.image_every and self.step % cfg.image_every == 0) or final:
            self._log_images(*self.last, log["phase"])
        if cfg.eval.every and self.step % cfg.eval.every == 0 and not final:
            self.evaluate()

    @torch.no_grad()
    def _log_images(self, batch: ShapeBatch, aux: Any, phase: str) -> None:
        if self.writer is None:
            return
        n = min(4, len(batch))
        grid = image_grid(self.pipeline, batch, aux, n)
        self.writer.add_image(f"images/{phase}", grid, self.step)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        save_png(to_uint8(grid).permute(1, 2, 0).numpy(), self.out / "samples" / f"{phase}_{self.step:08d}.png")

    # -- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        result = None
        if self.info.is_main:
            if self.eval_set is None:
                self.eval_set = build_eval_set(self.cfg, self.face_model, self.G.img_resolution)
            t0 = time.perf_counter()
            metrics = evaluate(self.model, self.G, self.pipeline, self.eval_set, self.cfg.eval.icp_iterations)
            result = {"step": self.step, **metrics}
            self.eval_history = [h for h in self.eval_history if h["step"] != self.step] + [result]
            if self.writer is not None:
                for key, value in metrics.items():
                    if isinstance(value, dict):
                        for k, v in value.items():
                            self.writer.add_scalar(f"eval/{key}_{k}", v, self.step)
                    elif key != "num_samples":
                        self.writer.add_scalar(f"eval/{key}", value, self.step)
            logger.info(
                "eval at step %d (%.1f s): NoW coarse median %.3f mm, detailed %.3f mm, landmark NME %.4f, "
                "albedo RMSE %.4f",
                self.step,
                time.perf_counter() - t0,
                metrics["now_coarse_mm"]["median"],
                metrics["now_detailed_mm"]["median"],
                metrics["landmark_nme"],
                metrics["albedo_rmse"],
            )
        barrier(self.info)
        return result

    def _write_eval(self) -> None:
        if not self.info.is_main or not self.eval_history:
            return
        data = {
            "stage": self.stage,
            "step": self.step,
            "initial": self.eval_history[0] if self.eval_history[0]["step"] == 0 else None,
            "final": self.eval_history[-1],
            "history": self.eval_history,
            "protocol": {
                "samples": f"held-out synthetic renders of stream seed {self.cfg.eval.seed} (never trained on)",
                "now": "similarity on 7 landmarks (36, 39, 42, 45, 30, 48, 54) + rigid ICP; scan = the true neutral "
                f"skin surface sampled at the {self.cfg.eval.scan_resolution}² UV grid points within "
                f"{self.cfg.eval.face_radius_mm} mm of the nose tip; scan-to-mesh distances in mm",
                "landmark_nme": "mean point error of visible landmarks / outer-eye-corner distance",
                "albedo": "linear RGB on texels whose triangle is visible in the true render (256 px visibility)",
            },
            "generator_source": self.G_source,
            "init_from": self.init_source,
        }
        tmp = self.out / f".{EVAL_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.out / EVAL_FILE)

    # -- the loop --------------------------------------------------------------------------------------------

    def on_start(self) -> None:
        if self.cfg.eval.at_start and self.cfg.eval.num_samples > 0:
            self.evaluate()

    def on_schedule_end(self) -> None:
        if self.cfg.eval.num_samples > 0:
            self.final_eval = self.evaluate()
        self.export()
        self._write_eval()

    def fit(self) -> TrainResult:
        self.final_eval = None
        done, logs = self.run_loop()
        return TrainResult(self.step, done, logs, self.final_eval)

    def export(self) -> None:
        if self.info.is_main:
            info = {
                "stage": self.stage,
                "step": self.step,
                "schedule": {
                    "shape_steps": self.schedule.shape_steps,
                    "albedo_steps": self.schedule.albedo_steps,
                    "cycles": self.schedule.cycles,
                },
                "generator_source": self.G_source,
                "init_from": self.init_source,
                "eval": self.eval_history[-1] if self.eval_history else None,
            }
            save_final(self.out / FINAL_DIR, self.model, self.G, face_model_path(self.cfg.model), info)
            logger.info("final weights in %s", self.out / FINAL_DIR)
        barrier(self.info)


# =============================================================================================================
# Images
# =============================================================================================================


def _fixed_light(device: torch.device) -> torch.Tensor:
    from training.data.synthetic import sh_from_lights

    direction = torch.tensor([[0.3, 0.4, 1.0]], device=device)
    direction = direction / direction.norm()
    return sh_from_lights(torch.full((1, 3), 0.35, device=device), direction, torch.full((1, 3), 0.8, device=device))


@torch.no_grad()
def image_grid(pipeline: FacePipeline, batch: ShapeBatch, aux: Any, n: int) -> torch.Tensor:
    """(3, 4·S, n·S) grid, columns = samples, rows = input | render over the input | the mesh (coarse + detail
    normals, grey, fixed light) | the UV albedo (sRGB)."""
    from training.data.images import resize_uv

    S = pipeline.image_size
    verts, normal_map = aux.verts[:n], aux.normal_map[:n]
    grey = torch.full((n, 3, 8, 8), 0.5, device=verts.device)
    light = _fixed_light(verts.device).expand(n, -1, -1)
    mesh = pipeline.render(verts, aux.camera[:n], grey, light, normal_map)
    rows = [
        batch.image[:n],
        aux.composite[:n],
        linear_to_srgb(mesh.image) + (1 - mesh.mask) * 0.15,
        linear_to_srgb(resize_uv(aux.albedo_linear[:n], S)),
    ]
    return torch.cat([torch.cat(list(r.clamp(0, 1).float().cpu()), dim=2) for r in rows], dim=1)


# =============================================================================================================
# Entry points
# =============================================================================================================


def train(config: ShapeTrainConfig, out: str | Path, stage: str = "alternate") -> TrainResult:
    """Train (or resume) a ``shape`` or ``alternate`` run in ``out``; joins torchrun's process group if launched so."""
    out = Path(out)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    info = init_distributed(config.device)
    try:
        if info.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            if config.deterministic:
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.json").write_text(json.dumps({"stage": stage, **config.to_dict()}, indent=1))
        barrier(info)
        trainer = Trainer(config, out, info, stage)
        sched = trainer.schedule
        logger.info(
            "%s: %d steps (%s), batch %d×%d on %s × %d, AlbedoGAN from %s",
            stage,
            trainer.total,
            f"{sched.cycles} × ({sched.shape_steps} shape + {sched.albedo_steps} albedo)",
            config.data.groups,
            config.data.views,
            info.device,
            info.world_size,
            trainer.G_source,
        )
        return trainer.fit()
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)


def config_from(cfg: Mapping[str, Any]) -> ShapeTrainConfig:
    """The alternate stage's configuration: the ``alternate`` section merged over the ``shape`` section."""
    section = merge(cfg.get("shape") or {}, cfg.get("alternate") or {})
    return ShapeTrainConfig.from_dict(section, "alternate")


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """Stage ``alternate`` of ``python -m training.run``."""
    train(config_from(cfg), out, stage="alternate")


def run_shape(cfg: Mapping[str, Any], out: Path) -> None:
    """Stage ``shape`` of ``python -m training.run``: the shape model alone on ``cfg['shape']`` in ``out``.

    Runs ``schedule.cycles × schedule.shape_steps`` shape steps (no albedo steps: AlbedoGAN stays at its
    pretrained weights), with the same loop, checkpoints, DDP and logging as the alternate stage.
    """
    train(ShapeTrainConfig.from_dict(cfg.get("shape"), "shape"), out, stage="shape")
