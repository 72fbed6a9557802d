"""The iris colour /reconstruct gives the exported eyes, against the truth of held-out synthetic renders.

    python benchmarks/iris_colour.py [--count 48] [--seed 20261207] [--bundle service/bundled/default] [--bands]

Each render's iris colour is known (its albedo parameters' iris melanin, blue to dark brown: the colour the eye
assets rendered). Printed in one run, mean absolute error per sRGB channel and the correlation of the luminance
with the truth's, for: the default colour (none measured), the colour read off the served albedo map's eye texels
(``facecore.assets.iris_colour``, the service before ``service.pipeline.PHOTO_IRIS``), and the colour measured
between the photo's lids (``facecore.assets.photo_iris_colour``, de-lit with the light at the eyes: the service
now). Then the fixture photos' measured colours. ``--bands`` also scores other luminance bands of the photo's
eye pixels (``IRIS_HUE_BAND`` / ``IRIS_LEVEL_BAND``; choose them on another stream than you report).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from bundle_metrics import PHOTOS, BundleRunner
from PIL import Image

from facecore import assets, color
from facecore.bundle import load_bundle
from facecore.texture import LUMA
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE


def truth_iris(item) -> np.ndarray:
    from training.data.skin import iris_linear_rgb, linear_to_srgb

    return linear_to_srgb(iris_linear_rgb(item.albedo_params.iris_melanin.float().cpu()))[0].numpy()


def served_iris(runner: BundleRunner, image: np.ndarray, photo: bool, bands=None) -> tuple[np.ndarray, str]:
    saved = P.PHOTO_IRIS, assets.IRIS_HUE_BAND, assets.IRIS_LEVEL_BAND
    P.PHOTO_IRIS = photo
    if bands is not None:
        assets.IRIS_HUE_BAND, assets.IRIS_LEVEL_BAND = bands
    try:
        iris = runner.reconstruct(image)["texture"]["iris"]
    finally:
        P.PHOTO_IRIS, assets.IRIS_HUE_BAND, assets.IRIS_LEVEL_BAND = saved
    return np.array(iris["srgb"]), iris["source"]


def main() -> None:
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--seed", type=int, default=20261207, help="stream (the bands were chosen on another)")
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--bands", action="store_true", help="also score other hue / level bands")
    args = ap.parse_args()
    runner = BundleRunner(load_bundle(args.bundle), 0)
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64, seed=args.seed))
    rows = {"default": [], "albedo map (before)": [], "photo (now)": []}
    truths, sources = [], {"albedo map (before)": [], "photo (now)": []}
    other = {f"bands {h}/{lv}": (h, lv) for h in ((5, 35), (20, 50)) for lv in ((5, 35), (20, 50), (35, 65))}
    other = other if args.bands else {}
    rows.update({name: [] for name in other})
    sources.update({name: [] for name in other})
    for i in range(args.count):
        item = faces.batch([i])
        image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        try:
            photo = P.decode_photo(png.getvalue(), 50_000_000)
            before, src_before = served_iris(runner, photo, False)
            now, src_now = served_iris(runner, photo, True)
        except P.PhotoError:
            continue
        truths.append(truth_iris(item))
        rows["default"].append(np.array(assets.DEFAULT_IRIS_SRGB))
        rows["albedo map (before)"].append(before)
        rows["photo (now)"].append(now)
        sources["albedo map (before)"].append(src_before)
        sources["photo (now)"].append(src_now)
        for name, bands in other.items():
            colour, src = served_iris(runner, photo, True, bands)
            rows[name].append(colour)
            sources[name].append(src)
    truth = np.array(truths)
    blue = truth[:, 2] > truth[:, 0]  # blue and grey-blue irises; the rest green to dark brown
    print(f"Iris colour on {len(truth)} held-out synthetic renders (stream {args.seed}; {blue.sum()} blue), sRGB:")
    print(f"{'':>22} {'MAE':>6} {'hue err':>8} {'lum corr':>9} {'blue/brown right':>17}  from photo/map/default")
    for name, values in rows.items():
        v = np.array(values)
        corr = float(np.corrcoef(v @ LUMA, truth @ LUMA)[0, 1]) if np.ptp(v @ LUMA) > 0 else float("nan")
        hue = np.abs(v / v.sum(1, keepdims=True) - truth / truth.sum(1, keepdims=True)).sum(1).mean()
        right = float(np.mean((v[:, 2] > v[:, 0]) == blue))
        src = sources.get(name, ["default"] * len(v))
        counts = "/".join(str(src.count(s)) for s in ("photo", "albedo", "default"))
        print(f"{name:>22} {np.abs(v - truth).mean():6.3f} {hue:8.3f} {corr:9.2f} {right:17.2f}  {counts}")
    print(f"truth: luminance {np.percentile(truth @ LUMA, [5, 50, 95]).round(3)} (5/50/95 %); hue err: L1 distance")
    print("of the chromaticities (r, g, b) / (r + g + b)")
    print("fixture photos (now):")
    for path in sorted(args.photos.glob("*.jpg")):
        colour, src = served_iris(runner, P.decode_photo(path.read_bytes(), 50_000_000), True)
        print(f"  {path.name:26} {colour.round(2)} ({src})")


if __name__ == "__main__":
    main()
