"""Face detection recall and speed: HOG, the CNN, and the ``"auto"`` cascade, on photos and turned synthetic heads.

    python benchmarks/face_detection.py [--photos tests/fixtures/photos] [--identities 5] [--size 500]

Items: every fixture photo and its mirror image, and synthetic heads (``training.data.synthetic``, seed 4242,
unseen by any training) rendered at |yaw| 0, 30, 45, 55, 65, 75, 85° with pitch −25…15°, the face spanning
30–50 % of a ``--size`` px image like the fixtures' faces. Detectors: ``hog``, ``cnn`` (dlib's CNN on the
whole image), ``hog→cnn`` (the former ``"auto"``: the CNN whenever HOG finds nothing) and ``auto``
(:data:`facecore.detect.CNN_COARSE_SIDES`: the CNN coarse to fine). Per detector: faces found, CPU time per
image (wall time: the CNN runs in onnxruntime's threads), and on the synthetic heads the 5-point
error (mean distance to the renders' own landmarks / their outer-eye-corner distance). The last lines say
whether ``auto`` found every face the CNN alone finds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facecore import detect

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
YAWS = (0, 30, 45, 55, 65, 75, 85)
PITCHES = (-15, 0, 15, 0, -25)


def synthetic_heads(identities: int, size: int) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(name, image, (68, 2) landmarks, yaw) for each identity at each of :data:`YAWS`, turned left and right
    alternately, with the identity's pitch."""
    import torch

    from models.face.model import FaceModel
    from training.data.synthetic import SyntheticConfig, SyntheticFaces, euler_to_axis_angle

    torch.set_num_threads(1)
    ds = SyntheticFaces(SyntheticConfig(image_size=size, seed=4242, face_fill=(0.3, 0.5)), FaceModel.from_file())
    out = []
    for ident in range(identities):
        pitch = PITCHES[ident % len(PITCHES)]
        for yaw in YAWS:
            yaw = yaw if ident % 2 == 0 else -yaw
            albedo, scene = ds.sample_params([ident])
            pose = scene.codes.pose.clone()
            angles = (torch.tensor(math.radians(a), dtype=torch.float64) for a in (yaw, pitch, 0.0))
            pose[0, 0] = euler_to_axis_angle(*angles).to(pose.dtype)
            scene = dataclasses.replace(scene, codes=dataclasses.replace(scene.codes, pose=pose))
            b = ds.render(torch.tensor([ident]), albedo.to(ds.device), scene.to(ds.device))
            image = (b.image_srgb[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append((f"head {ident} yaw {yaw:+d} pitch {pitch:+d}", image, b.landmarks_px[0].numpy(), yaw))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--identities", type=int, default=5)
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args()
    hog, cnn = detect.get_detector("hog"), detect.get_detector("cnn")
    predictor = detect.get_predictor(detect.PREDICTOR5_FILE)
    detectors = {
        "hog": hog,
        "cnn": cnn,
        "hog→cnn": detect.CascadeDetector([(hog, None), (cnn, None)]),
        "auto": detect.get_detector("auto"),
    }
    items = []
    for path in sorted(args.photos.glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        mirrored = np.ascontiguousarray(image[:, ::-1])
        items += [(path.stem, image, None, None), (path.stem + " mirrored", mirrored, None, None)]
    items += synthetic_heads(args.identities, args.size)

    rows = []
    for name, image, truth, yaw in items:
        row = {"name": name, "yaw": yaw}
        for label, det in detectors.items():
            t = time.perf_counter()
            found = det.detect(image)
            seconds = time.perf_counter() - t
            err = math.nan
            if found and truth is not None:
                box = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[0]
                points = predictor.predict(image, box)
                err = float(np.linalg.norm(points - truth[list(detect.DLIB5_TO_IBUG68)], axis=1).mean())
                err /= float(np.linalg.norm(truth[36] - truth[45]))
            row[label] = (bool(found), seconds, err)
        rows.append(row)
        print(f"{name:32s}" + "".join(f" | {k} {'+' if v[0] else '-'} {1000 * v[1]:5.0f} ms" for k, v in row.items()
                                      if isinstance(v, tuple)), flush=True)  # fmt: skip

    def summary(label: str, sel: list[dict]) -> str:
        cells = []
        for det in detectors:
            found = [r[det][0] for r in sel]
            ms = [1000 * r[det][1] for r in sel]
            errs = [r[det][2] for r in sel if r[det][0] and not math.isnan(r[det][2])]
            err = f"{np.median(errs):5.3f}" if errs else "    -"
            cells.append(f"{sum(found):>3}/{len(sel):<3} {np.median(ms):6.0f} {max(ms):6.0f} {err}")
        return f"{label:>14} | " + " | ".join(cells)

    print(f"\n{'':>14} | " + " | ".join(f"{d:^28}" for d in detectors))
    print(f"{'':>14} | " + " | ".join(f"{'found':>7} {'p50 ms':>6} {'max ms':>6} {'5-pt':>5}" for _ in detectors))
    print(summary("photos", [r for r in rows if r["yaw"] is None]))
    for lo, hi in ((0, 30), (30, 50), (50, 70), (70, 90)):
        sel = [r for r in rows if r["yaw"] is not None and lo <= abs(r["yaw"]) < hi]
        if sel:
            print(summary(f"synth {lo}-{hi}°", sel))
    print(summary("all", rows))
    lost = [r["name"] for r in rows if r["cnn"][0] and not r["auto"][0]]
    gained = [r["name"] for r in rows if r["auto"][0] and not r["hog→cnn"][0]]
    print(f"\nfound by the CNN alone but not by auto: {len(lost)} {lost}")
    print(f"found by auto but not by hog→cnn: {len(gained)} {gained}")
    print("5-pt: median error of the 5-point landmarks from that detector's box (synthetic heads only)")


if __name__ == "__main__":
    main()
