"""The ``localiser`` stage: a small network that finds the 68 landmarks of a face in a loosely framed crop.

Why: /reconstruct cuts the encoder's crop around dlib's 5 points, and the encoder takes that framing for granted.
dlib's 5-point model places a frontal face in the detector's box whatever the head does: at yaw ≳ 45° its points
are 0.3–0.7 eye-corner distances off and the reconstruction follows them (``benchmarks/alignment_noise.py``:
0.152 as served vs 0.078 with the crop cut around the true points). The localiser reads a crop cut with the same
template at a wider zoom (:data:`facecore.localise.CROP_SCALE`) around *rough* anchors (dlib's, or its own previous
answer) and returns the points the encoder's training crops were cut around (the face model's projected 3-D
landmarks, hidden ones included), so the service can cut the encoder's crop where training did.

Data: renders of the synthetic source (``training.data.synthetic``, a seed of its own, the face smaller in the
frame so a wide crop has background around it, not black), rendered once into ``out/renders`` in chunks (a killed
run keeps its finished chunks). Each step cuts crops around the true anchors moved by Gaussian noise (most with a
small σ, some with a large one: dlib's failures), in random tone, blur, noise, greyscale and occluders, so that
the network sees what photos give it. Loss: L1 of the points in crop units. Held out: renders of another seed.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facecore import detect, localise
from facecore.config import parse_section, section_dict
from training.distributed import DistInfo
from training.loop import LoopSchedule, TrainingLoop, derive_seed

logger = logging.getLogger(__name__)

CHUNK = 256  # renders per file of out/renders
WEIGHTS_FILE = "localiser.pt"
WARMUP = 200  # steps
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class LocaliserStageConfig:
    """The ``localiser`` section.

    Attributes:
        seed: training renders' stream seed (the held-out set uses ``eval_seed``).
        renders: training renders (drawn once, reused with fresh augmentation every step).
        render_size: their side, pixels.
        face_fill: the face's landmark box as a fraction of the render (smaller than the shape stage's, so that
            the wide crop sees background).
        supersample: the training renders' samples per pixel side (``SyntheticConfig.supersample``: edges and
            nearly closed lips blurred as a camera blurs them); the held-out renders stay at 1, so runs compare.
        pitch_max_deg: the training renders' head pitch limit (``PoseRanges``; the synthetic source's default 20°:
            portraits looking down or up further, as fixtures 002 and 018 do, lie outside it); the held-out renders
            keep the default, so runs compare.
        eval_seed, eval_renders: the held-out renders.
        input_size: the network's crop side, pixels.
        channels: widths of the network's stages (:class:`models.localiser.Localiser`).
        jitter: σ of the anchor noise (eye-centre distances) for most crops; ``jitter_large`` for a fraction
            ``large_fraction`` of them (rough anchors: dlib's 5 points on a turned head). Measured: σ uniform up
            to 0.45 for 40 % over 10,000 steps did better on the held-out renders (anchors 0.036 → 0.027) but
            lost close-ups that fill the frame (two of 46 bundle-metric renders 0.7 eye distances off).
        steps, batch, lr: the schedule.
    """

    seed: int = 31
    renders: int = 12_288
    render_size: int = 192
    face_fill: tuple[float, float] = (0.3, 0.55)
    supersample: int = 1
    pitch_max_deg: float = 20.0
    eval_seed: int = 2_000_031
    eval_renders: int = 512
    input_size: int = 96
    channels: tuple[int, ...] = (24, 48, 96, 160)
    jitter: float = 0.06
    jitter_large: float = 0.18
    large_fraction: float = 0.35
    steps: int = 5000
    batch: int = 48
    lr: float = 1e-3
    threads: int | None = None
    log_every: int = 50
    checkpoint_every: int = 250
    checkpoint_on_stop: bool = True
    keep_checkpoints: int = 2
    max_steps: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.renders < CHUNK or self.eval_renders < 1:
            raise ValueError(f"renders: expected ≥ {CHUNK} training and ≥ 1 held-out renders")
        if not 32 <= self.input_size <= 256:
            raise ValueError(f"input_size: expected 32–256 pixels, got {self.input_size}")
        if not 0.0 <= self.large_fraction <= 1.0:
            raise ValueError(f"large_fraction: expected a fraction, got {self.large_fraction}")


# ------------------------------------------------------------------------------------------------------ renders
def render_set(
    out: Path,
    seed: int,
    count: int,
    size: int,
    face_fill: tuple[float, float],
    supersample: int = 1,
    pitch_max_deg: float = 20.0,
) -> dict[str, np.ndarray]:
    """``count`` renders of stream ``seed`` (rendered into ``out`` by chunks on the first call, loaded after):
    ``image`` (N, S, S, 3) uint8 sRGB, ``landmarks`` (N, 68, 2) float32 pixels, ``visible`` (N, 68) bool."""
    from models.face.model import FaceModel
    from training.data.synthetic import PoseRanges, SyntheticConfig, SyntheticFaces

    out.mkdir(parents=True, exist_ok=True)
    faces = None
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, count, CHUNK):
        tag = (f"_ss{supersample}" if supersample > 1 else "") + (f"_p{pitch_max_deg:g}" if pitch_max_deg != 20 else "")
        path = out / f"{seed}_{start:07d}_{min(count, start + CHUNK) - start}{tag}.npz"
        if not path.is_file():
            if faces is None:
                config = SyntheticConfig(
                    image_size=size, albedo_size=128, seed=seed, face_fill=face_fill, supersample=supersample,
                    pose=PoseRanges(pitch_max_deg=pitch_max_deg),
                )  # fmt: skip
                faces = SyntheticFaces(config, face_model=FaceModel.from_file())
            t0 = time.perf_counter()
            items = [
                faces.batch(list(range(i, min(i + 16, start + CHUNK, count))))
                for i in range(start, min(start + CHUNK, count), 16)
            ]
            chunk = {
                "image": np.concatenate([_uint8(b.image_srgb) for b in items]),
                "landmarks": np.concatenate([b.landmarks_px.float().numpy() for b in items]),
                "visible": np.concatenate([b.landmarks_visible.numpy() for b in items]),
            }
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **chunk)
            tmp.rename(path)
            logger.info("rendered %s (%.1f s)", path.name, time.perf_counter() - t0)
        with np.load(path) as data:
            parts.append({k: data[k] for k in ("image", "landmarks", "visible")})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _uint8(images: torch.Tensor) -> np.ndarray:
    return (images.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- augmentation
def eye_distance(anchors: np.ndarray) -> np.ndarray:
    """(..., 3, 2) anchors → (...) distance between the eye centres."""
    return np.linalg.norm(anchors[..., 1, :] - anchors[..., 0, :], axis=-1)


def true_anchors(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) → (N, 3, 2) alignment anchors (:func:`facecore.detect.alignment_anchors`)."""
    return np.stack([detect.alignment_anchors(p) for p in landmarks])


def crop_batch(images: torch.Tensor, matrices: np.ndarray, size: int) -> torch.Tensor:
    """(B, 3, H, W) float images, (B, 2, 3) image → crop matrices → (B, 3, size, size) crops: bilinear at twice
    the size, then 2×2 means (the service's crops are anti-aliased too); black outside the image."""
    b, _, h, w = images.shape
    big = 2 * size
    # theta maps the output's normalised coordinates to the input's (affine_grid, align_corners=False)
    out_norm_to_px = np.array([[big / 2, 0, big / 2 - 0.5], [0, big / 2, big / 2 - 0.5], [0, 0, 1]])
    big_to_size = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]])  # p_size = (p_big + 0.5) / 2 - 0.5
    in_px_to_norm = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    thetas = []
    for m in matrices:
        inv = np.vstack([detect.invert_affine(m), [0, 0, 1]])
        thetas.append((in_px_to_norm @ inv @ big_to_size @ out_norm_to_px)[:2])
    theta = torch.as_tensor(np.stack(thetas), dtype=images.dtype)
    grid = F.affine_grid(theta, [b, 3, big, big], align_corners=False)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(crops, 2)


