"""Calibrate a bundle's photo skin level and ``albedo=generated`` tone match on held-out synthetic renders
(``manifest["skin_tone"]``).

    python -m training.skin_tone --bundle DIR [--renders 80] [--seed 20261207] [--dry-run]

Each render (``training.data.synthetic``, stream ``--seed``: the training draws from others, and
``benchmarks/bundle_metrics.py`` from 20261125, which scores the match) goes through the service's /reconstruct
with ``albedo=generated`` and the match off, and the skin (a :class:`facecore.texture.SkinModel` of the cheeks,
nose and forehead) of two estimates of the face's tone is set against the truth's — the photo's de-lit albedo (the
result's ``texture.skin_srgb``) and AlbedoGAN's map at the latent read off it — in log R/G, log B/G and
log-luminance. Two passes over the same renders; stored (``--dry-run``: printed only):

- ``level_intercept``, ``level_slope``, ``level_chroma`` (first pass, the bundle uncalibrated): the least-squares
  map from the photo's de-lit skin — its log-luminance and its log R/G, log B/G — to the truth's log-luminance, on
  the renders both as drawn and auto-exposed (:func:`auto_exposed`, as a camera exposes for a face). The light the
  encoder guesses from one photo regresses to the mean (bundle 2.0.0: slope 1.4–1.5, the darkest quarter of skins
  de-lit 0.35–0.5 too light in log, the fairest 0.24 too dark), and a camera's exposure takes the light's level
  away altogether (a line on the level alone, fitted as drawn: log-luminance error p50 0.17 as drawn, 0.57
  auto-exposed); the skin's chroma follows its pigment, as its level does, and exposure leaves it alone.
  /reconstruct de-lights to the map's level (:func:`facecore.texture.extract`);
- then (second pass, the photo de-lit to that level, which the latent graph reads too):
  ``photo_level_offset``: the photo's mean log-luminance error, negated (≈ 0 after the map);
- ``chroma_weight``, ``level_weight``: the photo's share of the combination ``own + w · (photo − own)`` with the
  least mean squared error, ``w = (E[g²] − E[p·g]) / E[(p − g)²]`` (``p``: the photo's error with the bias
  removed, ``g``: the generated map's), the chroma's two channels pooled; each within [0, 1].

Both passes pool the renders as drawn and auto-exposed to :data:`AUTO_EXPOSURE`. Renders without a face found,
or whose photo carries a colour flag (the match leaves those alone), are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np

from facecore import color, texture
from facecore import geometry as geo
from facecore.bundle import Bundle, SkinToneCalibration, edited_copy, load_bundle

DEFAULT_SEED = 20261207
AUTO_EXPOSURE = 0.18
"""The face box's median linear luminance :func:`auto_exposed` sets (a camera's mid-grey)."""
logger = logging.getLogger(__name__)


def skin_stats(model: geo.FaceModelArrays, albedo_linear: np.ndarray) -> np.ndarray:
    """(3,): log R/G, log B/G, log-luminance of a map's skin model (its cheeks, nose and forehead)."""
    skin = texture.map_skin_model(model, albedo_linear)
    return np.array([*skin.mean, skin.log_y])


def shares(photo: np.ndarray, generated: np.ndarray) -> tuple[float, float]:
    """The photo's share of the least-squares combination of two estimates with errors ``photo`` and ``generated``
    (N, 3: log R/G, log B/G, log Y), for the chroma (both channels pooled) and the level, each within [0, 1]."""

    def share(p: np.ndarray, g: np.ndarray) -> float:
        denom = float(((p - g) ** 2).mean())
        return 0.5 if denom <= 0.0 else float(np.clip(((g - p) * g).mean() / denom, 0.0, 1.0))

    return share(photo[:, :2], generated[:, :2]), share(photo[:, 2], generated[:, 2])


