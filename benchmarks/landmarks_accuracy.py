"""Face detection + landmarks on the fixture photos: per-photo results, self-consistency and speed.

python benchmarks/landmarks_accuracy.py [--photos ../shared/fixtures/photos] [--repeat 3] [--sheet out.png]

Prints, per photo: faces found, detector used, score, box, inter-ocular distance, the 68-point error after a
horizontal flip and after ±15° rotations (mean error / inter-ocular distance, vs the points of the original
mapped through the same transform: a self-consistency check, not ground truth), and how far the 5-point
anchors are from the 68-point ones. Then the time per photo of each backend (best of --repeat, averaged over
the photos). Ground-truth error on synthetic renders: ``models.landmarks.landmarks68(image)`` +
``models.landmarks.normalised_mean_error(pred, gt)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from timing import best_seconds

from facecore import detect
from models import landmarks as lm

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def rotate(image: np.ndarray, points: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` rotated counter-clockwise about its centre (PIL), and ``points`` moved with it."""
    h, w = image.shape[:2]
    out = Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    t = np.deg2rad(degrees)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return np.asarray(out), (points - c) @ rot.T + c


def first_points(image: np.ndarray) -> np.ndarray | None:
    faces = lm.detect_landmarks(image)
    return faces[0].points if faces else None


def consistency(image: np.ndarray, points: np.ndarray) -> dict[str, float]:
    out = {}
    flipped = first_points(np.ascontiguousarray(image[:, ::-1]))
    out["flip"] = (
        float(lm.normalised_mean_error(lm.flip_landmarks68(flipped, image.shape[1]), points))
        if flipped is not None
        else float("nan")
    )
    for deg in (15.0, -15.0):
        rotated, expected = rotate(image, points, deg)
        got = first_points(rotated)
        out[f"rot{deg:+.0f}"] = float(lm.normalised_mean_error(got, expected)) if got is not None else float("nan")
    return out


def best_ms(fn, repeat: int) -> float:
    return 1000 * best_seconds(fn, repeat)


def draw(image: np.ndarray, face: lm.FaceLandmarks, label: str) -> Image.Image:
    pil = Image.fromarray(image)
    d = ImageDraw.Draw(pil)
    d.rectangle(face.box.tolist(), outline=(0, 255, 0), width=2)
    for i, (x, y) in enumerate(face.points):
        colour = (255, 60, 60) if 36 <= i <= 41 else (60, 60, 255) if 42 <= i <= 47 else (255, 255, 0)
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    d.text((6, 6), label, fill=(0, 255, 0))
    return pil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sheet", type=Path, help="write a contact sheet (PNG) of the 68-point results")
    args = parser.parse_args()
    paths = sorted(args.photos.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    images = {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in paths}
    lm.detect_landmarks(next(iter(images.values())))  # load the models outside the timings
    detect.detect_landmarks5(next(iter(images.values())))
    detect.get_detector("cnn")

    print("photo                   faces det  score  box                      IOD   flip  rot+15 rot-15  5pt-anchors")
    tiles = []
    for name, image in images.items():
        faces = lm.detect_landmarks(image)
        if not faces:
            print(f"{name:24s} 0")
            continue
        f = faces[0]
        c = consistency(image, f.points)
        five = detect.detect_landmarks5(image)
        anchor_err = np.linalg.norm(
            detect.alignment_anchors(five[0].points) - detect.alignment_anchors(f.points), axis=1
        ).max() / lm.inter_ocular_distance(f.points)
        box = ",".join(f"{v:.0f}" for v in f.box)
        print(
            f"{name:24s} {len(faces):5d} {f.detector:4s} {f.score:5.2f}  {box:24s} "
            f"{lm.inter_ocular_distance(f.points):5.1f} {c['flip']:6.3f} {c['rot+15']:6.3f} {c['rot-15']:6.3f}  "
            f"{anchor_err:6.3f}"
        )
        tiles.append(draw(image, f, f"{name} {f.detector} {f.score:.2f}"))

    print(f"\nms per photo (best of {args.repeat}, mean over {len(images)} photos of {paths[0].name}'s size):")
    runs = {
        "hog + 68 points": lambda im: lm.detect_landmarks(im, detector="hog"),
        "cnn + 68 points": lambda im: lm.detect_landmarks(im, detector="cnn"),
        "auto + 68 points": lambda im: lm.detect_landmarks(im, detector="auto"),
        "hog + 5 points": lambda im: detect.detect_landmarks5(im, detector="hog"),
        "auto + 5 points": lambda im: detect.detect_landmarks5(im, detector="auto"),
    }
    for label, fn in runs.items():
        per = [best_ms(lambda im=im, fn=fn: fn(im), args.repeat) for im in images.values()]
        print(f"  {label:18s} {np.mean(per):8.1f}  (min {min(per):.1f}, max {max(per):.1f})")
    for label, fn in {"hog": "hog", "cnn": "cnn"}.items():
        backend = detect.get_detector(fn)
        per = [best_ms(lambda im=im, b=backend: b.detect(im), args.repeat) for im in images.values()]
        print(f"  {'detector ' + label:18s} {np.mean(per):8.1f}")
    image = next(iter(images.values()))
    face = lm.detect_landmarks(image)[0]
    box = face.box
    p68 = detect.get_predictor(lm.PREDICTOR68_FILE)
    p5 = detect.get_predictor(detect.PREDICTOR5_FILE)
    print(f"  {'68-point predictor':18s} {best_ms(lambda: p68.predict(image, box), 20):8.2f}")
    print(f"  {'5-point predictor':18s} {best_ms(lambda: p5.predict(image, box), 20):8.2f}")
    print(f"  {'align_face 224':18s} {best_ms(lambda: lm.align_face(image, face), 20):8.2f}")

    if args.sheet and tiles:
        w, h = tiles[0].size
        cols = 3
        sheet = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h))
        for i, t in enumerate(tiles):
            sheet.paste(t.resize((w, h)), ((i % cols) * w, (i // cols) * h))
        sheet.save(args.sheet)
        print(f"\ncontact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