def photometric(crops: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random tone (gain, contrast, gamma, colour cast), greyscale, blur, noise and an occluding rectangle, per
    crop: what photos do that clean renders do not."""
    b, _, s, _ = crops.shape

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    x = crops.clamp(0, 1) ** torch.exp(0.25 * randn(b, 1, 1, 1))
    x = x * torch.exp(0.12 * randn(b, 3, 1, 1) + 0.25 * randn(b, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * torch.exp(0.25 * randn(b, 1, 1, 1)) + mean
    grey = rand(b, 1, 1, 1) < 0.15
    x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    # blur: a Gaussian of σ 0.5–1.5 px on 30 % of the crops (per-crop kernels as one grouped convolution)
    sigma = torch.where(rand(b) < 0.3, 0.5 + rand(b), torch.full((b,), 0.05))
    t = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)
    flat = x.reshape(1, b * 3, s, s)
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=b * 3)
    x = flat.reshape(b, 3, s, s)
    x = x + randn(b, 3, s, s) * (0.04 * rand(b, 1, 1, 1)) * (rand(b, 1, 1, 1) < 0.5)
    # an occluder (hand, hair, glasses' frame, microphone) over 30 % of the crops: a rectangle of flat colour
    for i in torch.nonzero(rand(b) < 0.3).flatten().tolist():
        hw = (0.15 + 0.3 * rand(2)) * s
        y0, x0 = (rand(2) * (s - hw)).long().tolist()
        x[i, :, y0 : y0 + int(hw[0]), x0 : x0 + int(hw[1])] = rand(3, 1, 1)
    return x.clamp(0, 1)


def mirror(crops: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops mirrored left–right with their (B, 68, 2) targets in crop units: x → −x, and the points of the
    subject's two sides trade names (a mirrored right eye is a left eye)."""
    from models.landmarks import IBUG68_FLIP

    mirrored = target[:, torch.as_tensor(np.array(IBUG68_FLIP))]
    return crops.flip(-1), torch.stack([-mirrored[..., 0], mirrored[..., 1]], -1)


# ---------------------------------------------------------------------------------------------------- training
class LocaliserTrainer(TrainingLoop):
    def __init__(self, c: LocaliserStageConfig, out: Path, data: dict[str, np.ndarray]):
        from models.localiser import Localiser

        self.c = c
        self.out = out
        self.info = DistInfo(0, 1, torch.device("cpu"), False)
        self.device = self.info.device
        self.loop = LoopSchedule.of(c, c.steps, "localiser")
        self.data = data
        self.anchors = true_anchors(data["landmarks"])
        self.net = Localiser(c.input_size, c.channels)
        # the network answers relative to the mean crop's points, so its head starts at a sensible answer
        self.net.mean_points.copy_(torch.as_tensor(self._targets(np.arange(min(len(self.anchors), 1024)))[0].mean(0)))
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=1e-4)

    def _targets(self, idx: np.ndarray, noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, 68, 2) targets in crop units and (B, 2, 3) matrices for renders ``idx`` (anchors + ``noise``)."""
        anchors = self.anchors[idx]
        if noise is not None:
            anchors = anchors + noise * eye_distance(anchors)[:, None, None]
        size = self.c.input_size
        matrices = np.stack([detect.anchors_matrix(a, size, localise.CROP_SCALE) for a in anchors])
        px = np.einsum("bij,bpj->bpi", matrices[:, :, :2], self.data["landmarks"][idx]) + matrices[:, None, :, 2]
        return localise.pixels_to_units(px, size), matrices

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.c
        rng = np.random.default_rng(derive_seed(c.seed, step))
        idx = rng.integers(0, len(self.anchors), c.batch)
        sigma = np.where(rng.random(c.batch) < c.large_fraction, c.jitter_large, c.jitter)
        targets, matrices = self._targets(idx, rng.normal(size=(c.batch, 3, 2)) * sigma[:, None, None])
        images = torch.as_tensor(self.data["image"][idx]).permute(0, 3, 1, 2).float() / 255.0
        crops = crop_batch(images, matrices, c.input_size)
        crops = photometric(crops, torch.Generator().manual_seed(derive_seed(c.seed, step, 1)))
        target = torch.as_tensor(targets, dtype=torch.float32)
        flip = torch.as_tensor(rng.random(c.batch) < 0.5)
        if flip.any():
            crops[flip], target[flip] = mirror(crops[flip], target[flip])
        return crops, target

    def train_step(self) -> dict[str, Any]:
        c = self.c
        # linear warm-up (the flattened head's first Adam steps move its output by whole crop widths), cosine decay
        lr = c.lr * min(1.0, (self.step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * self.step / c.steps))
        for group in self.opt.param_groups:
            group["lr"] = lr
        crops, target = self.batch(self.step)
        self.net.train()
        pred = self.net(crops)
        loss = (pred - target).abs().sum(-1).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"step": self.step, "loss": loss.item(), "lr": lr}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"localiser": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"config": section_dict(self.c)}

    def check_resumable(self, path: Path, extra: Mapping[str, Any]) -> None:
        old = {**section_dict(LocaliserStageConfig()), **extra.get("config", {})}  # keys added since: their default
        for key in ("input_size", "channels", "seed", "renders", "pitch_max_deg"):
            if old.get(key) != section_dict(self.c)[key]:
                raise ValueError(f"{path}: localiser.{key} changed ({old.get(key)} → {section_dict(self.c)[key]})")

    def progress_postfix(self, log: Mapping[str, Any]) -> dict[str, str]:
        return {"loss": f"{log['loss']:.4f}"}

    def on_schedule_end(self) -> None:
        torch.save({"config": section_dict(self.c), "state": self.net.state_dict()}, self.out / WEIGHTS_FILE)


# -------------------------------------------------------------------------------------------------- evaluation
def torch_graph(net: torch.nn.Module) -> localise.RunGraph:
    """``net`` behind the service's ``run_graph`` interface (:func:`facecore.localise.localise`)."""

    async def run_graph(name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {localise.GRAPH_OUTPUT: net(torch.as_tensor(inputs[localise.GRAPH_INPUT])).numpy()}

    return run_graph


def landmark_error(pred: np.ndarray, truth: np.ndarray, visible: np.ndarray) -> float:
    """Mean distance over the visible landmarks / the true outer-eye-corner distance (iBUG 36–45)."""
    iod = float(np.linalg.norm(truth[36] - truth[45]))
    return float((np.linalg.norm(pred - truth, axis=1)[visible]).mean() / iod)


def _anchor_error(points: np.ndarray, anchors: np.ndarray, iod: float) -> float:
    return float(np.linalg.norm(detect.alignment_anchors(points) - anchors, axis=1).mean() / iod)


def evaluate(
    run_graph: localise.RunGraph, size: int, data: Mapping[str, np.ndarray], passes: int = 3
) -> dict[str, Any]:
    """Held-out numbers of a localiser, starting where the service starts: dlib's 5 points on each render.

    Per render with a face found: the anchor error (eye centres, nose bottom; / eye-corner distance) of dlib's
    points and of the localiser after each pass, and its 68-landmark error after each pass."""
    import asyncio

    rows: dict[str, list[float]] = {"dlib anchors": []}
    missed = 0
    for image, truth, visible in zip(data["image"], data["landmarks"], data["visible"], strict=True):
        faces = detect.detect_landmarks5(image)
        if not faces:
            missed += 1
            continue
        iod = float(np.linalg.norm(truth[36] - truth[45]))
        anchors = detect.alignment_anchors(truth)

        rows["dlib anchors"].append(_anchor_error(faces[0].points, anchors, iod))
        points = faces[0].points
        for k in range(1, passes + 1):
            points = asyncio.run(localise.localise(run_graph, image, points, size, passes=1))
            rows.setdefault(f"pass {k} anchors", []).append(_anchor_error(points, anchors, iod))
            rows.setdefault(f"pass {k} landmarks", []).append(landmark_error(points, truth, visible))
    summary = {
        name: {"mean": float(np.mean(v)), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9))}
        for name, v in rows.items()
        if v
    }
    return {"renders": len(data["image"]), "no_face": missed, "errors": summary}


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """The stage: render (once), train (resumable), then evaluate on the held-out renders and save the weights
    (``localiser.pt``) and numbers (``metrics.json``) that ``python -m training.export --add-localiser`` ships."""
    c = parse_section(LocaliserStageConfig, cfg.get("localiser"), "localiser")
    if c.threads:
        torch.set_num_threads(c.threads)
    t0 = time.perf_counter()
    data = render_set(out / "renders", c.seed, c.renders, c.render_size, c.face_fill, c.supersample, c.pitch_max_deg)
    held_out = render_set(out / "renders", c.eval_seed, c.eval_renders, c.render_size, c.face_fill)
    render_s = time.perf_counter() - t0
    trainer = LocaliserTrainer(c, out, data)
    t0 = time.perf_counter()
    done, logs = trainer.run_loop()
    if not done:
        return
    trainer.net.eval()
    metrics = {
        "config": section_dict(c),
        "held_out": evaluate(torch_graph(trainer.net), c.input_size, held_out),
        "wall_s": {"render": round(render_s, 1), "train_this_call": round(time.perf_counter() - t0, 1)},
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    for name, row in metrics["held_out"]["errors"].items():
        logger.info("held out %-18s mean %.3f median %.3f p90 %.3f", name, row["mean"], row["median"], row["p90"])


# ------------------------------------------------------------------------------------------------------- bundle
def load_localiser(run_dir: Path) -> tuple[torch.nn.Module, LocaliserStageConfig]:
    """The trained network of a ``localiser`` run folder (its ``localiser.pt``), in eval mode, and its config."""
    from models.localiser import Localiser

    saved = torch.load(Path(run_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    c = parse_section(LocaliserStageConfig, saved["config"], "localiser")
    net = Localiser(c.input_size, c.channels)
    net.load_state_dict(saved["state"])
    return net.eval(), c


def add_localiser(
    bundle: str | Path, run_dir: str | Path, out: str | Path, version: str | None = None, refine: bool = True
) -> Path:
    """A copy of ``bundle`` with the run's localiser as the ``landmarks`` graph (parity-checked ONNX, weights
    stored as the bundle stores its others) and ``manifest["localiser"]``: crop zoom, passes, whether /reconstruct
    refines the encoder's codes onto the landmarks (:mod:`facecore.refine`) and the run's held-out numbers."""
    from facecore.bundle import edited_copy
    from training.export import GraphExport, graph_edit

    run_dir = Path(run_dir)
    net, c = load_localiser(run_dir)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    graph = GraphExport(
        net, {localise.GRAPH_INPUT: torch.rand(2, 3, c.input_size, c.input_size)}, [localise.GRAPH_OUTPUT]
    )
    report = {
        "crop_scale": localise.CROP_SCALE,
        "passes": localise.PASSES,
        "refine": refine,
        "metrics": {"held_out": metrics["held_out"], "renders": c.renders, "steps": c.steps, "seed": c.seed},
    }
    edit = graph_edit(localise.GRAPH, graph, {localise.GRAPH_OUTPUT: (2, 68, 2)}, "localiser", report)
    return edited_copy(bundle, out, version, edit)


def keep_localiser(source: str | Path, bundle: str | Path, out: str | Path, reason: str) -> Path:
    """A copy of ``bundle`` with ``source``'s ``landmarks`` graph and ``manifest["localiser"]`` (its numbers as its
    own run measured them), marked ``kept_from``: a retrained bundle that keeps its predecessor's localiser because
    the new one was not better (``benchmarks/localiser_compare.py`` compares two, paired, through the service)."""
    from facecore.bundle import edited_copy, load_bundle

    src = load_bundle(source)
    if src.manifest.localiser is None:
        raise ValueError(f"{source}: the bundle has no localiser to keep")
    if not reason.strip():
        raise ValueError("say why the localiser is kept (the model card shows it)")
    spec = src.manifest.localiser.model_dump()
    spec["kept_from"] = f"{src.manifest.name} {src.manifest.version}: {reason.strip()}"
    graph = json.loads((src.root / "manifest.json").read_text())["graphs"][localise.GRAPH]

    def edit(folder: Path, manifest: dict) -> None:
        old = manifest["graphs"].get(localise.GRAPH)
        if old is not None and old["file"] != graph["file"]:
            (folder / old["file"]).unlink(missing_ok=True)  # the replaced graph's file goes with it
        shutil.copyfile(src.root / graph["file"], folder / graph["file"])
        manifest["graphs"][localise.GRAPH] = graph
        manifest["localiser"] = spec

    return edited_copy(bundle, out, None, edit)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.localiser", description="put a localiser run into a bundle"
    )
    parser.add_argument("run", type=Path, nargs="?", help="the localiser stage's output folder (RUN/localiser)")
    parser.add_argument("--keep-from", type=Path, help="instead of a run: this bundle's localiser, as it is")
    parser.add_argument("--why", default="", help="with --keep-from: the reason, for the model card")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version")
    parser.add_argument("--no-refine", action="store_true", help="frame the crops only, keep the encoder's codes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.run is None) == (args.keep_from is None):
        parser.error("give a localiser run folder or --keep-from BUNDLE (one of them)")
    if args.why and args.keep_from is None:
        parser.error("--why goes with --keep-from (why the other bundle's localiser is kept)")
    if args.keep_from is not None:
        if args.version or args.no_refine:
            parser.error("--keep-from keeps the localiser as it is (no --version, --no-refine)")
        try:
            keep_localiser(args.keep_from, args.bundle, args.out, args.why)
        except (ValueError, FileNotFoundError) as exc:  # a BundleError is a ValueError
            parser.error(str(exc))
        return 0
    for name in (WEIGHTS_FILE, METRICS_FILE):
        if not (args.run / name).is_file():
            parser.error(f"{args.run}: no {name} (has the localiser stage finished?)")
    add_localiser(args.bundle, args.run, args.out, args.version, refine=not args.no_refine)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
