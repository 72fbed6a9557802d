"""The skin tone of /reconstruct's albedo maps against the truth, on held-out synthetic renders.

    python benchmarks/skin_tone.py [--seed 20261207] [--count 80] [--bundle DIR] [--fit | --write] [--card]

For each render (the synthetic source's procedural albedo on a random head, pose, light and background) the
service reconstructs the photo and the generated map (``albedo=generated``, with and without the match to the
photo's tone, ``service.pipeline.TONE_MATCH``), and the skin of each (a :class:`facecore.texture.SkinModel` of its
cheeks, nose and forehead) is compared with the truth's: log-chroma (log R/G, log B/G) and log-luminance, mean
(the bias) and median / 90th percentile of the absolute error (:func:`training.skin_tone.measure`). "photo" is the
photo's own skin model (the result's ``texture.skin_srgb``). Renders with a colour flag are counted and left out.

"uncalibrated photo" is the photo de-lit without the bundle's calibration. The bundle's calibration
(``manifest.json["skin_tone"]``: the map from the photo's de-lit skin level and chroma to the truth's level, the
level bias left, and the photo's share of the tone the match gives the map) is fitted on these renders, as drawn
and auto-exposed
(:func:`training.skin_tone.calibrate`: ``--fit`` prints it, ``--write`` stores it, as the training's export stage
does): fit it on stream 20261207 (the default), then ``--seed 20261125 --card`` (``benchmarks/bundle_metrics.py``'s
stream) scores it on other renders and writes the table into the bundle's model card (block ``skin-tone``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facecore.bundle import SkinToneCalibration, load_bundle
from service.settings import EMBEDDED_BUNDLE
from training.skin_tone import calibrate, measure, without_calibration, write_calibration

NAMES = ("log R/G", "log B/G", "log Y")


def level_text(cal: SkinToneCalibration) -> str:
    """The calibration's skin-level map as a formula."""
    a, b, c_rg, c_bg = cal.level_map
    terms = ((b, "y"), (c_rg, "log R/G"), (c_bg, "log B/G"))
    return f"{a:.3f}" + "".join(f" {'+' if c >= 0 else '−'} {abs(c):.3f} · {name}" for c, name in terms)


