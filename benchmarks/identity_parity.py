"""dlib face recognition ResNet in PyTorch (models.identity.FaceEmbedder) vs dlib itself: parity and speed.

python benchmarks/identity_parity.py [--photos ../shared/fixtures/photos] [--repeat 10] [--threads N]

Per fixture photo: the face found (facecore.detect 5-point landmarks), then dlib's chip
(``dlib.get_face_chip(img, shape, 150, 0.25)``) fed to both dlib (``compute_face_descriptor(chip)``) and our
module: the cosine between the two descriptors, the max abs difference of the raw descriptors and their
norms, and how far our numpy chip (``extract_dlib_chip``) is from dlib's (max abs grey-level difference).
Then the similarity matrix between the photos (different people) and to their mirrored / 0.7× rescaled
versions (same person). Finally the time per image (best of --repeat) at batch 1 and 16 for dlib (one chip at
a time, a list of 16 chips) and for our module (torch CPU, no grad; with 1 thread and with torch's default
thread count: on an oversubscribed CPU several torch threads can be far slower than one), plus the .dat parse
time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import best_seconds

from facecore import detect
from models.identity import DLIB_FILE, FaceEmbedder, extract_dlib_chip

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def best_s(fn, repeat: int) -> float:
    return best_seconds(fn, repeat, warmup=True)


def to_tensor(chips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(chips))).permute(0, 3, 1, 2).float() / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import dlib
    except ImportError:
        raise SystemExit("needs dlib: pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0") from None
    files = sorted(args.photos.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no photos in {args.photos} (the shared fixtures)")

    t = time.perf_counter()
    model = FaceEmbedder.from_dlib_dat()
    print(
        f"parse + load {DLIB_FILE}: {(time.perf_counter() - t) * 1000:.0f} ms; torch threads {torch.get_num_threads()}"
    )
    rec = dlib.face_recognition_model_v1(str(detect.model_path(DLIB_FILE)))
    predictor = dlib.shape_predictor(str(detect.model_path(detect.PREDICTOR5_FILE)))

    chips, mirrored, smaller, names = [], [], [], []
    print(f"\n{'photo':<24} {'detector':>8} {'cos vs dlib':>12} {'1 - cos':>9} {'max|Δ|':>9} {'|d| dlib':>9} "
          f"{'|d| ours':>9} {'chip Δ':>6}")  # fmt: skip
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = detect.detect_landmarks5(image)
        if not faces:
            print(f"{path.name:<24} no face")
            continue
        shape = predictor(image, dlib.rectangle(*(int(round(v)) for v in faces[0].box)))
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        chip = dlib.get_face_chip(image, shape, size=150, padding=0.25)
        theirs = np.array(rec.compute_face_descriptor(chip))
        with torch.no_grad():
            ours = model.descriptor(to_tensor([chip]))[0].numpy().astype(np.float64)
        cos = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
        chip_diff = int(np.abs(extract_dlib_chip(image, points).astype(int) - chip).max())
        print(
            f"{path.name:<24} {faces[0].detector:>8} {cos:>12.8f} {1 - cos:>9.1e} {np.abs(ours - theirs).max():>9.1e} "
            f"{np.linalg.norm(theirs):>9.4f} {np.linalg.norm(ours):>9.4f} {chip_diff:>6d}"
        )
        names.append(path.stem.rsplit("-", 1)[-1])
        chips.append(chip)
        mirrored.append(chip[:, ::-1])
        small = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * 0.7), round(image.shape[0] * 0.7))))
        smaller.append(extract_dlib_chip(small, (points + 0.5) * 0.7 - 0.5))

    with torch.no_grad():
        e, em, es = (model(to_tensor(c)) for c in (chips, mirrored, smaller))
    sim = (e @ e.T).numpy()
    print("\ncosine similarity between the photos (different people):")
    print("      " + " ".join(f"{n:>6}" for n in names))
    for n, row in zip(names, sim, strict=True):
        print(f"{n:>6}" + " ".join(f"{v:6.3f}" for v in row))
    off = sim[~np.eye(len(names), dtype=bool)]
    same_m, same_s = (e * em).sum(1).double().numpy(), (e * es).sum(1).double().numpy()
    print(f"same person: mirrored {np.round(same_m, 4).tolist()}, 0.7× rescaled {np.round(same_s, 4).tolist()}")
    print(f"min same-person {min(same_m.min(), same_s.min()):.4f} vs max different-people {off.max():.4f}")

    batch = [chips[i % len(chips)] for i in range(16)]
    print(f"\ntime per image (best of {args.repeat}); dlib is single-threaded:")
    for b in (1, 16):
        fn = (lambda: rec.compute_face_descriptor(batch[0])) if b == 1 else (lambda: rec.compute_face_descriptor(batch))
        print(f"  dlib  batch {b:>2}: {best_s(fn, args.repeat) / b * 1000:7.1f} ms/img")
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for b in (1, 16):
            x = to_tensor(batch[:b])
            with torch.no_grad():
                ours_s = best_s(lambda x=x: model(x), args.repeat)
            print(f"  ours  batch {b:>2}, {threads} torch thread(s): {ours_s / b * 1000:7.1f} ms/img")
        x = to_tensor(batch[:1]).requires_grad_(True)
        grad_s = best_s(lambda x=x: model(x).sum().backward(), args.repeat)
        print(f"  ours  forward + backward to the pixels, batch 1, {threads} thread(s): {grad_s * 1000:.1f} ms")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
