"""How much of /reconstruct's landmark error is the 5-point alignment's: the service path with dlib's detected
points vs the same path aligned on the renders' true points.

    python benchmarks/alignment_noise.py [--bundle service/bundled/default] [--count 40] [--seed 777]

On ``--count`` synthetic renders of a stream no training used (224 px, ``training.data.synthetic``), the bundle's
/reconstruct pipeline runs twice (``service.pipeline.reconstruct``, onnxruntime): once as served (dlib's 5-point
model finds the eye corners and the nose bottom, the crop is aligned on them), once with the detector's points
replaced by the renders' true iBUG points 45, 42, 36, 39, 33 (the same box, the same everything else). Printed:
the error of dlib's 5 points themselves, and the 68-landmark error of the reconstruction (mean distance over the
visible landmarks / the true outer-eye-corner distance) both ways. An encoder that localises the face in its crop
gives the same error both ways; one that takes the crop's framing for granted inherits the detector's error.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bundle_metrics import BundleRunner

from facecore import detect
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
    fm = FaceModel.from_file()
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64, seed=args.seed), face_model=fm)
    ibug5 = list(detect.DLIB5_TO_IBUG68)
    detected = detect.detect_landmarks5
    truth: dict[str, np.ndarray] = {}

    def true_points(image: np.ndarray, detector: str = "auto") -> list[detect.FaceLandmarks]:
        found = detected(image, detector=detector)
        return [detect.FaceLandmarks(f.box, truth["points"], f.score, f.detector) for f in found[:1]]

    rows: dict[str, list[float]] = {"dlib 5 points": [], "as served": [], "true 5 points": []}
    skipped = 0
    try:
        for i in range(args.count):
            item = faces.batch([i])
            gt = item.landmarks_px[0].double().numpy()
            visible = item.landmarks_visible[0].numpy()
            iod = float(np.linalg.norm(gt[36] - gt[45]))
            truth["points"] = gt[ibug5]
            image = (item.image_srgb[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            errors = {}
            try:
                for name, finder in (("as served", detected), ("true 5 points", true_points)):
                    detect.detect_landmarks5 = finder
                    meta = runner.reconstruct(image)
                    pred = np.array(meta["face"]["landmarks68"])
                    errors[name] = float((np.linalg.norm(pred - gt, axis=1) / iod)[visible].mean())
                    if name == "as served":
                        points = np.array(meta["face"]["points5"])
                        errors["dlib 5 points"] = float((np.linalg.norm(points - gt[ibug5], axis=1) / iod).mean())
            except P.PhotoError:
                skipped += 1
                continue
            for name, value in errors.items():
                rows[name].append(value)
    finally:
        detect.detect_landmarks5 = detected
    n = len(rows["as served"])
    print(f"{n} of {args.count} renders (seed {args.seed}; {skipped} without a face found), bundle {args.bundle}")
    print("error / true outer-eye-corner distance: mean, median")
    points, served, aligned = (np.array(rows[k]) for k in rows)
    good = points < GOOD_POINTS
    print(
        f"renders whose dlib points are within {GOOD_POINTS} ({good.sum()}): served − true-aligned "
        f"{(served - aligned)[good].mean():+.3f}; the others ({(~good).sum()}): {(served - aligned)[~good].mean():+.3f}"
        if good.any() and (~good).any()
        else ""
    )
    for name, values in rows.items():
        what = "dlib's points vs the true ones" if name == "dlib 5 points" else "68 landmarks of the reconstruction"
        print(f"  {name:>14}: {np.mean(values):.3f}  {np.median(values):.3f}   ({what})")


if __name__ == "__main__":
    main()