def measure(
    bundle: Bundle,
    count: int,
    seed: int,
    matched: bool = False,
    photo_only: bool = False,
    exposure: float | None = None,
    greyscale: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray, int, int]:
    """Errors against the truth, (N, 3) each: ``photo``, ``generated`` (no match; absent with ``photo_only`` or for
    a bundle without ``albedo=generated``) and, with ``matched``, the map as the service matches it now; the
    truth's (N, 3); and how many renders had a colour flag (or no skin model) and how many no face.

    ``exposure``: each render auto-exposed first, as a camera's face-priority exposure does: its linear image scaled
    so that the median luminance inside the face box dlib finds is ``exposure`` (clipped to 1). The renders
    themselves keep the light's level, which a real camera takes away.

    ``greyscale``: each render made grey first (its linear luminance in every channel), as a black-and-white
    portrait; those are measured although flagged greyscale (the flag is the point; other flags and no skin model
    still leave a render out)."""
    from PIL import Image

    from service import pipeline as P
    from service.engine.sessions import inline_runner, open_sessions
    from training.data.images import resize_uv
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    model = bundle.face_model
    run_graph = inline_runner(open_sessions(bundle, ["CPUExecutionProvider"], 0))
    from models.face.model import FaceModel

    face_model = FaceModel.from_file(bundle.root / bundle.manifest.face_model.file)  # the truth on the bundle's layout
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=256, seed=seed), face_model=face_model)
    generated = bundle.generated_reconstruct and not photo_only
    req = P.ReconstructRequest("skin_tone", 256, 64, ("albedo",), False, "auto", "generated" if generated else "photo")

    def reconstruct(image: np.ndarray, match: bool) -> tuple[dict, np.ndarray]:
        before, P.TONE_MATCH = P.TONE_MATCH, match
        try:
            result = asyncio.run(P.reconstruct(bundle, run_graph, req, image, P.Timer()))
        finally:
            P.TONE_MATCH = before
        png = Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB")
        return result.meta, color.srgb_to_linear(np.asarray(png, np.float64) / 255.0)

    rows: dict[str, list[np.ndarray]] = {"photo": [], "generated": []} if generated else {"photo": []}
    truths = []
    if matched and generated:
        rows["generated, tone matched"] = []
    flagged = failed = 0
    for i in range(count):
        item = faces.batch([i])
        image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
        truth = skin_stats(model, resize_uv(item.albedo_uv, 256)[0].permute(1, 2, 0).numpy())
        if greyscale:
            luminance = color.srgb_to_linear(image / 255.0) @ texture.LUMA
            image = color.to_uint8(color.linear_to_srgb(np.repeat(luminance[..., None], 3, 2)))
        if exposure is not None:
            image = auto_exposed(image, exposure)
            if image is None:
                failed += 1
                continue
        try:
            meta, plain = reconstruct(image, False)
        except P.PhotoError:
            failed += 1
            continue
        flags = set(meta["texture"]["flags"]) - ({"greyscale"} if greyscale else set())
        if flags or meta["texture"].get("skin_srgb") is None:  # the match leaves those alone
            flagged += 1
            continue
        photo = color.srgb_to_linear(np.array(meta["texture"]["skin_srgb"]))
        truths.append(truth)
        rows["photo"].append(np.r_[np.log(photo[[0, 2]] / photo[1]), np.log(photo @ texture.LUMA)] - truth)
        if generated:
            rows["generated"].append(skin_stats(model, plain) - truth)
        if "generated, tone matched" in rows:
            rows["generated, tone matched"].append(skin_stats(model, reconstruct(image, True)[1]) - truth)
    errors = {k: np.array(v).reshape(-1, 3) for k, v in rows.items()}
    return errors, np.array(truths).reshape(-1, 3), flagged, failed


def auto_exposed(image: np.ndarray, target: float) -> np.ndarray | None:
    """(H, W, 3) uint8 ``image`` with its linear values scaled so the median luminance in its largest face box is
    ``target`` (clipped to 1); None without a face."""
    from facecore import detect

    faces = detect.detect_landmarks5(image)
    if not faces:
        return None
    h, w = image.shape[:2]
    x0, y0, x1, y1 = np.clip(np.rint(faces[0].box).astype(int), 0, [w - 1, h - 1, w - 1, h - 1])
    linear = color.srgb_to_linear(image / 255.0)
    median = float(np.median(linear[y0 : y1 + 1, x0 : x1 + 1] @ texture.LUMA))
    return color.to_uint8(color.linear_to_srgb(np.clip(linear * target / max(median, 1e-4), 0.0, 1.0)))


def fit_level_map(photo: np.ndarray, truth_level: np.ndarray) -> tuple[float, float, float, float]:
    """``(intercept, slope, c_rg, c_bg)`` of the least-squares map truth ≈ intercept + slope · y + c_rg · log R/G +
    c_bg · log B/G from the photo's de-lit skin (N, 3: log R/G, log B/G, log-luminance y) to the truth's
    log-luminance, the slope within the manifest's bounds [0, 4] (the rest refitted at a clipped slope)."""
    x, y = np.asarray(photo, np.float64).reshape(-1, 3), np.asarray(truth_level, np.float64)
    if len(x) < 10 or (x.std(0) <= 0).any():
        raise SystemExit(f"only {len(x)} renders (or no spread) to fit the photo's skin level on: too few")
    design = np.c_[np.ones(len(x)), x[:, 2], x[:, :2]]
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    if not 0.0 <= coef[1] <= 4.0:
        slope = float(np.clip(coef[1], 0.0, 4.0))
        rest = np.linalg.lstsq(design[:, [0, 2, 3]], y - slope * x[:, 2], rcond=None)[0]
        coef = np.array([rest[0], slope, rest[1], rest[2]])
    if abs(coef[0]) > 5.0 or np.abs(coef[2:]).max() > 20.0:
        raise SystemExit(f"the photo's skin level map {np.round(coef, 2).tolist()}: outside the manifest's bounds")
    intercept, slope, c_rg, c_bg = (float(c) for c in coef)
    return intercept, slope, c_rg, c_bg


def with_calibration(bundle: Bundle, cal: SkinToneCalibration | None) -> Bundle:
    """``bundle`` as the service would run it with ``cal`` as its ``manifest["skin_tone"]``."""
    return dataclasses.replace(bundle, manifest=bundle.manifest.model_copy(update={"skin_tone": cal}))


