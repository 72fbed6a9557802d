"""Recognition features fine-tuned for shape (issue 13): dlib's face-recognition ResNet trained on, end to end.

``python -m training.identity_finetune --out runs/idft [--steps 3000 --batch 96 --device cuda] [--init NET]``
(``--net-only`` writes the network of the run's last checkpoint, e.g. of a run still training)

The ridge head of ``training.identity`` reads dlib's frozen 128-d descriptor, a feature trained to tell people
apart whatever their pose, light and expression, not to measure their faces: on held-out synthetic identities it
recovers 0.9 of the prior's spread. Here the same network (:class:`models.identity.FaceEmbedder`, dlib's weights
as the start) and a linear read-out are trained on synthetic renders to predict the face region's shape, and
the fine-tuned network's 128-d output becomes the feature the identity head is fitted on.

* Data: an endless stream of synthetic renders (:class:`training.data.synthetic.SyntheticFaces`), each its own
  identity drawn as the identity stage draws them (``mixed``: half the adult prior at 1.5× its spread, half the
  wide basis at 0.5), its own pose (±60° yaw), expression, light and background; the chip is dlib's 150-px chip on
  the five points of dlib's 5-point model (projected ground truth, jittered as a detector would), as
  ``/reconstruct`` cuts it; half the chips mirrored with the mirrored code; blur, noise, colour and contrast
  changes and 8-bit quantisation for photo-like input. The random draws run in ``workers`` processes.
* Loss: the face region's mean squared vertex error (mm², centred, :class:`training.identity_regression.RegionMetric`)
  plus a small term on the whole code (whitened by the training draws) so the rest of the head stays plausible.
* Held out: ``eval_identities`` adult-prior identities from sample indices the stream never reaches, one view each;
  the read-out's centred face-region error as a fraction of predicting the prior mean ("the prior's spread").
* Checkpoints every ``checkpoint_every`` steps (``OUT/finetune.pt``, written atomically; a rerun resumes);
  ``OUT/identity_net.pt`` holds the final network (fp16) and ``OUT/finetune_metrics.json`` the curve.

Measured (2026-12-04): on one H200 the stream ran at ~210 renders/s, bound by the renderer (the GPU trains far
faster; before the eye atlases were cached, 14 renders/s); 273 steps × 128 in 170 s took the read-out from the
training draws' mean (1.12 of the prior's spread on held-out adults) to 0.88 — the frozen descriptor's ridge
reaches 0.88 too. Continued on this 2-core CPU (~12 renders/s, 400 steps × 32, learning rate 5e-5) the held-out
ratio rose to 0.95 and 1.03: no gain from fine-tuning at this budget. The shipped head reads the frozen network's
``grid`` features instead (``training.identity``: ``features_graph``); ``features_net`` fits on a network from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.detect import DLIB5_TO_IBUG68
from models.face.model import FaceCodes, FaceModel
from models.identity import DLIB_CHIP_PADDING, DLIB_INPUT_SIZE, FaceEmbedder, dlib_chip_matrix
from training.data.groups import affine_theta, cut_chips
from training.data.identity_set import sample_identity_shapes
from training.data.synthetic import SyntheticConfig, SyntheticFaces, eye_atlases

logger = logging.getLogger(__name__)

CHECKPOINT = "finetune.pt"
NET_FILE = "identity_net.pt"
METRICS_FILE = "finetune_metrics.json"
EVAL_FIRST_SAMPLE = 60_000_000  # synthetic indices of the held-out set (the stream starts at 0)


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a run (every field is a ``--flag`` of the CLI; see the module doc)."""

    steps: int = 3000
    batch: int = 96
    lr: float = 1e-4
    warmup: int = 100
    max_seconds: float = 0.0  # > 0: stop (checkpoint, final files) once training has run this long
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    code_weight: float = 0.05
    image_size: int = 224
    albedo_size: int = 128
    prior_scale: float = 1.5
    wide_scale: float = 0.5
    wide_fraction: float = 0.5
    point_jitter: float = 0.03  # × inter-ocular distance: an allowance for the 5-point detector (not measured)
    eval_identities: int = 256
    eval_every: int = 250
    checkpoint_every: int = 250
    workers: int = 4
    seed: int = 0


