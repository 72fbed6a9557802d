"""Throughput of the synthetic face source: images/s for batches at a given image / albedo size.

    python benchmarks/synthetic_speed.py                       # batch 16, 224 px images, 256² albedo, CPU
    python benchmarks/synthetic_speed.py --device cuda --batches 20
    python benchmarks/synthetic_speed.py --grid /tmp/synthetic_grid.png   # also save a picture of a batch

Prints the time per stage (parameter draws, albedo, geometry + rendering) and images/s, plus the skin-tone
coverage (ITA° categories) of the sampled albedos.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_grid(batch, path: Path, cols: int = 8) -> None:
    """Images with their landmarks (green visible, red hidden) over their UV albedos."""
    from PIL import Image, ImageDraw

    from training.data.skin import linear_to_srgb

    tiles = []
    S = batch.image_srgb.shape[-1]
    for i in range(len(batch)):
        im = Image.fromarray((batch.image_srgb[i].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for (x, y), vis in zip(batch.landmarks_px[i].tolist(), batch.landmarks_visible[i].tolist(), strict=True):
            draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(40, 220, 40) if vis else (230, 40, 40))
        alb = torch.nn.functional.interpolate(batch.albedo_uv[i : i + 1].cpu(), size=(S, S), mode="area")
        alb = Image.fromarray((linear_to_srgb(alb[0]).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        tiles.append((np.asarray(im), np.asarray(alb)))
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * 2 * S, cols * S, 3), 255, np.uint8)
    for i, (im, alb) in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[2 * r * S : (2 * r + 1) * S, c * S : (c + 1) * S] = im
        grid[(2 * r + 1) * S : (2 * r + 2) * S, c * S : (c + 1) * S] = alb
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    print(f"grid: {path} ({len(tiles)} samples: image with landmarks, then its UV albedo)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--albedo-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=5, help="timed batches (after one warm-up batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="save a picture of the first timed batch here")
    args = parser.parse_args()

    from training.data.skin import individual_typology_angle
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = SyntheticFaces(
        SyntheticConfig(image_size=args.image_size, albedo_size=args.albedo_size, seed=args.seed), device=device
    )
    B = args.batch_size
    ds.batch(range(B))  # warm-up: builds the per-resolution texel maps
    draws, albedos, totals = [], [], []
    first = None
    for step in range(1, args.batches + 1):
        indices = ds.batch_indices(step, B)
        t0 = time.perf_counter()
        albedo_params, scene = ds.sample_params(indices)
        albedo_params, scene = albedo_params.to(device), scene.to(device)
        _sync(device)
        t1 = time.perf_counter()
        batch = ds.render(torch.tensor(indices), albedo_params, scene)
        _sync(device)
        t2 = time.perf_counter()
        ds.albedo(albedo_params, args.albedo_size)  # the albedo stage alone, for the breakdown
        _sync(device)
        t3 = time.perf_counter()
        draws.append(t1 - t0)
        totals.append(t2 - t0)
        albedos.append(t3 - t2)
        first = first if first is not None else batch
    med, best = float(np.median(totals)), float(np.min(totals))
    print(
        f"device {device}, threads {torch.get_num_threads()}, batch {B}, image {args.image_size}², "
        f"albedo {args.albedo_size}², {args.batches} batches"
    )
    print(
        f"per batch (median / best): total {1000 * med:.0f} / {1000 * best:.0f} ms; draws "
        f"{1000 * np.median(draws):.0f} / {1000 * np.min(draws):.0f} ms; albedo {1000 * np.median(albedos):.0f} / "
        f"{1000 * np.min(albedos):.0f} ms; geometry, camera, background, render and landmarks "
        f"{1000 * (med - np.median(draws) - np.median(albedos)):.0f} ms (median total minus the two)"
    )
    print(f"throughput: {B / med:.1f} images/s (median batch), {B / best:.1f} images/s (best batch)")

    ita = individual_typology_angle(
        ds.sample_params(range(10_000, 10_400))[0].skin_rgb()
    ).numpy()  # base skin tone of 400 samples
    edges = [-90, -30, 10, 28, 41, 55, 90]
    names = ["dark", "brown", "tan", "intermediate", "light", "very light"]
    share = np.histogram(ita, edges)[0] / len(ita)
    print(
        f"skin ITA°: {ita.min():.0f} … {ita.max():.0f}; "
        + ", ".join(f"{nm} {100 * s:.0f}%" for nm, s in zip(names, share, strict=True))
    )
    if args.grid is not None and first is not None:
        save_grid(first, args.grid)


if __name__ == "__main__":
    main()
