"""dlib's CNN detector and recogniser: dlib's own runtime vs the ONNX graphs of ``facecore.dlib_onnx``.

    python benchmarks/dlib_onnx.py [--photos tests/fixtures/photos] [--repeat 3]

Per fixture photo, in one run: the MMOD detector on a copy whose longer side is 256 px and on the photo itself
(wall ms, dlib vs onnxruntime, and whether every box and score agree), and the recogniser on the photo's chip
and its mirror image (wall ms and the largest descriptor difference). Medians of ``--repeat`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facecore import detect
from facecore import dlib_onnx as D
from facecore.identity import RECOGNISER_FILE, get_recogniser

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - t))
    return out, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dlib = detect._import_dlib()
    dlib_cnn = dlib.cnn_face_detection_model_v1(str(detect.model_path(detect.CNN_DETECTOR_FILE)))
    dlib_rec = dlib.face_recognition_model_v1(str(detect.model_path(RECOGNISER_FILE)))
    mmod = D.get_mmod(detect.model_path(detect.CNN_DETECTOR_FILE))
    rec = get_recogniser()
    rows, ratios, agree, worst = [], [], True, 0.0
    for path in sorted(args.photos.glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        row = [path.stem]
        for side in (256, max(image.shape[:2])):
            small, _, _ = detect._downscaled(image, side)
            theirs, t_dlib = timed(lambda s=small: dlib_cnn(s, 0), args.repeat)
            ours, t_onnx = timed(lambda s=small: mmod(s), args.repeat)
            boxes = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()] for d in theirs]
            same = len(ours) == len(theirs) and all(
                b.tolist() == t and abs(s - d.confidence) < 1e-3
                for (b, s), t, d in zip(ours, boxes, theirs, strict=True)
            )
            agree &= same
            ratios.append(t_dlib / t_onnx)
            row.append(f"CNN@{side}: {t_dlib:5.0f} → {t_onnx:4.0f} ms {'same' if same else 'DIFFERENT'}")
        face = detect.largest_face(detect.detect_landmarks5(image), image.shape)
        chip = rec.chip(image, face.points)
        chips = np.stack([chip, chip[:, ::-1]])
        want, t_dlib = timed(lambda c=chips: dlib_rec.compute_face_descriptor(list(c)), args.repeat)
        got, t_onnx = timed(lambda c=chips: rec.describe_chips(c), args.repeat)
        diff = float(np.abs(got - np.array([np.asarray(d) for d in want])).max())
        worst = max(worst, diff)
        ratios.append(t_dlib / t_onnx)
        row.append(f"recogniser ×2: {t_dlib:4.0f} → {t_onnx:3.1f} ms, max diff {diff:.1e}")
        rows.append(" | ".join(row))
    print("dlib's runtime → onnxruntime (facecore.dlib_onnx), wall ms, median of", args.repeat)
    print("\n".join(rows))
    print(f"every box and score the same: {agree}; largest descriptor difference {worst:.1e}")
    print(f"speed-up (dlib / onnx): {min(ratios):.0f}–{max(ratios):.0f}×")


if __name__ == "__main__":
    main()
