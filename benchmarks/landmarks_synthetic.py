"""Detector accuracy on synthetic renders with known landmarks (held-out seed; never used for training).

    python benchmarks/landmarks_synthetic.py [--count 48] [--seed 777]

Prints the normalised mean error (NME, mean distance over the visible ground-truth points / outer-eye-corner
distance, the 300-W convention) of ``models.landmarks.landmarks68`` per yaw bucket, and the detection rate.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from models.face.model import FaceModel
from models.landmarks import NoFaceError, landmarks68
from training.data.synthetic import SyntheticConfig, SyntheticFaces, head_angles_deg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = SyntheticFaces(SyntheticConfig(image_size=256, seed=args.seed), FaceModel.from_file())
    rows = []
    for start in range(0, args.count, 8):
        batch = ds.batch(list(range(start, min(start + 8, args.count))))
        yaw = head_angles_deg(batch.codes.pose)[:, 0].abs()
        for i in range(len(batch.index)):
            img = (batch.image_srgb[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            gt = batch.landmarks_px[i].numpy()
            vis = batch.landmarks_visible[i].numpy().astype(bool)
            y = float(yaw[i])
            try:
                pred = landmarks68(img)
            except NoFaceError:
                rows.append((y, None))
                continue
            iod = np.linalg.norm(gt[45] - gt[36])
            rows.append((y, float(np.linalg.norm(pred[vis] - gt[vis], axis=1).mean() / iod)))
    print(f"{len(rows)} synthetic faces (seed {args.seed}), dlib 68-point detector")
    print(f"  {'|yaw|':>10} | {'n':>3} | {'detected':>8} | {'NME mean':>8} | {'NME median':>10}")
    for lo, hi in ((0, 15), (15, 30), (30, 45), (45, 61)):
        sel = [r for r in rows if lo <= r[0] < hi]
        errs = [e for _, e in sel if e is not None]
        if sel:
            mean = f"{np.mean(errs):.3f}" if errs else "-"
            med = f"{np.median(errs):.3f}" if errs else "-"
            print(f"  {lo:>4}–{hi:<4}° | {len(sel):>3} | {len(errs) / len(sel):>8.0%} | {mean:>8} | {med:>10}")
    errs = [e for _, e in rows if e is not None]
    rate = len(errs) / len(rows)
    print(f"  all        | {len(rows):>3} | {rate:>8.0%} | {np.mean(errs):>8.3f} | {np.median(errs):>10.3f}")


if __name__ == "__main__":
    main()
