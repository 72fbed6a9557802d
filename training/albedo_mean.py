"""Match a bundle's AlbedoGAN to the mean of its training maps, texel by texel (the first moment).

    python -m training.albedo_mean --bundle DIR --out DIR [--version V] [--samples 2048]
        [--config training/configs/albedo_256.yaml]

A GAN's average output drifts from its data's average as it trains: bundle 1.2.0's generator, averaged over 2048
latents, put a red blotch on the left cheek beside the nose, a green ring around the lips and coloured speckle
along the map's edges that no training map has, and those are in every map it draws. With a learned mean image
(``G.synthesis.mean_image``: ``out = img_bias + img_scale · synthesis``) the first moment is one tensor: adding
``mean training map − mean generated map`` (``--samples`` latents at truncation 1, in the generator's [-1, 1]
units, before clipping) to ``img_bias`` makes the two means equal and leaves how maps differ from one another
untouched. The training maps are those of the albedo stage's ``data`` section in ``--config`` (the synthetic
stream's training indices, or the folder's training split: never the held-out maps). Measured on bundle 1.2.0 → 1.3.0
(``benchmarks/albedo_compare.py``, 512 maps of an unseen stream): KID 2.52 → 1.22 (256² features), 0.89 → 0.43
(64² features); the mean map's features sit where the training maps' do (registration 1.2 → 0.7 % of the width).

The copy's ``albedo`` graph changes only in that initializer; its manifest records the calibration
(``albedo_mean``) and drops the old metrics (``benchmarks/bundle_metrics.py --write`` measures the new ones).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facecore.bundle import Bundle, drop_latent_graphs, edited_copy, load_bundle, sha256_file

BIAS_NAMES = ("synthesis.img_bias", "synthesis.img_bias__fp16")  # as exported (fp32 or fp16 weights)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "albedo_256.yaml"
logger = logging.getLogger(__name__)


def generated_mean(bundle: Bundle, samples: int, seed: int = 0) -> np.ndarray:
    """(3, R, R) float64 mean output of the bundle's mapping + albedo graphs over ``samples`` latents (ψ = 1)."""
    from service.engine.sessions import generated_albedos, open_sessions

    z = np.random.default_rng(seed).standard_normal((samples, bundle.manifest.codes.z_dim)).astype(np.float32)
    total = sum(
        maps.astype(np.float64).sum(0)
        for maps in generated_albedos(open_sessions(bundle, ["CPUExecutionProvider"], 0), z)
    )
    return np.asarray(total) / samples


def training_mean(data: Mapping[str, Any], resolution: int, samples: int) -> tuple[np.ndarray, int]:
    """(3, R, R) float64 mean of up to ``samples`` training maps (in [-1, 1]) of an albedo ``data`` section, and
    how many were averaged: spread evenly over the training set (its mirrored copies too, with ``mirror``); the
    held-out maps are never among them."""
    from training.data.albedo_maps import DataConfig, build_data

    train, _ = build_data(DataConfig(**{**dict(data), "cache": False}), resolution)
    picked = np.unique(np.linspace(0, len(train) - 1, min(samples, len(train))).round().astype(int))
    total = 0.0
    for start in range(0, len(picked), 64):
        total = total + train.batch(picked[start : start + 64].tolist()).double().sum(0).numpy()
    return np.asarray(total) / len(picked), len(picked)


def calibrate(
    bundle: str | Path,
    out: str | Path,
    data: Mapping[str, Any],
    samples: int = 2048,
    version: str | None = None,
    seed: int = 0,
) -> Path:
    """A copy of ``bundle`` (``out`` may be ``bundle`` itself) whose generator's mean is its training maps' mean.

    Raises:
        ValueError: the generator has no learned mean image (it was trained without ``mean_image``).
    """
    import onnx
    from onnx import numpy_helper

    source = load_bundle(bundle)
    resolution = source.manifest.resolutions.albedo
    graph = onnx.load(str(source.root / source.manifest.graphs["albedo"].file))
    bias = next((t for t in graph.graph.initializer if t.name in BIAS_NAMES), None)
    if bias is None:
        raise ValueError(f"{source.root}: the albedo graph has no learned mean image ({' / '.join(BIAS_NAMES)})")
    target, n_maps = training_mean(data, resolution, samples)
    shift = target - generated_mean(source, samples, seed)
    logger.info("albedo mean: |shift| mean %.4f, max %.4f (%d maps, %d latents)",
                np.abs(shift).mean(), np.abs(shift).max(), n_maps, samples)  # fmt: skip

    def edit(folder: Path, manifest: dict) -> None:
        spec = manifest["graphs"]["albedo"]
        path = folder / spec["file"]
        model = onnx.load(str(path))
        init = next(t for t in model.graph.initializer if t.name == bias.name)
        value = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((value.astype(np.float64) + shift[None]).astype(value.dtype), init.name))
        onnx.save(model, str(path))
        spec["sha256"] = sha256_file(path)
        manifest["albedo_mean"] = {
            "samples": samples,
            "training_maps": n_maps,
            "data": {k: v for k, v in dict(data).items() if k in ("kind", "path", "seed", "num_samples", "holdout")},
            "shift_mean_abs": round(float(np.abs(shift).mean()), 5),
            "shift_max_abs": round(float(np.abs(shift).max()), 5),
        }
        manifest["metrics"] = {}  # they measured the uncalibrated generator
        drop_latent_graphs(folder, manifest)

    return edited_copy(bundle, out, version, edit)


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(prog="python -m training.albedo_mean", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the calibrated copy (may be --bundle itself)")
    ap.add_argument("--version", help="the copy's manifest version")
    ap.add_argument("--samples", type=int, default=2048, help="latents and training maps averaged")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the albedo recipe whose data trained G")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.samples < 1:
        ap.error("--samples must be >= 1")
    if not args.config.is_file():
        ap.error(f"--config: no file {args.config}")
    data = (yaml.safe_load(args.config.read_text()) or {}).get("albedo", {}).get("data", {})
    try:
        calibrate(args.bundle, args.out, data, args.samples, args.version)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
