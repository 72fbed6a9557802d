"""Two bundles' landmark localisers compared, paired, through the /reconstruct pipeline.

    python -m training.localiser --keep-from OLD --bundle NEW --out NEW_OLDLOC --why "..."
    python benchmarks/localiser_compare.py NEW --against NEW_OLDLOC [--seed 20261210] [--count 150] [--pitch-max 20]
        [--photos DIR]

Compare a retrained bundle with itself carrying its predecessor's localiser, so that only the localiser differs
(two whole bundles also differ in the encoder the landmarks are refined with).

Each held-out synthetic render (``training.data.synthetic``, a stream no localiser and no other metric uses) goes
as a PNG upload through both bundles (onnxruntime, dlib detection, the localiser's passes, the encoder, the
refinement); the result's 68 landmarks are scored against the render's true projected points (visible ones, in
eye-corner distances). Both bundles see the same renders, so the per-render difference NEW − OLD measures the
change with a standard error that the renders' spread does not swamp. NEW is called better only when the mean
difference is below zero by more than two standard errors: a retrained bundle keeps its predecessor's localiser
otherwise (``python -m training.localiser --keep-from OLD``). The fixture photos are listed too, against dlib's
68-point model, which is itself wrong on strongly turned or pitched heads (look at them before reading those).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bundle_metrics import PHOTOS, BundleRunner, render_upload

from facecore.bundle import load_bundle
from service import pipeline as P


def nme(pred: np.ndarray, truth: np.ndarray, visible: np.ndarray | None = None) -> float:
    """Mean point error (visible points) over the eye-corner distance (iBUG 36–45)."""
    err = np.linalg.norm(np.asarray(pred) - truth, axis=1)
    err = err if visible is None or not np.any(visible) else err[visible]  # none visible: all of them
    return float(err.mean() / np.linalg.norm(truth[36] - truth[45]))


def paired(runners: list[BundleRunner], seed: int, count: int, pitch_max_deg: float = 20.0) -> np.ndarray:
    """(N, 2) NME per render that both bundles reconstructed (head pitch within ±``pitch_max_deg``)."""
    from training.data.synthetic import PoseRanges, SyntheticConfig, SyntheticFaces

    pose = PoseRanges(pitch_max_deg=pitch_max_deg)
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=256, seed=seed, pose=pose))
    rows = []
    for i in range(count):
        item = faces.batch([i])
        photo = render_upload(item)
        truth, vis = item.landmarks_px[0].numpy(), item.landmarks_visible[0].numpy()
        try:
            rows.append([nme(r.reconstruct(photo)["face"]["landmarks68"], truth, vis) for r in runners])
        except P.PhotoError:
            continue  # no face found by dlib: the same detector in both bundles
    return np.array(rows).reshape(-1, len(runners))


def verdict(errors: np.ndarray) -> tuple[float, float, bool]:
    """Mean paired difference column 0 − column 1, its standard error, and whether column 0 is better."""
    d = errors[:, 0] - errors[:, 1]
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return float(d.mean()), se, bool(d.mean() + 2.0 * se < 0.0)


def main() -> None:
    from models.landmarks import landmarks68

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("new", type=Path)
    ap.add_argument("--against", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=20261210)
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--pitch-max", type=float, default=20.0, help="the renders' head pitch limit (degrees)")
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    bundles = [load_bundle(b) for b in (args.new, args.against)]
    if any(b.manifest.localiser is None for b in bundles):
        raise SystemExit("both bundles need a localiser (a landmarks graph)")
    paths = (args.new, args.against)
    names = [f"{b.manifest.name} {b.manifest.version} ({p})" for b, p in zip(bundles, paths, strict=True)]
    runners = [BundleRunner(b, args.threads) for b in bundles]
    errors = paired(runners, args.seed, args.count, args.pitch_max)
    if len(errors) < 2:
        raise SystemExit(f"only {len(errors)} of {args.count} renders had a face: nothing to compare")
    print(f"68-landmark error / eye distance, {len(errors)} of {args.count} renders of stream {args.seed} "
          f"(pitch within ±{args.pitch_max:g}°):")  # fmt: skip
    for name, col in zip(names, errors.T, strict=True):
        print(f"  {name:<60} mean {col.mean():.4f}  median {np.median(col):.4f}  p90 {np.percentile(col, 90):.4f}")
    d, se, better = verdict(errors)
    print(f"  new − old, paired: {d:+.4f} ± {se:.4f} (standard error); new is {'' if better else 'not '}better")
    if args.photos.is_dir():
        print("fixture photos, against dlib's 68 points (wrong itself on strongly turned heads):")
        for path in sorted(args.photos.glob("*.jpg")):
            try:
                image = P.decode_photo(path.read_bytes(), 50_000_000)
                detected = landmarks68(image)
                cells = [nme(r.reconstruct(image)["face"]["landmarks68"], detected) for r in runners]
            except (P.PhotoError, ValueError) as exc:  # no face (either detector), not a photo
                print(f"  {path.name:<26} skipped: {exc}")
                continue
            print(f"  {path.name:<26} new {cells[0]:.3f}  old {cells[1]:.3f}")


if __name__ == "__main__":
    main()