class RegionTorch(nn.Module):
    """Codes → face-region coordinates z (‖Δz‖² = summed squared vertex offsets, mm²) as a torch map."""

    def __init__(self, to_z: np.ndarray, n_vertices: int):
        super().__init__()
        self.register_buffer("to_z", torch.as_tensor(to_z, dtype=torch.float32))
        self.n_vertices = n_vertices

    def squared_error(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) mean squared vertex offset (mm², centred region) between codes ``a`` and ``b``."""
        return (((a - b).float() @ self.to_z) ** 2).sum(-1) / self.n_vertices


class ShapeReader(nn.Module):
    """The fine-tuned recogniser's 128-d output → a shape code (the training read-out; the service's head is
    the ridge of ``training.identity`` fitted on the same features)."""

    def __init__(self, net: FaceEmbedder, code_mean: torch.Tensor, code_std: torch.Tensor):
        super().__init__()
        self.net = net
        self.readout = nn.Linear(net.embedding_dim, len(code_mean))
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        self.register_buffer("code_mean", code_mean.float())
        self.register_buffer("code_std", code_std.float())

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.code_mean + self.code_std * self.readout(self.net.descriptor(chips))


IRIS_STEP = 0.125  # iris melanin (0 blue … 3 dark brown) quantised to this step for the atlas cache


class _EyeCache:
    """Eye-and-mouth atlases (:func:`training.data.synthetic.eye_atlases`) of iris melanin quantised to
    :data:`IRIS_STEP`, each computed once: they are per-sample numpy work (~30 ms) that would otherwise bound
    the stream's rate. Returns the parameters with the quantised melanin and the (B, 3, H, W) atlases."""

    def __init__(self, faces: SyntheticFaces):
        self.faces, self.atlases = faces, {}

    def __call__(self, albedo: Any) -> tuple[Any, torch.Tensor]:
        levels = torch.round(albedo.iris_melanin.double() / IRIS_STEP).long()
        for lv in levels.unique().tolist():
            if lv not in self.atlases:
                one = SimpleNamespace(iris_melanin=torch.tensor([lv * IRIS_STEP]))
                self.atlases[lv] = eye_atlases(self.faces.face_model, one)
        albedo = dataclasses.replace(albedo, iris_melanin=(levels * IRIS_STEP).to(albedo.iris_melanin.dtype))
        return albedo, torch.cat([self.atlases[lv] for lv in levels.tolist()])


class _Draws(torch.utils.data.Dataset):
    """Step ``s`` → the CPU random draws of its batch (identity codes, albedo and scene parameters, jitter,
    augmentation); deterministic in (seed, s), so a resumed run sees the same stream."""

    def __init__(self, faces: SyntheticFaces, cfg: FinetuneConfig, first_step: int, steps: int):
        if faces.device.type != "cpu":
            raise ValueError("the draws run in worker processes: give them a CPU synthetic source")
        self.faces, self.cfg, self.first, self.steps = faces, cfg, first_step, steps
        self.eyes = _EyeCache(faces)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> dict[str, Any]:
        c = self.cfg
        step = self.first + k
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        shapes, _ = sample_identity_shapes(
            self.faces.face_model, c.batch, g, "mixed", c.wide_scale, c.wide_fraction, c.prior_scale
        )
        indices = list(range(step * c.batch, (step + 1) * c.batch))
        albedo, scene = self.faces.sample_params(indices)
        albedo, eyes = self.eyes(albedo)
        return {
            "eyes": eyes,
            "indices": torch.tensor(indices),
            "shapes": shapes,
            "albedo": albedo,
            "scene": scene,
            "jitter": torch.randn(c.batch, 5, 2, generator=g) * c.point_jitter,
            "mirror": torch.rand(c.batch, generator=g) < 0.5,
            "blur": torch.rand(c.batch, generator=g) * 1.2,
            "noise": torch.rand(c.batch, generator=g) * 0.03,
            "gain": torch.exp(torch.randn(c.batch, 3, generator=g) * 0.05),
            "contrast": torch.exp(torch.randn(c.batch, generator=g) * 0.15),
        }


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (σ in pixels, 0 = none), separable 7-tap."""
    t = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, 7)
    B, C, H, W = x.shape
    y = x.reshape(1, B * C, H, W)
    kx = k.repeat_interleave(C, 0)[:, None, None, :]
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), kx, groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), kx.transpose(2, 3), groups=B * C)
    return y.reshape(B, C, H, W)


def make_chips(faces: SyntheticFaces, draws: dict[str, Any], augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a batch of draws → ((B, 3, 150, 150) chips in [0, 1] on the render device, (B, K) true codes)."""
    dev = faces.device
    scene = draws["scene"]
    shapes = draws["shapes"].float()
    scene = dataclasses.replace(scene, codes=FaceCodes(shapes, scene.codes.expression, scene.codes.pose))
    out = faces.render(draws["indices"], draws["albedo"].to(dev), scene.to(dev), eyes=draws.get("eyes"))
    points = out.landmarks_px.double().cpu().numpy()[:, list(DLIB5_TO_IBUG68)]
    if augment:
        iod = np.linalg.norm(points[:, 0] - points[:, 2], axis=-1)  # outer eye corners
        points = points + draws["jitter"].double().numpy() * iod[:, None, None]
    mats = np.stack([dlib_chip_matrix(p, size=DLIB_INPUT_SIZE, padding=DLIB_CHIP_PADDING) for p in points])
    theta = torch.from_numpy(affine_theta(mats, faces.config.image_size, DLIB_INPUT_SIZE)).to(dev)
    chips = cut_chips(out.image_srgb.clamp(0, 1), theta, DLIB_INPUT_SIZE)
    if augment:
        chips = _blur(chips, draws["blur"].to(dev))
        mean = chips.mean((1, 2, 3), keepdim=True)
        chips = (chips - mean) * draws["contrast"].to(dev)[:, None, None, None] + mean
        chips = chips * draws["gain"].to(dev)[:, :, None, None]
        chips = chips + torch.randn_like(chips) * draws["noise"].to(dev)[:, None, None, None]
    chips = torch.round(chips.clamp(0, 1) * 255.0) / 255.0
    return chips, shapes.to(dev)


