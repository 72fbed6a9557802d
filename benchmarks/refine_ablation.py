"""The serve-time landmark refinement's terms, ablated on held-out synthetic renders (paired).

    python benchmarks/refine_ablation.py [--bundle service/bundled/default] [--count 60] [--seed 556]

Each render of the synthetic source (stream ``--seed``: no training stage and no other metric draws from it) goes
as a PNG upload through ``service.pipeline.reconstruct`` on the bundle's ONNX graphs; what the refinement is given
there (the encoder's and identity head's codes, the localiser's 68 points in the encoder's crop) is recorded, and
the refinement (:func:`facecore.refine.refine`) is run again on it under each configuration below, so every
configuration sees the same inputs. Scored against the render's true landmarks, mapped into the same crop:

* 68-landmark error (visible points) and the visible eye points' error, in eye-corner distances;
* eye opening (:func:`facecore.refine.eye_apertures`: the lids' distance / the eye's width): the head's minus the
  truth's, mean (a bias: eyes fitted narrowed or widened) and mean absolute, over the eyes whose corners show;
* lip gap (:func:`facecore.mouth.landmarks_lip_gap` of the posed 3-D landmarks, mm) against the truth's codes:
  RMSE for closed (< 3 mm) and open mouths.

The localiser's own eye-opening error is printed first: it is what ``RefineConfig.eye_aperture_sigma`` stands for.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from bundle_metrics import BundleRunner, render_upload

from facecore import detect, refine
from facecore import geometry as geo
from facecore.bundle import load_bundle
from facecore.mouth import landmarks_lip_gap
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

CLOSED_MM = 3.0


def configurations() -> dict[str, refine.RefineConfig]:
    shipped = refine.RefineConfig()
    return {
        "shipped": shipped,
        "no eye-opening term": dataclasses.replace(shipped, eye_aperture_sigma=0.0),
        "no closed-lips prior": dataclasses.replace(shipped, closed_lips_weight=0.0),
        "eye-opening σ ×0.5": dataclasses.replace(shipped, eye_aperture_sigma=shipped.eye_aperture_sigma / 2),
    }


def record(bundle_dir: Path, count: int, seed: int) -> tuple[list[dict], geo.FaceModelArrays, int]:
    """The refinement's inputs on each render the service reconstructs, with the render's truth in the same crop."""
    from models.face.model import FaceModel
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    bundle = load_bundle(bundle_dir)
    runner = BundleRunner(bundle, 0)
    size = bundle.manifest.resolutions.encoder_input
    face_model = FaceModel.from_file(bundle.root / bundle.manifest.face_model.file)  # the truth on the bundle's model
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64, seed=seed), face_model=face_model)
    seen: list[tuple] = []
    original = refine.refine

    def recorder(model, codes, target, size, *config):
        seen.append(({k: np.array(v, np.float64) for k, v in codes.items()}, np.array(target, np.float64)))
        return original(model, codes, target, size, *config)

    rows = []
    refine.refine = recorder  # the pipeline calls it through the module: what it is given is recorded
    try:
        for i in range(count):
            item = faces.batch([i])
            seen.clear()
            try:
                meta = runner.reconstruct(render_upload(item), "generated")
            except P.PhotoError:
                continue
            if not seen:  # no localiser landmarks: nothing was refined
                continue
            matrix = detect.anchors_matrix(np.array(meta["face"]["anchors"]), size)
            truth = item.codes
            rows.append(
                {
                    "codes": seen[0][0],
                    "target": seen[0][1],
                    "truth_px": detect.transform_points(item.landmarks_px[0].numpy(), matrix),
                    "visible": item.landmarks_visible[0].numpy().astype(bool),
                    "truth_codes": (truth.shape[0].numpy(), truth.expression[0].numpy(), truth.pose[0].numpy()),
                }
            )
    finally:
        refine.refine = original
    return rows, runner.bundle.face_model, size


def score(rows: list[dict], model: geo.FaceModelArrays, size: int, config: refine.RefineConfig) -> dict[str, float]:
    lm = refine.landmark_model(model)
    nme, eye_nme, aperture, gaps = [], [], [], []
    for r in rows:
        out, _ = refine.refine(model, r["codes"], r["target"], size, config)
        pts = lm.landmarks(out["shape"], out["expression"], out["pose"])
        head = geo.project_points(pts, out["camera"], size)
        truth, vis = r["truth_px"], r["visible"]
        iod = np.linalg.norm(truth[36] - truth[45])
        dist = np.linalg.norm(head - truth, axis=1) / iod
        nme.append(dist[vis].mean())
        eyes = [vis[a] & vis[b] for a, b, _, _ in refine.EYES]  # an eye hidden by the turned head: not scored
        eye_nme.append(dist[36:48][vis[36:48]].mean() if vis[36:48].any() else np.nan)
        aperture.extend((refine.eye_apertures(head) - refine.eye_apertures(truth))[eyes])
        true_gap = landmarks_lip_gap(lm.landmarks(*(np.asarray(c, np.float64) for c in r["truth_codes"])))
        gaps.append((float(true_gap) * 1000, float(landmarks_lip_gap(pts)) * 1000))
    aperture, gaps = np.array(aperture), np.array(gaps)
    closed = gaps[:, 0] < CLOSED_MM

    def rmse(sel: np.ndarray) -> float:
        return float(np.sqrt(((gaps[sel, 1] - gaps[sel, 0]) ** 2).mean())) if sel.any() else float("nan")

    return {
        "nme": float(np.mean(nme)),
        "eye_nme": float(np.nanmean(eye_nme)),
        "aperture_bias": float(aperture.mean()),
        "aperture_mae": float(np.abs(aperture).mean()),
        "gap_rmse_closed_mm": rmse(closed),
        "gap_rmse_open_mm": rmse(~closed),
        "closed": int(closed.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=556)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, model, size = record(args.bundle, args.count, args.seed)
    if not rows:
        raise SystemExit(f"no render of stream {args.seed} was refined (no face found, or no localiser in the bundle)")
    located = np.array([refine.eye_apertures(r["target"]) - refine.eye_apertures(r["truth_px"]) for r in rows])
    print(f"{len(rows)} of {args.count} renders refined (stream {args.seed}, {args.bundle})")
    print(
        f"localiser's eye opening vs truth: bias {located.mean():+.3f}, mean abs {np.abs(located).mean():.3f}, "
        f"RMS {np.sqrt((located**2).mean()):.3f} (of the eye's width)"
    )
    header = f"{'configuration':<24} | {'NME':>6} | {'eyes':>6} | {'opening bias':>12} | {'opening |err|':>13} | "
    print(header + f"{'lip gap RMSE closed / open (mm)':>31}")
    for name, config in configurations().items():
        s = score(rows, model, size, config)
        print(
            f"{name:<24} | {s['nme']:.4f} | {s['eye_nme']:.4f} | {s['aperture_bias']:+12.3f} | "
            f"{s['aperture_mae']:13.3f} | {s['gap_rmse_closed_mm']:6.2f} / {s['gap_rmse_open_mm']:.2f} "
            f"({s['closed']} closed)"
        )


if __name__ == "__main__":
    main()