def greyscale_level(bundle, count: int, seed: int) -> None:
    """The photo map's skin level (log Y) against the truth on grey copies of the renders: as served (the level
    map at the bundle's mean map's skin chroma, ``service.pipeline.mean_skin_chroma``) and at the grey photo's own
    chroma."""
    from facecore import texture

    rows = {}
    for name, untrusted in (("mean map's chroma (served)", texture.UNTRUSTED_CHROMA), ("photo's chroma", set())):
        before, texture.UNTRUSTED_CHROMA = texture.UNTRUSTED_CHROMA, untrusted
        try:
            errors, _, skipped, failed = measure(bundle, count, seed, photo_only=True, greyscale=True)
        finally:
            texture.UNTRUSTED_CHROMA = before
        rows[name] = errors["photo"][:, 2]
    n = len(next(iter(rows.values())))
    print(f"greyscale copies of {n} renders of stream {seed} ({skipped} flagged otherwise or without a skin model, "
          f"{failed} no face): "
          "photo map's skin log Y vs truth")  # fmt: skip
    for name, e in rows.items():
        p50, p90 = np.median(np.abs(e)), np.percentile(np.abs(e), 90)
        print(f"  {name:<24} bias {e.mean():+.3f}  p50 {p50:.3f}  p90 {p90:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=EMBEDDED_BUNDLE)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--count", type=int, default=80)
    what = ap.add_mutually_exclusive_group()  # the card scores the calibration the bundle has, not a new one
    what.add_argument("--fit", action="store_true", help="fit the calibration on these renders and print it")
    what.add_argument("--write", action="store_true", help="fit it and store it in the bundle's manifest")
    what.add_argument("--card", action="store_true", help="the table into the bundle's MODEL_CARD.md (block skin-tone)")
    ap.add_argument(
        "--exposure",
        type=float,
        default=None,
        help="also score the photo maps of the renders auto-exposed to this face median luminance (linear), as "
        "cameras expose: rows 'photo, auto-exposed' and 'uncalibrated photo, auto-exposed'",
    )
    ap.add_argument(
        "--greyscale",
        action="store_true",
        help="only the photo maps' level on grey copies of the renders (black-and-white portraits: flagged, their "
        "level predicted at the bundle's mean map's skin chroma), and with the grey photo's own chroma in the "
        "level map",
    )
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    if args.greyscale:
        greyscale_level(bundle, args.count, args.seed)
        return
    errors, _, flagged, failed = measure(bundle, args.count, args.seed, matched=True)
    uncalibrated = without_calibration(bundle)
    errors["uncalibrated photo"] = measure(uncalibrated, args.count, args.seed, photo_only=True)[0]["photo"]
    if args.exposure is not None:
        for name, b in (("photo", bundle), ("uncalibrated photo", uncalibrated)):
            exposed = measure(b, args.count, args.seed, photo_only=True, exposure=args.exposure)[0]["photo"]
            errors[f"{name}, auto-exposed"] = exposed
    n = len(errors["photo"])
    if not n:
        raise SystemExit(f"no render of stream {args.seed} to measure ({flagged} flagged, {failed} without a face)")
    print(f"skin tone vs truth, {n} renders of stream {args.seed} ({flagged} with a colour flag, {failed} no face)")
    print(f"{'':<26}" + "".join(f"{k + ': bias / p50 / p90':>30}" for k in NAMES))
    rows = []
    for name, e in errors.items():
        cells = [f"{m:+.3f} / {p50:.3f} / {p90:.3f}" for m, p50, p90 in zip(
            e.mean(0), np.median(np.abs(e), 0), np.percentile(np.abs(e), 90, 0), strict=True)]  # fmt: skip
        print(f"{name:<26}" + "".join(f"{c:>30}" for c in cells))
        rows.append((name, *cells))
    if args.card:
        from readme import table, write_block

        tone = bundle.manifest.skin_tone
        line = "none" if tone is None or tone.level_map is None else level_text(tone)
        exposed = "" if args.exposure is None else f" --exposure {args.exposure}"
        text = (
            f"The skin (cheeks, nose, forehead) of /reconstruct's maps against the truth on {n} held-out renders of "
            f"stream {args.seed} ({flagged} with a colour flag, {failed} without a face left out), log units; "
            f"`python benchmarks/skin_tone.py --seed {args.seed} --count {args.count}{exposed} --card`. The bundle's "
            f"skin level, from the photo's de-lit skin (y its log-luminance, log R/G and log B/G its chroma): {line} "
            f'(its data: {tone.data if tone else "none"}); "uncalibrated photo" is the photo de-lit without it.'
        )
        if args.exposure is not None:
            text += (
                f' "auto-exposed": the same renders, each scaled (linear) so that its face box\'s median luminance is '
                f"{args.exposure}, as a camera exposes for a face: the light's level is gone, the chroma stays "
                f"({len(errors['photo, auto-exposed'])} renders)."
            )
        text += "\n\n" + table(("", *(f"{k}: bias / p50 / p90" for k in NAMES)), rows)
        write_block("skin-tone", text, Path(args.bundle) / "MODEL_CARD.md")
        print(f"wrote the skin-tone block of {args.bundle}/MODEL_CARD.md")
    if not (args.fit or args.write):
        return
    cal = calibrate(bundle, args.count, args.seed)[0]
    print(f"fitted here: photo level {level_text(cal)}, then offset {cal.photo_level_offset:+.4f}; the photo's "
          f"share: chroma {cal.chroma_weight}, level {cal.level_weight}")  # fmt: skip
    if args.write:
        write_calibration(args.bundle, cal)
        print(f"wrote skin_tone into {args.bundle}/manifest.json")


if __name__ == "__main__":
    main()
