"""/reconstruct's ``albedo=generated`` for a bundle's own AlbedoGAN: the photo's clean albedo → the generator's latent.

    python -m training.albedo_latent --bundle DIR --out DIR [--samples 2000] [--size 32] [--version V]

``albedo=generated`` answers a photo with AlbedoGAN's map at the face's latent (the paper's use of the shared
latent): a complete, clean map in the generator's style (no hair, glasses, background or unseen side to fill),
coloured like the person. The encoder's old ``ws`` head was trained against a generator the bundle no longer has
(``training.export --replace-generator`` cuts it), so this adds a graph ``albedo_latent`` trained against the
bundle's own generator instead. It reads what /reconstruct already makes, the photo's de-lit, cleaned albedo
(:func:`facecore.texture.extract`), averaged down to ``size``² (sRGB-encoded, [0, 1]), and gives ``ws``
(one w for every synthesis layer).

Training pairs go through the service's own path: a latent z → the bundle's mapping + albedo graphs → that map
(linear) rendered on a synthetic head (random identity, expression, pose, light, framing, background:
:class:`training.data.synthetic.SyntheticFaces`) → ``service.pipeline.reconstruct`` (dlib detection, 5-point
alignment, ONNX encoder, extraction, unwrapped at the generator's resolution as /reconstruct does for
``albedo=generated`` whatever the texture size asked) → its albedo map. The map is regressed onto w by ridge
regression in normalised W units (each dimension by its mean and spread under the mapping network), the penalty
chosen on the last ``validation`` fraction of the pairs, which the fit for that choice never sees; the final map is
refitted on all pairs. The manifest records the held-out fit (``albedo_latent``): PSNR of the generator at the
predicted latent against the generator at the true one, beside the same for the mean latent (w_avg, what a head
that learned nothing gives).

Run it after the generator is final: ``--replace-generator`` and :mod:`training.albedo_mean` change the maps a
latent draws, so they drop the graph.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facecore.bundle import LATENT_GRAPH as GRAPH
from facecore.bundle import Bundle, edited_copy, load_bundle
from facecore.texture import box_downsample
from service.engine.sessions import GraphSession, inline_runner, open_sessions

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # ridge penalties tried (features are [0, 1] texels)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pairs:
    """``maps`` (N, 3, S, S) the service's photo albedo, downsampled; ``w`` (N, w_dim) the latent that drew the
    rendered face's albedo; ``failed`` the samples the service could not reconstruct (no face found)."""

    maps: np.ndarray
    w: np.ndarray
    failed: list[str]


def make_pairs(bundle: Bundle, count: int, seed: int, size: int, workers: int = 1) -> Pairs:
    """``count`` training pairs (see the module's docstring); sample ``i`` depends only on ``(seed, i)``, so
    ``workers`` processes (one thread each, contiguous index ranges) give the same pairs as one."""
    if workers <= 1:
        return _pairs(bundle.root, range(count), seed, size, threads=0)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bounds = np.linspace(0, count, workers + 1).round().astype(int)
    chunks = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_pairs, bundle.root, c, seed, size, 1) for c in chunks]
        parts = [f.result() for f in futures]
    maps, w = (np.concatenate([getattr(p, k) for p in parts]) for k in ("maps", "w"))
    return Pairs(maps, w, [f for p in parts for f in p.failed])


