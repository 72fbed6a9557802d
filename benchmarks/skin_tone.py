"""The skin tone of /reconstruct's albedo maps against the truth, on held-out synthetic renders.

    python benchmarks/skin_tone.py [--seed 20261207] [--count 40] [--bundle DIR] [--write]

For each render (the synthetic source's procedural albedo on a random head, pose, light and background) the
service reconstructs the photo (``albedo=photo``) and the generated map (``albedo=generated``, with and without
the photo's tone, ``service.pipeline.TONE_MATCH``), and the skin of each map (a :class:`facecore.texture.SkinModel`
of its cheeks, nose and forehead) is compared with the truth's: log-chroma (log R/G, log B/G) and log-luminance,
mean (the bias) and median / 90th percentile of the absolute error. "photo" is the photo's own skin model (the
result's ``texture.skin_srgb``; the tone is matched to its chroma and to its level plus the bundle's
``manifest.json["skin_tone"]["photo_level_offset"]``). Renders with any colour flag are counted and left out.

``--write`` stores the photo's mean log-luminance error, negated, as that offset (it depends on the bundle's
light), and how far the match should move the generated map towards the photo's tone: both are estimates of the
truth with errors, and the combination ``own + w · (photo − own)`` with the least mean squared error has
``w = (E[g²] − E[p·g]) / E[(p − g)²]`` (``p``, ``g``: the photo's error, its level bias removed, and the unmatched
generated map's, per log-chroma channel and for the level; the chroma's two channels share one weight). Measure
on stream 20261207 (the default), then ``--seed 20261125`` (``benchmarks/bundle_metrics.py``'s stream) scores the
match on other renders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bundle_metrics import BundleRunner

from facecore import color, texture
from facecore.bundle import SkinToneCalibration, load_bundle
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

NAMES = ("log R/G", "log B/G", "log Y")


def skin_stats(model, albedo_linear: np.ndarray) -> np.ndarray:
    """(3,): log R/G, log B/G, log-luminance of a map's skin model."""
    seed = texture.uv_regions(model, albedo_linear.shape[0])
    area = (seed["cheeks"] | seed["forehead"] | seed["nose"]).reshape(-1)
    skin = texture.fit_skin_model(albedo_linear.reshape(-1, 3)[area])
    return np.array([*skin.mean, skin.log_y])


def shares(photo: np.ndarray, generated: np.ndarray) -> tuple[float, float]:
    """The photo's share of the least-squares combination of two estimates with errors ``photo`` and ``generated``
    (N, 3: log R/G, log B/G, log Y), for the chroma (both channels pooled) and the level, each within [0, 1]."""

    def share(p: np.ndarray, g: np.ndarray) -> float:
        denom = float(((p - g) ** 2).mean())
        return 0.5 if denom <= 0.0 else float(np.clip(((g - p) * g).mean() / denom, 0.0, 1.0))

    return share(photo[:, :2], generated[:, :2]), share(photo[:, 2], generated[:, 2])


def main() -> None:
    from models.face.model import FaceModel
    from training.data.images import resize_uv
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=EMBEDDED_BUNDLE)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--write", action="store_true", help="the photo's level bias into the bundle's manifest")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    model = bundle.face_model
    runner = BundleRunner(bundle, 0, 256)
    faces = SyntheticFaces(
        SyntheticConfig(image_size=224, albedo_size=256, seed=args.seed),
        face_model=FaceModel.from_file(bundle.root / bundle.manifest.face_model.file),
    )
    rows: dict[str, list[np.ndarray]] = {"photo": [], "generated": [], "generated, tone matched": []}
    skipped = failed = 0
    for i in range(args.count):
        item = faces.batch([i])
        image = (item.image_srgb[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        truth = skin_stats(model, resize_uv(item.albedo_uv, 256)[0].permute(1, 2, 0).numpy())
        try:
            P.TONE_MATCH = False
            plain = runner.reconstruct(image, "generated")
            P.TONE_MATCH = True
            matched = runner.reconstruct(image, "generated")
        except P.PhotoError:
            failed += 1
            continue
        if matched["texture"]["flags"]:
            skipped += 1
            continue
        photo = color.srgb_to_linear(np.array(matched["texture"]["skin_srgb"]))
        rows["photo"].append(np.r_[np.log(photo[[0, 2]] / photo[1]), np.log(photo @ texture.LUMA)] - truth)
        for name, meta in (("generated", plain), ("generated, tone matched", matched)):
            rows[name].append(skin_stats(model, color.srgb_to_linear(meta["albedo_srgb"])) - truth)
    n = len(rows["photo"])
    if not n:
        raise SystemExit(f"no render of stream {args.seed} to measure ({skipped} flagged, {failed} without a face)")
    print(f"skin tone vs truth, {n} renders of stream {args.seed} ({skipped} with a colour flag, {failed} no face)")
    print(f"{'':<26}" + "".join(f"{k + ': bias / p50 / p90':>30}" for k in NAMES))
    for name, errors in rows.items():
        e = np.array(errors)
        cells = [f"{m:+.3f} / {p50:.3f} / {p90:.3f}" for m, p50, p90 in zip(
            e.mean(0), np.median(np.abs(e), 0), np.percentile(np.abs(e), 90, 0), strict=True)]  # fmt: skip
        print(f"{name:<26}" + "".join(f"{c:>30}" for c in cells))
    offset = -float(np.mean(rows["photo"], 0)[2])
    chroma_w, level_w = shares(np.array(rows["photo"]) + [0.0, 0.0, offset], np.array(rows["generated"]))
    print(f"the photo's share: chroma {chroma_w:.3f}, level {level_w:.3f} (level offset {offset:+.4f})")
    if args.write:
        path = Path(args.bundle) / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["skin_tone"] = SkinToneCalibration(  # validated as the bundle loader will
            photo_level_offset=round(offset, 4),
            chroma_weight=round(chroma_w, 3),
            level_weight=round(level_w, 3),
            renders=n,
            data=f"training.data.synthetic stream {args.seed}, 224 px, {n} renders without a colour flag",
        ).model_dump()
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"wrote skin_tone (offset {offset:+.4f}, shares {chroma_w:.3f} / {level_w:.3f}) into {path}")


if __name__ == "__main__":
    main()