def _mirror(chips: torch.Tensor, shapes: torch.Tensor, flip: torch.Tensor, mirror: tuple[torch.Tensor, torch.Tensor]):
    """Mirror the chips where ``flip`` and give them their mirrored codes (``code · M + c``)."""
    M, c = mirror
    flip = flip.to(chips.device)
    chips = torch.where(flip[:, None, None, None], chips.flip(-1), chips)
    shapes = torch.where(flip[:, None], shapes @ M + c, shapes)
    return chips, shapes


@torch.no_grad()
def evaluate(model: ShapeReader, metric: Any, chips: torch.Tensor, shapes: torch.Tensor,
             prior_mean: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Held-out centred face-region error (mm, mean vertex distance) of the read-out vs the prior mean
    (``metric``: :class:`training.identity_regression.RegionMetric`)."""
    pred = torch.cat([model(chips[i : i + 64].float()) for i in range(0, len(chips), 64)]).double().cpu().numpy()
    true = metric.to_z(shapes.double().cpu().numpy())
    err = metric.error_mm(metric.to_z(pred), true).mean()
    base = metric.error_mm(np.broadcast_to(metric.to_z(prior_mean[None]), true.shape), true).mean()
    return {"centred_mm": float(err), "prior_mean_mm": float(base), "centred_ratio": float(err / base)}


def run(
    cfg: FinetuneConfig, out: Path, device: str, dat: str | None = None, init: Path | None = None
) -> dict[str, Any]:
    """Train (or resume) into ``out``; ``dat``: the recogniser's weights (a dlib ``.dat`` or a state dict ``.pt``)."""
    from training.evaluation import identity_region
    from training.identity_regression import RegionMetric, code_mirror

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    fm = FaceModel.from_file()
    faces = SyntheticFaces(SyntheticConfig(image_size=cfg.image_size, albedo_size=cfg.albedo_size, seed=cfg.seed),
                           fm, device=device)  # fmt: skip
    # the random draws (CPU, in the loader's workers) from a CPU twin of the same stream
    draw_faces = faces if faces.device.type == "cpu" else SyntheticFaces(faces.config, fm)
    arrays = fm.arrays
    metric = RegionMetric(arrays, identity_region(arrays))
    region = RegionTorch(metric.to_z(np.eye(fm.n_shape)), metric.n_vertices).to(device)
    M, c = code_mirror(arrays)
    mirror = tuple(torch.as_tensor(a, dtype=torch.float32, device=device) for a in (M, c))
    ref, _ = sample_identity_shapes(fm, 8192, torch.Generator().manual_seed(12345), "mixed", cfg.wide_scale,
                                    cfg.wide_fraction, cfg.prior_scale)  # fmt: skip
    if init is not None:  # the network and read-out of an earlier run's NET_FILE (e.g. trained on a GPU)
        state = torch.load(init, map_location="cpu", weights_only=False)
        net = embedder(state["net"])
    elif dat is not None and dat.endswith(".pt"):  # the network's state dict (e.g. fp16, smaller to carry)
        net = embedder(torch.load(dat, map_location="cpu"))
    else:
        net = FaceEmbedder.from_dlib_dat(dat)
    model = ShapeReader(net, ref.mean(0), ref.std(0))
    if init is not None:
        model.readout.load_state_dict(state["readout"])
        model.code_mean.copy_(state["code_mean"])
        model.code_std.copy_(state["code_std"])
    model = model.to(device)
    model.net.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": model.net.parameters(), "lr": cfg.lr}, {"params": model.readout.parameters(), "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    step, curve = 0, []
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, curve = state["step"], state["curve"]
        logger.info("resumed at step %d", step)

    # the held-out set: adult-prior identities, one view each, chips without augmentation
    eval_faces_draws, eval_eyes = [], _EyeCache(draw_faces)
    for k in range(0, cfg.eval_identities, 64):
        n = min(64, cfg.eval_identities - k)
        g = torch.Generator().manual_seed(777 + k)
        shapes, _ = sample_identity_shapes(fm, n, g, "prior")
        idx = list(range(EVAL_FIRST_SAMPLE + k, EVAL_FIRST_SAMPLE + k + n))
        albedo, scene = faces.sample_params(idx)
        albedo, eyes = eval_eyes(albedo)
        eval_faces_draws.append(
            {"indices": torch.tensor(idx), "shapes": shapes, "albedo": albedo, "scene": scene, "eyes": eyes}
        )
    with torch.no_grad():
        evals = [make_chips(faces, d, augment=False) for d in eval_faces_draws]
    eval_chips = torch.cat([e[0] for e in evals]).half()
    eval_shapes = torch.cat([e[1] for e in evals])
    prior_mean = np.asarray(arrays.shape_prior_mean, np.float64)

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "curve": curve,
                    "config": dataclasses.asdict(cfg)}, tmp)  # fmt: skip
        tmp.replace(ckpt)

    if step == 0:
        curve.append({"step": 0, **evaluate(model, metric, eval_chips, eval_shapes, prior_mean)})
        logger.info("step 0: %s", curve[-1])
    loader = torch.utils.data.DataLoader(
        _Draws(draw_faces, cfg, step, cfg.steps - step), batch_size=None, shuffle=False,
        num_workers=cfg.workers, persistent_workers=False, prefetch_factor=4 if cfg.workers else None,
    )  # fmt: skip
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    base_lrs = [g["lr"] for g in opt.param_groups]
    t0, seen, run_loss = time.perf_counter(), 0, []
    waits = {"draws": 0.0, "render": 0.0, "train": 0.0}
    t_last = time.perf_counter()
    for draws in loader:
        t_draw = time.perf_counter()
        waits["draws"] += t_draw - t_last
        with torch.no_grad():
            chips, shapes = make_chips(faces, draws)
            chips, shapes = _mirror(chips, shapes, draws["mirror"], mirror)
        if cuda:
            torch.cuda.synchronize()
        t_render = time.perf_counter()
        waits["render"] += t_render - t_draw
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        with autocast:
            pred = model(chips)
        pred = pred.float()
        region_loss = region.squared_error(pred, shapes).mean()
        code_loss = (((pred - shapes) / model.code_std) ** 2).mean()
        loss = region_loss + cfg.code_weight * code_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        step += 1
        seen += len(chips)
        run_loss.append(float(region_loss.detach()))
        t_last = time.perf_counter()
        waits["train"] += t_last - t_render
        if step % 25 == 0:
            rate = seen / (time.perf_counter() - t0)
            logger.info("step %d: region rms %.2f mm, %.0f renders/s; seconds %s", step, math.sqrt(np.mean(run_loss)),
                        rate, {k: round(v, 1) for k, v in waits.items()})  # fmt: skip
            run_loss = []
        stop = cfg.max_seconds > 0 and time.perf_counter() - t0 > cfg.max_seconds
        if step % cfg.eval_every == 0 or step == cfg.steps or stop:
            curve.append({"step": step, "seconds": time.perf_counter() - t0,
                          **evaluate(model, metric, eval_chips, eval_shapes, prior_mean)})  # fmt: skip
            logger.info("step %d: held out %s", step, curve[-1])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
            save()
        if stop:
            logger.info("stopped at step %d after %.0f s (max_seconds)", step, time.perf_counter() - t0)
            break
    save_net(model, out / NET_FILE, cfg)
    metrics = {"curve": curve, "config": dataclasses.asdict(cfg)}
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return metrics


