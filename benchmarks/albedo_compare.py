"""AlbedoGAN of a bundle vs a baseline bundle, in one run (issue 14's targets): distribution distance to held-out
truth maps, registration to the head, native resolution, and the sample sheet.

    python benchmarks/albedo_compare.py [--bundle service/bundled/default] [--baseline-rev f3edfc3 |
        --baseline DIR] [--samples 512] [--seed 20261203] [--sheet docs/albedogan_samples.png] [--readme]

For each generator, ``--samples`` maps at truncation 1 through the bundle's ONNX mapping + albedo graphs are
resampled to 256² the way the service resamples them (``facecore.formats.resample_texture``: what a client gets
at texture_size 256) and compared with ``--samples`` procedural ground-truth albedos of a stream seed no training
run drew from (``SyntheticAlbedos(256, --seed)``; the recipes train on seeds 0 and 1):

* KID (``training.evaluation``, the project's download-free albedo features, ± its spread over 50 subsets of half
  the set) at two feature resolutions: 256² (sees brows, lashes, the lip line, irises: what 64² maps lack) and 64²
  (the training logs' units);
* registration: the worst offset of the mean map's pupils / nostrils / lips from the layout's landmark texels, in %
  of the map width (``benchmarks/albedo_registration.py``; target ≤ 2 %).

The baseline is the embedded bundle of a git revision (``--baseline-rev``, extracted with ``git archive``) or a
bundle folder. ``--sheet`` writes 16 maps of ``--bundle`` (4 × 4, seeds 0-15 of /generate's latent stream);
``--readme`` writes the table into the block ``albedo-compare`` of the README and of the bundle's model card.
Inception-based FID/KID are not computed (no downloads here) and not claimed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from albedo_registration import SIZE, feature_offsets, mean_at_size, truth_maps
from baseline import baseline_from_git
from PIL import Image
from readme import table, write_block

from facecore.bundle import Bundle, load_bundle
from facecore.formats import resample_texture
from service.engine.sessions import generated_albedos, open_sessions
from service.pipeline import generator_image, latent_from_seed
from service.settings import EMBEDDED_BUNDLE
from training.evaluation import AlbedoFeatures, ReferenceSet

BASELINE_REV = "f3edfc3"  # bundle 1.1.0: bundle 1.0's 64² generator trained on extracted maps


def served_maps(bundle: Bundle, latents: np.ndarray) -> np.ndarray:
    """(N, 256, 256, 3) sRGB maps in [0, 1]: the generator at truncation 1, resampled as the service does."""
    out = []
    for maps in generated_albedos(open_sessions(bundle, ["CPUExecutionProvider"], 0), latents):
        for img in maps:
            hw3 = generator_image(img)
            out.append(np.clip(resample_texture(hw3, SIZE), 0.0, 1.0) if hw3.shape[0] != SIZE else hw3)
    return np.stack(out)


def kid(maps: np.ndarray, truth: np.ndarray, resolution: int) -> tuple[float, float]:
    extractor = AlbedoFeatures(resolution=resolution)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32).permute(0, 3, 1, 2)  # noqa: E731
    feats = extractor.extract(as_t(maps))
    ref = ReferenceSet.from_images(extractor, as_t(truth))
    k = ref.kid_features(feats, 50, max(2, min(len(maps), len(truth)) // 2))
    return float(k.mean), float(k.std)


def measure(bundle: Bundle, latents: np.ndarray, truth: np.ndarray) -> dict:
    maps = served_maps(bundle, latents)
    offsets = feature_offsets(mean_at_size(maps), bundle.face_model)
    worst = max(float(np.hypot(*d)) for d in offsets.values())
    k256, k256_std = kid(maps, truth, 256)
    k64, k64_std = kid(maps, truth, 64)
    return {
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
        "native": bundle.manifest.resolutions.albedo,
        "kid256": k256, "kid256_std": k256_std, "kid64": k64, "kid64_std": k64_std,
        "registration_pct": 100.0 * worst / SIZE,
        "maps": maps,
    }  # fmt: skip


def sheet(bundle: Bundle, path: Path) -> None:
    latents = np.stack([latent_from_seed(s, bundle.manifest.codes.z_dim) for s in range(16)])
    maps = (served_maps(bundle, latents) * 255 + 0.5).astype(np.uint8)
    rows = [np.concatenate(list(maps[r * 4 : r * 4 + 4]), 1) for r in range(4)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    print(f"wrote {path} (/generate seeds 0-15 of {bundle.manifest.name} {bundle.manifest.version}, 256²)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision whose embedded bundle is the baseline")
    ap.add_argument("--baseline", type=Path, default=None, help="a baseline bundle folder (instead of --baseline-rev)")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--sheet", type=Path, default=None)
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = args.baseline or baseline_from_git(args.baseline_rev, Path(tmp))
        bundles = {"baseline": load_bundle(base_dir), "this": load_bundle(args.bundle)}
        truth = truth_maps(args.samples, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        results = {}
        for key, bundle in bundles.items():
            latents = rng.standard_normal((args.samples, bundle.manifest.codes.z_dim)).astype(np.float32)
            results[key] = measure(bundle, latents, truth)
    control = {"kid256": kid(truth[: args.samples // 2], truth[args.samples // 2 :], 256),
               "kid64": kid(truth[: args.samples // 2], truth[args.samples // 2 :], 64)}  # fmt: skip
    rows = []
    for r in results.values():
        rows.append((r["bundle"], f"{r['native']}²", f"{r['kid256']:.2f} ± {r['kid256_std']:.2f}",
                     f"{r['kid64']:.2f} ± {r['kid64_std']:.2f}", f"{r['registration_pct']:.1f} %"))  # fmt: skip
    (c256, s256), (c64, s64) = control["kid256"], control["kid64"]
    control_row = ("truth vs truth (control: half vs half)", "—", f"{c256:.2f} ± {s256:.2f}", f"{c64:.2f} ± {s64:.2f}")
    rows.append((*control_row, "—"))
    ratio = results["baseline"]["kid256"] / max(results["this"]["kid256"], 1e-9)
    text = (
        f"AlbedoGAN vs {args.samples} held-out procedural truth maps (seed {args.seed}), maps served at 256²; "
        f"`python benchmarks/albedo_compare.py --samples {args.samples}` (baseline: the embedded bundle of "
        f"{args.baseline or args.baseline_rev}):\n\n"
        + table(
            ("generator", "native", "KID, 256² features", "KID, 64² features", "registration (worst, % width)"), rows
        )  # fmt: skip
        + f"\n\nKID (256² features) baseline / this: **{ratio:.1f}×** (target ≥ 5×; registration target ≤ 2 %)."
    )
    print(text)
    if args.readme:
        write_block("albedo-compare", text)
        card = Path(args.bundle) / "MODEL_CARD.md"
        if card.is_file() and "<!-- albedo-compare:begin -->" in card.read_text():
            write_block("albedo-compare", text, card)
        print("wrote the block albedo-compare (README, and the model card where it has one)")
    if args.sheet:
        sheet(bundles["this"], args.sheet)


if __name__ == "__main__":
    main()
