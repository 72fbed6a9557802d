"""How bright the eyes' whites are against the skin, in portraits and in /reconstruct's renders over them.

    python benchmarks/eye_brightness.py [--bundle service/bundled/default] [--photos tests/fixtures/photos]

For each fixture photo (not greyscale ones) /reconstruct runs, and its reconstruction is rendered over the photo's
aligned crop as the README's pictures are (``bundle_metrics.render_over``). In both images, in linear light:
the brightest 15 % of the pixels inside dlib's six-point contours of the two eyes (the sclera where the eye is
open) against the median luminance of two patches of cheek (between each outer eye corner, the nose's side and the
mouth's corner). The renderer lights the eyeball as if nothing hid it; in photos the socket, lids and lashes shade
it (``facecore.assets.SCLERA_SRGB``). A squinting eye shows lid and iris there, not sclera: read its row so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bundle_metrics import PHOTOS, BundleRunner, render_over, served_crop

from facecore import color
from facecore.assets import eye_pixels
from facecore.bundle import load_bundle
from facecore.texture import LUMA
from models.landmarks import landmarks68
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

CROP = 384


def whites_to_skin(image: np.ndarray, lm: np.ndarray) -> tuple[float, float]:
    """(the eyes' brightest 15 % luminance, the cheeks' median luminance) of an sRGB uint8 image, linear."""
    Y = color.srgb_to_linear(np.asarray(image, np.float64) / 255.0) @ LUMA
    cheeks = []
    for corner, nose, mouth in ((36, 31, 48), (45, 35, 54)):
        x, y = np.rint((lm[corner] + lm[nose] + lm[mouth]) / 3).astype(int)
        cheeks.append(np.median(Y[max(y - 6, 0) : y + 6, max(x - 6, 0) : x + 6]))
    return float(np.percentile(eye_pixels(Y, lm), 85)), float(np.mean(cheeks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    runner = BundleRunner(bundle, 0)
    print("eyes' whites / cheeks (linear luminance): photo | render over it")
    ratios = []
    for path in sorted(args.photos.glob("*.jpg")):
        image = P.decode_photo(path.read_bytes(), 50_000_000)
        meta = runner.reconstruct(image, "photo")
        if "greyscale" in meta["texture"].get("flags", []):
            continue
        crop = served_crop(image, meta, CROP)
        lm = landmarks68(crop)
        photo, render = (whites_to_skin(img, lm) for img in (crop, render_over(bundle, meta, crop)))
        ratios.append((photo[0] / photo[1], render[0] / render[1]))
        print(f"  {path.name:28s} {ratios[-1][0]:.2f} | {ratios[-1][1]:.2f}")
    photo_r, render_r = np.array(ratios).T
    print(f"  median                       {np.median(photo_r):.2f} | {np.median(render_r):.2f}")


if __name__ == "__main__":
    main()