def without_calibration(bundle: Bundle) -> Bundle:
    """``bundle`` as the service would run it with no ``manifest["skin_tone"]``."""
    return with_calibration(bundle, None)


def pooled(bundle: Bundle, count: int, seed: int, **kwargs) -> tuple[dict[str, np.ndarray], np.ndarray, int, int]:
    """:func:`measure` on the renders as drawn and auto-exposed to :data:`AUTO_EXPOSURE`, concatenated."""
    drawn, exposed = (measure(bundle, count, seed, exposure=e, **kwargs) for e in (None, AUTO_EXPOSURE))
    errors = {k: np.concatenate([drawn[0][k], exposed[0][k]]) for k in drawn[0]}
    return errors, np.concatenate([drawn[1], exposed[1]]), drawn[2] + exposed[2], drawn[3] + exposed[3]


def calibrate(bundle: Bundle, count: int, seed: int) -> tuple[SkinToneCalibration, dict[str, np.ndarray], int, int]:
    """Both passes (the module's docstring): the calibration, the second pass's errors, and how many renders had a
    colour flag and how many no face (each render counted as drawn and auto-exposed)."""
    errors, truth, _, _ = pooled(without_calibration(bundle), count, seed, photo_only=True)
    intercept, slope, c_rg, c_bg = fit_level_map(errors["photo"] + truth, truth[:, 2])
    line = {
        "level_intercept": round(intercept, 4),
        "level_slope": round(slope, 4),
        "level_chroma": (round(c_rg, 4), round(c_bg, 4)),
    }
    level = SkinToneCalibration(photo_level_offset=0.0, renders=len(truth), **line)
    errors, _, flagged, failed = pooled(with_calibration(bundle, level), count, seed)
    n = len(errors["photo"])
    data = f"training.data.synthetic stream {seed}, 224 px, as drawn and auto-exposed: {n} renders, no colour flag"
    cal = fit(errors, data)
    return SkinToneCalibration.model_validate({**cal.model_dump(), **line}), errors, flagged, failed


def fit(errors: dict[str, np.ndarray], data: str) -> SkinToneCalibration:
    """The level offset and shares of :func:`measure`'s ``photo`` and ``generated`` errors (see the module's
    docstring; no shares without ``generated``)."""
    n = len(errors["photo"])
    if n < 10:
        raise SystemExit(f"only {n} renders to calibrate the skin tone on: too few")
    offset = -float(errors["photo"][:, 2].mean())
    chroma = level = None
    if "generated" in errors:
        chroma, level = shares(errors["photo"] + [0.0, 0.0, offset], errors["generated"])
        chroma, level = round(chroma, 3), round(level, 3)
    return SkinToneCalibration(
        photo_level_offset=round(offset, 4), chroma_weight=chroma, level_weight=level, renders=n, data=data
    )


def calibrate_bundle(
    bundle_dir: Path, count: int = 80, seed: int = DEFAULT_SEED, write: bool = True
) -> SkinToneCalibration:
    """Measure, fit and (``write``) store ``manifest["skin_tone"]`` in ``bundle_dir``; returns the calibration."""
    if not (Path(bundle_dir) / "manifest.json").is_file():
        raise SystemExit(f"--bundle: {bundle_dir} is not a bundle folder (no manifest.json)")
    bundle = load_bundle(bundle_dir)
    if not bundle.capabilities["reconstruct"]:
        raise SystemExit(f"{bundle_dir}: the bundle cannot reconstruct a photo: no skin tone to calibrate")
    cal, errors, flagged, failed = calibrate(bundle, count, seed)
    logger.info(
        "skin tone on %d of %d renders × 2 exposures (%d with a colour flag, %d without a face): photo level "
        "%.4f + %.4f · y + %s · (log R/G, log B/G), then offset %+.4f; the photo's share: chroma %s, level %s",
        cal.renders, 2 * count, flagged, failed, cal.level_intercept, cal.level_slope, cal.level_chroma,
        cal.photo_level_offset, cal.chroma_weight, cal.level_weight,
    )  # fmt: skip
    if write:
        write_calibration(bundle_dir, cal)
    return cal


def write_calibration(bundle_dir: Path, cal: SkinToneCalibration) -> None:
    """``cal`` as ``bundle_dir``'s ``manifest["skin_tone"]``: the folder is replaced only once the service's loader
    accepts the edited copy (:func:`facecore.bundle.edited_copy`)."""

    def edit(_folder: Path, manifest: dict) -> None:
        manifest["skin_tone"] = cal.model_dump()

    edited_copy(bundle_dir, bundle_dir, None, edit)
    logger.info("wrote %s field 'skin_tone'", Path(bundle_dir) / "manifest.json")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle folder (its manifest is rewritten)")
    ap.add_argument("--renders", type=int, default=80)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--dry-run", action="store_true", help="print the calibration, write nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    calibrate_bundle(args.bundle, args.renders, args.seed, write=not args.dry_run)


if __name__ == "__main__":
    main()