class FeaturesGraph(nn.Module):
    """The exported graph: (N, 3, 150, 150) chips in [0, 1] → (N, D) features of the network: its ``descriptor``
    (128) or its ``grid`` (1024, :meth:`models.identity.FaceEmbedder.grid`)."""

    def __init__(self, net: FaceEmbedder, output: str = "descriptor"):
        super().__init__()
        from facecore.identity import GRAPH_OUTPUTS

        if output not in GRAPH_OUTPUTS:
            raise ValueError(f"output: expected one of {tuple(GRAPH_OUTPUTS)}, got {output!r}")
        self.net, self.output = net, output

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.net.descriptor(chips) if self.output == "descriptor" else self.net.grid(chips)


def save_net(model: ShapeReader, path: str | Path, cfg: FinetuneConfig) -> Path:
    """Write :data:`NET_FILE`: the network's weights as float16 (what the bundle stores), the read-out and the
    code statistics (read by :func:`load_net` and by ``--init``)."""
    net = {k: v.detach().cpu().half() for k, v in model.net.state_dict().items()}
    state = {
        "net": net,
        "readout": {k: v.detach().cpu() for k, v in model.readout.state_dict().items()},
        "code_mean": model.code_mean.cpu(),
        "code_std": model.code_std.cpu(),
        "config": dataclasses.asdict(cfg),
    }
    torch.save(state, path)
    return Path(path)


