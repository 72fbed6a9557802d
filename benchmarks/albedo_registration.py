"""Is the albedo registered to the head? Offsets between the face model's landmark texels and the features of
the mean albedo map (issue 14, item 3; target ≤ 2 % of the map width).

    python benchmarks/albedo_registration.py [--bundle service/bundled/default] [--samples 256] [--seed 7]
        [--maps DIR] [--sheet out.png]

Measured on the mean of ``--samples`` maps (features that move from map to map blur out; a feature the
generator puts in the wrong place stays there), at 256² (maps of other sizes are resized):

* pupils: the darkest blob (luminance, smoothed) within ±12 % of the width around each eye's landmark centre
  (iBUG 36–41 / 42–47, that side of the face only), vs that centre;
* nostrils: the midpoint of the darkest blob on each side within ±8 % around the nose base (iBUG 31–35) and
  above the upper lip, vs its centre;
* lips: the shift within ±10 % that best aligns the layout's lip polygon (iBUG 48–59 and a 4-texel margin of
  skin, zero-mean) with the redness ``R − (G + B) / 2`` (smoothed): a matched filter of the lips' own shape, so a
  red blotch elsewhere (1.2.0's mean map has one on the left cheek beside the nose, which the reddest point took
  for the lips: 10.8 %) is not taken for them;
  a dark blob's position is the centroid of its signal above the search square's median within 3 % of its peak.

Offsets are printed in texels, in % of the map width and in mm on the mean head (one texel of the cylindrical
layout spans ``2πr / R`` across and ``height / (v-span · R)`` down). Rows: the bundle's generator (truncation 1,
through its ONNX mapping + albedo graphs), the procedural ground-truth albedos the recipe trains on (a control:
they are registered by construction, so what it prints is the method's own error) and, with ``--maps``, a folder
of maps (e.g. ``runs/default/extract/albedo``, the extracted training maps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from facecore import geometry as geo
from facecore.bundle import Bundle, load_bundle
from service.engine.sessions import generated_albedos, open_sessions
from service.pipeline import texel_size
from service.settings import EMBEDDED_BUNDLE

SIZE = 256
FEATURES = {  # name → (landmarks whose mean is the expected centre, search half-size in map widths, kind)
    "right pupil": (list(range(36, 42)), 0.12, "dark"),
    "left pupil": (list(range(42, 48)), 0.12, "dark"),
    "nostrils": ([31, 32, 33, 34, 35], 0.08, "dark"),
    "lips": (list(range(48, 68)), 0.10, "red"),
}
BLOB = 0.03  # radius of the centroid around the strongest point, map widths


def landmark_texels(model: geo.FaceModelArrays) -> np.ndarray:
    """(68, 2) texel (x right, y down) of each landmark at SIZE."""
    corners = model.uv[model.uv_faces[model.landmark_faces]].astype(np.float64)
    uv = np.einsum("lk,lkc->lc", model.landmark_bary.astype(np.float64), corners)
    return np.stack([np.mod(uv[:, 0], 1.0) * SIZE - 0.5, (1.0 - uv[:, 1]) * SIZE - 0.5], 1)


def feature_offsets(mean_map: np.ndarray, model: geo.FaceModelArrays) -> dict[str, np.ndarray]:
    """Name → (dx, dy) texels at SIZE from the landmark centre to the feature found in ``mean_map`` (S, S, 3).

    A dark feature is the strongest point of the smoothed darkness (pupils, nostrils) in a square around the
    landmark centre, refined to the centroid of that signal within :data:`BLOB` of it; the lips are
    :func:`lips_shift`. An eye's square
    stops at the face's midline (it cannot take the other eye); the nostrils are one blob on each side, above
    the upper lip (it cannot take the mouth), and their midpoint.
    """
    from scipy.ndimage import gaussian_filter

    lm = landmark_texels(model)
    mid = float(lm[[27, 28, 29, 30, 33, 51, 57, 8]][:, 0].mean())
    lum = mean_map @ np.array([0.2126, 0.7152, 0.0722])
    signals = {
        "dark": gaussian_filter(lum.max() - lum, 2.0),
        "red": gaussian_filter(mean_map[..., 0] - 0.5 * (mean_map[..., 1] + mean_map[..., 2]), 2.0),
    }
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]

    def blob(signal: np.ndarray, inside: np.ndarray) -> np.ndarray:
        peak = np.unravel_index(np.argmax(np.where(inside, signal, -np.inf)), signal.shape)
        near = inside & (np.hypot(xs - peak[1], ys - peak[0]) <= BLOB * SIZE)
        weight = np.where(near, np.clip(signal - np.median(signal[inside]), 0.0, None), 0.0)
        return np.array([(weight * xs).sum(), (weight * ys).sum()]) / max(weight.sum(), 1e-12)

    out = {}
    for name, (idx, half, kind) in FEATURES.items():
        centre = lm[idx].mean(0)
        inside = (np.abs(xs - centre[0]) <= half * SIZE) & (np.abs(ys - centre[1]) <= half * SIZE)
        signal = signals[kind]
        if "pupil" in name:
            found = blob(signal, inside & ((xs - mid) * (centre[0] - mid) > 0))
        elif name == "nostrils":  # one on each side, above the upper lip (the line between the lips is darker)
            inside &= ys < lm[51, 1]
            found = 0.5 * (blob(signal, inside & (xs < mid)) + blob(signal, inside & (xs > mid)))
        else:  # the lips: where their shape lies in the redness (a blob of another shape, a flushed cheek, is not)
            out[name] = lips_shift(signal, lm, inside)
            continue
        out[name] = found - centre
    return out


def lips_shift(redness: np.ndarray, lm: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(dx, dy) texels that best align the layout's lips (the polygon of iBUG 48–59, zero-mean) with ``redness``:
    the peak of their correlation among the shifts that keep the lips' centre ``inside``, refined to the
    centroid of the response within 1.5 texels of it."""
    from PIL import Image, ImageDraw
    from scipy.signal import correlate

    img = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in lm[48:60]], fill=255)
    mask = np.asarray(img, np.float64) / 255.0
    ys, xs = np.nonzero(mask)
    pad = 4  # the skin around the lips belongs to the template: lips are redder than what surrounds them
    y0, y1, x0, x1 = ys.min() - pad, ys.max() + pad + 1, xs.min() - pad, xs.max() + pad + 1
    template = mask[y0:y1, x0:x1] - mask[y0:y1, x0:x1].mean()
    response = correlate(redness - redness.mean(), template, mode="valid")  # [i, j]: template's corner at (j, i)
    rows, cols = np.mgrid[0 : response.shape[0], 0 : response.shape[1]]
    shifts = np.stack([cols - x0, rows - y0], -1).astype(np.float64)
    centre = np.array([(x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0]) + shifts  # the lips' box centre, shifted
    col = np.clip(np.rint(centre[..., 0]).astype(int), 0, SIZE - 1)
    row = np.clip(np.rint(centre[..., 1]).astype(int), 0, SIZE - 1)
    allowed = inside[row, col]
    peak = np.unravel_index(np.argmax(np.where(allowed, response, -np.inf)), response.shape)
    near = allowed & (np.hypot(*(shifts - shifts[peak]).transpose(2, 0, 1)) <= 1.5)
    weight = np.where(near, np.clip(response - response[near].min(), 0.0, None), 0.0)
    return (weight[..., None] * shifts).sum((0, 1)) / max(weight.sum(), 1e-12)


def generated_maps(bundle: Bundle, samples: int, seed: int) -> np.ndarray:
    """(N, S, S, 3) sRGB maps in [0, 1] from the bundle's generator at truncation 1."""
    z = np.random.default_rng(seed).standard_normal((samples, bundle.manifest.codes.z_dim)).astype(np.float32)
    sessions = open_sessions(bundle, ["CPUExecutionProvider"], 0)
    maps = np.concatenate(list(generated_albedos(sessions, z)))
    return np.clip((np.transpose(maps, (0, 2, 3, 1)) + 1.0) / 2.0, 0.0, 1.0)


def truth_maps(samples: int, seed: int) -> np.ndarray:
    from training.data.albedo_maps import SyntheticAlbedos

    source = SyntheticAlbedos(SIZE, seed, samples, cache=False)
    return np.stack([source.load_uint8(i).permute(1, 2, 0).numpy() for i in range(samples)]) / 255.0


def folder_maps(folder: Path, samples: int) -> np.ndarray:
    files = sorted(folder.glob("*.png"))[:samples]
    if not files:
        raise SystemExit(f"--maps: no PNG maps in {folder}")
    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.float64) / 255.0 for f in files])


