"""How much of /reconstruct's landmark error is the crop's framing: the service path as served, framed on dlib's
detected 5 points, and framed on the renders' true points.

    python benchmarks/alignment_noise.py [--bundle service/bundled/default] [--count 40] [--seed 777]

On ``--count`` synthetic renders of a stream no training used (224 px, ``training.data.synthetic``), the bundle's
/reconstruct pipeline (``service.pipeline.reconstruct``, onnxruntime) runs as served (with the bundle's landmark
localiser when it has one: ``facecore.localise``), with the crop cut around dlib's 5 points (the localiser left
out), and with dlib's points replaced by the renders' true iBUG points 45, 42, 36, 39, 33 (the same box, the same
everything else). Printed: the error of dlib's 5 points and of the anchors the service framed on, and the
68-landmark error of the reconstruction (mean distance over the visible landmarks / the true outer-eye-corner
distance) each way. An encoder that takes the crop's framing for granted inherits its framing's error.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from bundle_metrics import BundleRunner

from facecore import color, detect
from facecore.bundle import load_bundle
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

GOOD_POINTS = 0.1  # dlib's 5 points within this mean error (eye-corner distances): a usable detection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(EMBEDDED_BUNDLE))
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from models.face.model import FaceModel
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    bundle = load_bundle(args.bundle)
    runner = BundleRunner(bundle, args.threads)
    # the same bundle framing its crops on dlib's points (no localiser), and on the renders' true points
    plain = BundleRunner(
        dataclasses.replace(bundle, manifest=bundle.manifest.model_copy(update={"localiser": None})), 1
    )
    fm = FaceModel.from_file()
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64, seed=args.seed), face_model=fm)
    ibug5 = list(detect.DLIB5_TO_IBUG68)
    detected = detect.detect_landmarks5
    truth: dict[str, np.ndarray] = {}

    def true_points(image: np.ndarray, detector: str = "auto") -> list[detect.FaceLandmarks]:
        found = detected(image, detector=detector)
        return [detect.FaceLandmarks(f.box, truth["points"], f.score, f.detector) for f in found[:1]]

    ways = {
        "as served": (runner, detected),
        "dlib 5-point framing": (plain, detected),
        "true framing": (plain, true_points),
    }
    if bundle.manifest.localiser is None:
        del ways["as served"]  # the same as dlib's framing
    rows: dict[str, list[float]] = {"dlib 5 points": [], "served anchors": [], **{k: [] for k in ways}}
    skipped = 0
    try:
        for i in range(args.count):
            item = faces.batch([i])
            gt = item.landmarks_px[0].double().numpy()
            visible = item.landmarks_visible[0].numpy()
            iod = float(np.linalg.norm(gt[36] - gt[45]))
            truth["points"] = gt[ibug5]
            anchors = detect.alignment_anchors(gt)
            image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
            errors = {}
            try:
                for name, (way, finder) in ways.items():
                    detect.detect_landmarks5 = finder
                    meta = way.reconstruct(image)
                    pred = np.array(meta["face"]["landmarks68"])
                    errors[name] = float((np.linalg.norm(pred - gt, axis=1) / iod)[visible].mean())
                    if finder is detected and "dlib 5 points" not in errors:
                        points = np.array(meta["face"]["points5"])
                        errors["dlib 5 points"] = float((np.linalg.norm(points - gt[ibug5], axis=1) / iod).mean())
                    if way is runner and finder is detected:
                        served = np.array(meta["face"]["anchors"])
                        errors["served anchors"] = float((np.linalg.norm(served - anchors, axis=1) / iod).mean())
            except P.PhotoError:
                skipped += 1
                continue
            finally:
                detect.detect_landmarks5 = detected
            for name, value in errors.items():
                rows[name].append(value)
    finally:
        detect.detect_landmarks5 = detected
    n = len(rows["dlib 5 points"])
    print(f"{n} of {args.count} renders (seed {args.seed}; {skipped} without a face found), bundle {args.bundle}")
    print("error / true outer-eye-corner distance: mean, median")
    points = np.array(rows["dlib 5 points"])
    dlib_framed, true_framed = np.array(rows["dlib 5-point framing"]), np.array(rows["true framing"])
    good = points < GOOD_POINTS
    if good.any() and (~good).any():
        gap = dlib_framed - true_framed
        print(
            f"renders whose dlib points are within {GOOD_POINTS} ({good.sum()}): dlib-framed − true-framed "
            f"{gap[good].mean():+.3f}; the others ({(~good).sum()}): {gap[~good].mean():+.3f}"
        )
    what = {
        "dlib 5 points": "dlib's points vs the true ones",
        "served anchors": "the anchors the service framed on (eye centres, nose) vs the true ones",
    }
    for name, values in rows.items():
        if values:
            print(f"  {name:>20}: {np.mean(values):.3f}  {np.median(values):.3f}   "
                  f"({what.get(name, '68 landmarks of the reconstruction')})")  # fmt: skip


if __name__ == "__main__":
    main()