def embedder(state_dict: dict[str, torch.Tensor]) -> FaceEmbedder:
    """A :class:`models.identity.FaceEmbedder` with these weights (float16 ones, as :func:`save_net` stores them,
    back in float32)."""
    net = FaceEmbedder()
    net.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return net


def load_net(path: str | Path) -> FaceEmbedder:
    """The fine-tuned network of a run's :data:`NET_FILE`."""
    return embedder(torch.load(path, map_location="cpu", weights_only=False)["net"])


def export_features(
    net_file: str | Path | None, path: str | Path, output: str = "descriptor", fp16: bool = True
) -> tuple[Any, float]:
    """Write a network's features as an ONNX graph (input ``chips``, output ``features``: see :class:`FeaturesGraph`)
    of a run's :data:`NET_FILE` (None: dlib's own weights); returns the :class:`training.export.GraphExport` and the
    ONNX-vs-torch parity (max abs)."""
    from facecore.identity import FEATURES_GRAPH_INPUT, FEATURES_GRAPH_OUTPUT
    from training.export import GraphExport, export_onnx

    net = FaceEmbedder.from_dlib_dat() if net_file is None else load_net(net_file)
    graph = GraphExport(
        FeaturesGraph(net, output),
        {FEATURES_GRAPH_INPUT: torch.rand(2, 3, DLIB_INPUT_SIZE, DLIB_INPUT_SIZE)},
        [FEATURES_GRAPH_OUTPUT],
    )
    return graph, export_onnx(graph, Path(path), fp16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--init", type=Path, default=None, help="start from an earlier run's " + NET_FILE)
    p.add_argument("--dat", default=None, help="dlib_face_recognition_resnet_model_v1.dat (default: the installed one)")
    for f in dataclasses.fields(FinetuneConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--net-only", action="store_true", help=f"write {NET_FILE} from the run's checkpoint and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.net_only:  # the network of a run in progress (or stopped), e.g. to fit and measure a head on it
        state = torch.load(args.out / CHECKPOINT, map_location="cpu", weights_only=False)
        K = len(state["model"]["code_mean"])
        model = ShapeReader(FaceEmbedder(), torch.zeros(K), torch.ones(K))
        model.load_state_dict(state["model"])
        save_net(model, args.out / NET_FILE, FinetuneConfig(**state["config"]))
        logger.info("%s: step %d", args.out / NET_FILE, state["step"])
        return 0
    cfg = FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})
    run(cfg, args.out, args.device, args.dat, args.init)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