def _pairs(root: Path, indices: range, seed: int, size: int, threads: int) -> Pairs:
    from PIL import Image

    from facecore import color
    from models.face.model import FaceModel
    from service import pipeline as P
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(root)
    sessions = open_sessions(bundle, ["CPUExecutionProvider"], threads)
    run_graph = inline_runner(sessions)

    res = bundle.manifest.resolutions.albedo
    faces = SyntheticFaces(
        SyntheticConfig(image_size=224, albedo_size=max(res, 64), seed=seed),  # the size of maps not drawn here
        face_model=FaceModel.from_file(bundle.root / bundle.manifest.face_model.file),
    )
    # at the generator's resolution, the unwrap /reconstruct makes for albedo=generated whatever the texture size
    req = P.ReconstructRequest("albedo_latent", res, 64, ("albedo",), False, "auto", "photo")
    maps, ws, failed = [], [], []
    for n, i in enumerate(indices):
        z = np.random.default_rng([seed, i]).standard_normal((1, bundle.manifest.codes.z_dim)).astype(np.float32)
        w = sessions["mapping"].run({"z": z})["ws"]
        drawn = np.clip((sessions["albedo"].run({"ws": w})["albedo"][0] + 1.0) / 2.0, 0.0, 1.0)
        albedo_params, scene = faces.sample_params([i])
        linear = torch.as_tensor(np.asarray(color.srgb_to_linear(drawn), np.float32))[None]
        item = faces.render(torch.tensor([i]), albedo_params, scene, albedo=linear)
        image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
        try:
            result = asyncio.run(P.reconstruct(bundle, run_graph, req, image, P.Timer()))
        except P.PhotoError as exc:
            failed.append(f"{i}: {exc}")
            continue
        albedo = np.asarray(Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB"), np.float32) / 255.0
        maps.append(box_downsample(albedo, size).transpose(2, 0, 1))
        ws.append(w[0, 0])
        if (n + 1) % 100 == 0:
            logger.info("pairs %d–%d: %d done (%d without a face)", indices.start, indices.stop - 1, n + 1, len(failed))
    return Pairs(np.stack(maps), np.stack(ws).astype(np.float32), failed)


def w_statistics(
    mapping: GraphSession, z_dim: int, samples: int = 4096, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation of W under a bundle's ``mapping`` graph (ψ = 1)."""
    z = np.random.default_rng(seed).standard_normal((samples, z_dim)).astype(np.float32)
    w = np.concatenate([mapping.run({"z": z[s : s + 256]})["ws"][:, 0] for s in range(0, samples, 256)])
    return w.mean(0).astype(np.float64), np.maximum(w.std(0), 1e-6).astype(np.float64)


def ridge(x: np.ndarray, t: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression ``t ≈ x @ A + b`` (the intercept not penalised): (A, b)."""
    mx, mt = x.mean(0), t.mean(0)
    xc = x - mx
    if x.shape[0] < x.shape[1]:  # the dual form: an N × N system
        A = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(len(x)), t - mt)
    else:
        A = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (t - mt))
    return A, mt - mx @ A


class LatentGraph(nn.Module):
    """(B, 3, S, S) photo albedo (sRGB-encoded, [0, 1]) → (B, num_ws, w_dim) ws: one affine map, w broadcast."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, num_ws: int):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self.num_ws = num_ws

    def forward(self, albedo: torch.Tensor) -> torch.Tensor:
        w = albedo.flatten(1) @ self.weight + self.bias
        return w[:, None, :].expand(-1, self.num_ws, -1)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample PSNR (dB) of maps in [0, 1] (leading axis = samples)."""
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def generated_maps(albedo: GraphSession, w: np.ndarray, num_ws: int) -> np.ndarray:
    """(N, 3, R, R) a bundle's ``albedo`` graph at the latents ``w`` (N, w_dim), sRGB-encoded in [0, 1]."""
    ws = np.repeat(w[:, None].astype(np.float32), num_ws, 1)
    maps = [albedo.run({"ws": ws[s : s + 16]})["albedo"] for s in range(0, len(w), 16)]
    return np.clip((np.concatenate(maps) + 1.0) / 2.0, 0.0, 1.0)


def fit(bundle: Bundle, pairs: Pairs, validation: float = 0.15) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight (3·S·S, w_dim), bias (w_dim,), report): the ridge map in W units and its held-out measurements."""
    sessions = open_sessions(bundle, ["CPUExecutionProvider"], 0)
    num_ws = bundle.manifest.codes.num_ws
    mean, std = w_statistics(sessions["mapping"], bundle.manifest.codes.z_dim)
    x = pairs.maps.reshape(len(pairs.maps), -1).astype(np.float64)
    t = (pairs.w.astype(np.float64) - mean) / std
    n_val = max(1, int(round(validation * len(x))))
    if len(x) - n_val < 2:
        raise ValueError(f"{len(x)} pairs: too few to fit and validate (need at least {n_val + 2})")
    fit_x, fit_t, val_x, val_t = x[:-n_val], t[:-n_val], x[-n_val:], t[-n_val:]
    errors = {}
    for lam in LAMBDAS:
        A, b = ridge(fit_x, fit_t, lam)
        errors[lam] = float(((val_x @ A + b - val_t) ** 2).mean())
    best = min(errors, key=errors.__getitem__)
    A, b = ridge(fit_x, fit_t, best)
    val_pred = (val_x @ A + b) * std + mean
    truth = generated_maps(sessions["albedo"], pairs.w[-n_val:], num_ws)
    got = generated_maps(sessions["albedo"], val_pred, num_ws)
    mean_map = generated_maps(sessions["albedo"], bundle.w_avg[None], num_ws)
    report = {
        "pairs": len(x),
        "validation_pairs": n_val,
        "penalty": best,
        "w_error_normalised": {str(k): round(v, 4) for k, v in errors.items()},
        "w_variance_explained": round(1.0 - errors[best] / float(val_t.var(0).mean()), 4),
        "psnr_db": round(float(psnr(got, truth).mean()), 2),
        "psnr_db_mean_latent": round(float(psnr(np.repeat(mean_map, len(truth), 0), truth).mean()), 2),
    }
    A, b = ridge(x, t, best)  # the shipped map: every pair
    return A * std, b * std + mean, report


def add_latent_graph(
    bundle: str | Path,
    out: str | Path,
    count: int,
    size: int = 32,
    seed: int = 20261204,
    version: str | None = None,
    workers: int = 1,
    pairs_file: Path | None = None,
) -> Path:
    """A copy of ``bundle`` with the ``albedo_latent`` graph fitted on ``count`` pairs (see the module)."""
    from training.export import GraphExport, graph_edit

    source = load_bundle(bundle)
    if not source.capabilities["generate"] or not source.capabilities["reconstruct"]:
        raise ValueError(f"{source.root}: needs both AlbedoGAN (mapping, albedo) and the /reconstruct graphs")
    tone = source.manifest.skin_tone  # the photo maps are de-lit to its skin-level map
    level_map = None if tone is None or tone.level_map is None else list(tone.level_map)
    key = dict(
        count=count, seed=seed, size=size, generator=source.manifest.graphs["albedo"].sha256, level_map=level_map
    )
    pairs = None
    if pairs_file is not None and pairs_file.is_file():
        with np.load(pairs_file) as f:
            if json.loads(str(f["key"])) == key:
                pairs = Pairs(f["maps"], f["w"], json.loads(str(f["failed"])))
                logger.info("pairs: %d read from %s", len(pairs.w), pairs_file)
    if pairs is None:
        pairs = make_pairs(source, count, seed, size, workers=workers)
        if pairs_file is not None:  # to refit without rendering again
            np.savez(pairs_file, maps=pairs.maps, w=pairs.w, failed=json.dumps(pairs.failed), key=json.dumps(key))
    weight, bias, report = fit(source, pairs)
    report.update(seed=seed, size=size, failed=len(pairs.failed))
    logger.info("albedo latent: %s", report)
    num_ws = source.manifest.codes.num_ws
    graph = GraphExport(LatentGraph(weight, bias, num_ws), {"albedo": torch.rand(2, 3, size, size)}, ["ws"])

    shape = (2, num_ws, source.manifest.codes.w_dim)
    return edited_copy(bundle, out, version, graph_edit(GRAPH, graph, {"ws": shape}, "albedo_latent", report))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.albedo_latent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the copy with the graph (may be --bundle itself)")
    ap.add_argument("--version", help="the copy's manifest version")
    ap.add_argument("--samples", type=int, default=2000, help="rendered training pairs")
    ap.add_argument("--size", type=int, default=32, help="the photo albedo is averaged down to size² texels")
    ap.add_argument("--seed", type=int, default=20261204, help="the pairs' stream (keep it apart from evaluations')")
    ap.add_argument("--workers", type=int, default=1, help="processes rendering pairs (one thread each)")
    ap.add_argument("--pairs", type=Path, help="an .npz cache of the pairs (reused when made with the same settings)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.samples < 8:
        ap.error("--samples must be >= 8")
    if not 4 <= args.size <= 128:
        ap.error("--size must be within 4..128")
    try:
        add_latent_graph(
            args.bundle, args.out, args.samples, args.size, args.seed, args.version, args.workers, args.pairs
        )
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