def mean_at_size(maps: np.ndarray) -> np.ndarray:
    mean = maps.mean(0)
    if mean.shape[0] != SIZE:
        img = Image.fromarray((mean * 255 + 0.5).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        mean = np.asarray(img, np.float64) / 255.0
    return mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--maps", type=Path, default=None, help="a folder of albedo PNGs to measure too")
    ap.add_argument("--sheet", type=Path, default=None, help="the mean maps: landmark centres green, features magenta")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    model = bundle.face_model
    mm_x, mm_y = (1000.0 * t for t in texel_size(model, SIZE))
    sets = {
        f"generator of {bundle.manifest.name} {bundle.manifest.version} "
        f"(native {bundle.manifest.resolutions.albedo}²)": generated_maps(bundle, args.samples, args.seed),
        "procedural truth (control)": truth_maps(args.samples, args.seed),
    }
    if args.maps is not None:
        sets[f"maps in {args.maps}"] = folder_maps(args.maps, args.samples)
    means = {}
    print(f"offsets of the mean map's features from the landmark texels (map {SIZE}², {args.samples} maps each)")
    for label, maps in sets.items():
        means[label] = mean = mean_at_size(maps)
        print(f"\n{label}:")
        worst = 0.0
        for name, (dx, dy) in feature_offsets(mean, model).items():
            dist = float(np.hypot(dx, dy))
            worst = max(worst, dist)
            print(
                f"  {name:<12} dx {dx:+6.1f} dy {dy:+6.1f} texels = {100 * dist / SIZE:4.1f} % of the width "
                f"({np.hypot(dx * mm_x, dy * mm_y):4.1f} mm on the mean head)"
            )
        print(f"  worst {100 * worst / SIZE:.1f} % of the width (target ≤ 2 %)")
    if args.sheet:
        lm = landmark_texels(model)
        tiles = []
        for mean in means.values():
            img = (mean * 255 + 0.5).astype(np.uint8)
            for (idx, _, _), (dx, dy) in zip(FEATURES.values(), feature_offsets(mean, model).values(), strict=True):
                x, y = np.round(lm[idx].mean(0)).astype(int)
                img[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = (0, 255, 0)  # where the layout wants it
                fx, fy = int(round(x + dx)), int(round(y + dy))
                img[max(fy - 1, 0) : fy + 2, max(fx - 1, 0) : fx + 2] = (255, 0, 255)  # where the map has it
            tiles.append(img)
        Image.fromarray(np.concatenate(tiles, 1)).save(args.sheet)
        print(f"\nwrote {args.sheet}")


if __name__ == "__main__":
    main()
