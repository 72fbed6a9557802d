"""Texture extraction accuracy on synthetic renders with ground truth, speed, and a contact sheet of real photos.

    python benchmarks/texture_extraction.py [--count 16] [--seed 2024] [--specular 0.6] [--shadows]
        [--landmarks localiser|dlib|truth] [--bundle B]
        [--sheet contact.png] [--photos ../shared/fixtures/photos] [--threads 1] [--batch 4] [--cache fits.pkl]
        [--readme]

The synthetic faces are rendered by ``training.data.synthetic`` with a seed disjoint from the one the fit's defaults
were chosen on (1000), picked to cover |yaw| < 20°, 20–40° and > 40° equally; ``--specular``: with the key light's
highlights on the skin (``SyntheticConfig.specular``: up to that fraction of its irradiance; the training's renders have
none); ``--shadows``: the key light casts the head's own shadows (``SyntheticConfig.shadows``; the training's
renders have none). The fit sees only the image and 68 detected landmarks, found as the extract stage finds them
(``--landmarks localiser``: the bundle's landmark localiser; ``dlib``: dlib's 68-point model; ``truth``: the
renders' own landmarks, an upper bound); the ground truth (landmarks, identity, albedo) is used for scoring only.

Columns: ``det``/``fit`` landmark error (mean distance / inter-ocular distance) of the detected points and of the
fitted model; ``shape``/``mean``: per-vertex RMS (mm) of the fitted / the prior-mean neutral identity vs the truth
over the facial-skin vertices after the best rigid alignment (rotation + translation, no scale); albedo mean abs
errors (linear [0, 1]) on the texels seen in the photo: ``raw`` (seen colours), ``delit`` (de-lit albedo),
``gain`` (de-lit after one least-squares gain per channel: the albedo/light scale is a convention); PSNR on the
fixed facial-skin texels: ``psnr`` (gain-corrected), ``abs`` (no gain), ``noflip`` (mirror fill replaced by the
mean), ``nodelit`` (seen colours instead of albedo); ``seen``/``mir``: fractions of those texels seen / mirrored.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch

from facecore import color
from facecore.geometry import project_points
from models.face.model import FaceModel
from models.render import MeshRenderer, WeakPerspectiveCamera
from training import face_fit
from training import texture as T
from training.data.synthetic import SyntheticConfig, SyntheticFaces, head_angles_deg

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
YAW_BINS = ((0.0, 20.0), (20.0, 40.0), (40.0, 90.0))
MAX_LANDMARK_ERROR = 0.25  # the CLI's default extract.max_landmark_error


def pick_indices(ds: SyntheticFaces, count: int) -> list[int]:
    """The first sample indices filling the |yaw| bins equally (pose drawn from the sampler, not forced)."""
    per_bin = [count // 3 + (1 if b < count % 3 else 0) for b in range(3)]
    picked: list[list[int]] = [[], [], []]
    i = 0
    while any(len(p) < n for p, n in zip(picked, per_bin, strict=True)):
        _, scene = ds.sample_params([i])
        yaw = abs(float(head_angles_deg(scene.codes.pose)[0, 0]))
        for b, (lo, hi) in enumerate(YAW_BINS):
            if lo <= yaw < hi and len(picked[b]) < per_bin[b]:
                picked[b].append(i)
        i += 1
    return sorted(sum(picked, []))


def synthetic_table(args: argparse.Namespace, fm: FaceModel) -> None:
    config = SyntheticConfig(
        image_size=224, albedo_size=256, seed=args.seed, specular=args.specular, shadows=args.shadows
    )
    ds = SyntheticFaces(config, face_model=FaceModel(fm.arrays))
    indices = pick_indices(ds, args.count)
    cfg = face_fit.FitConfig(steps=args.steps)
    renderer = MeshRenderer.from_face_model(fm, cfg.render_size)
    prepared, skipped = [], []
    t_detect = time.perf_counter()
    for i in indices:
        item = ds.batch([i])
        image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
        given = item.landmarks_px[0].double().numpy() if args.landmarks == "truth" else None
        try:
            prepared.append((i, item, T.prepare_face(image, given, localiser=args.localiser)))
        except Exception as exc:
            skipped.append((i, float(head_angles_deg(item.codes.pose)[0, 0]), f"{type(exc).__name__}: {exc}"))
    t_detect = (time.perf_counter() - t_detect) / len(indices)
    fits = []
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(prepared), args.batch):
        chunk = prepared[s : s + args.batch]
        fits += face_fit.fit_faces(
            [p.crop for _, _, p in chunk], np.stack([p.landmarks for _, _, p in chunk]), fm, renderer, config=cfg
        )
    wall = (time.perf_counter() - wall) / max(len(prepared), 1)
    cpu = (time.process_time() - cpu) / max(len(prepared), 1)
    rows = []
    t_extract = time.perf_counter()
    for (i, item, face), fit in zip(prepared, fits, strict=True):
        tex = T.extract_texture(face.image, fit, fm, 256, matrix=face.crop_to_image)
        acc = T.synthetic_accuracy(fit, tex, face, item, fm)
        acc["yaw"] = float(head_angles_deg(item.codes.pose)[0, 0])
        acc["fit_vs_detected"] = fit.landmark_error
        acc["index"] = i
        # each stage lowers what it optimises: the landmark loss over the landmark stages, the photometric
        # loss over the photometric stage (which then trades a little landmark fit for shading)
        photo = fit.losses["photo"][np.isfinite(fit.losses["photo"])]
        lmk = fit.losses["landmark"][: len(fit.losses["landmark"]) - len(photo)]
        acc["loss_down"] = bool(lmk[-1] < lmk[0] and (len(photo) == 0 or photo[-1] < photo[0]))
        rows.append(acc)
    t_extract = (time.perf_counter() - t_extract) / max(len(prepared), 1)

    cols = [
        ("det", "detector_nme", 5, 3), ("fit", "landmark_nme", 5, 3), ("shape", "shape_rms_mm", 5, 2),
        ("mean", "mean_shape_rms_mm", 5, 2), ("raw", "raw", 5, 3), ("delit", "delit", 5, 3),
        ("gain", "delit_gain", 5, 3), ("psnr", "face_psnr", 5, 1), ("abs", "face_psnr_abs", 5, 1),
        ("noflip", "face_psnr_noflip", 6, 1), ("nodelit", "face_psnr_raw", 7, 1), ("seen", "face_seen", 5, 2),
        ("mir", "face_mirrored", 5, 2),
    ]  # fmt: skip
    header = f"{'idx':>5} {'yaw':>6} " + " ".join(f"{name:>{w}}" for name, _, w, _ in cols)
    print(f"\nSynthetic faces: seed {args.seed}, {len(indices)} picked, landmarks: {args.landmarks}, steps {cfg.steps}")
    print(header)
    print("-" * len(header))

    def line(label: str, yaw: str, sel: list[dict]) -> str:
        return f"{label:>5} {yaw:>6} " + " ".join(
            f"{np.nanmean([r[key] for r in sel]):>{w}.{nd}f}" for _, key, w, nd in cols
        )

    for r in rows if len(rows) <= 32 else []:  # per face only for small runs
        print(line(str(r["index"]), f"{r['yaw']:.1f}", [r]))
    print("-" * len(header))
    for lo, hi in YAW_BINS:
        sel = [r for r in rows if lo <= abs(r["yaw"]) < hi]
        if sel:
            print(line(f"n={len(sel)}", f"<{hi:.0f}" if lo == 0 else f"{lo:.0f}-{hi:.0f}", sel))
    print(line(f"n={len(rows)}", "all", rows))
    for i, yaw, reason in skipped:
        print(f"skipped {i} (yaw {yaw:.1f}): {reason}")
    rejected = [r for r in rows if r["fit_vs_detected"] > MAX_LANDMARK_ERROR]
    kept = [r for r in rows if r["fit_vs_detected"] <= MAX_LANDMARK_ERROR]
    if rejected:
        print(
            f"the CLI would reject {len(rejected)} fit(s) (fitted vs detected landmarks > {MAX_LANDMARK_ERROR}); "
            "the kept ones:"
        )
        print(line(f"n={len(kept)}", "kept", kept))
    better = sum(r["delit"] < r["raw"] for r in rows)
    better_gain = sum(r["face_psnr"] > r["face_psnr_raw"] for r in rows)
    decreased = sum(r["loss_down"] for r in rows)
    print(
        f"de-lit closer to the truth than the raw colours: {better}/{len(rows)} faces (absolute), "
        f"{better_gain}/{len(rows)} (gain-corrected PSNR); each stage ended below its start (landmark loss over "
        f"the landmark stages, photometric loss over the last): {decreased}/{len(rows)}"
    )
    print(
        f"time per image: detect+align {t_detect:.2f} s, fit {wall:.2f} s wall / {cpu:.2f} s CPU (batch {args.batch}, "
        f"{torch.get_num_threads()} thread(s)), extract {t_extract:.2f} s"
    )


# ---------------------------------------------------------------------------------------------------------------
# Clean extraction (issue 14): per-region PSNR, contamination by hair / background, holes — before and after
# ---------------------------------------------------------------------------------------------------------------

REGIONS = ("forehead", "cheeks", "nose", "lips", "eyes", "brows")
HAIR_THRESHOLD = 0.02  # linear albedo change that marks a texel as scalp hair (vs the same face made bald)


def hair_truth(ds: SyntheticFaces, item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the synthetic render shows scalp hair or background, from its own parameters (never seen by the fit).

    The procedural albedo paints scalp hair onto the head; the same face with ``hair_cover = 0`` differs exactly
    where hair was painted, so ``hair_uv`` (R, R) is that difference > :data:`HAIR_THRESHOLD` (brows and stubble
    are the face's own features and stay out of it). Rendering ``hair_uv`` as a texture with unit light through
    the render's own mesh and camera gives ``hair_px`` (H, W) and ``background_px`` = outside the head's mask.
    """
    import dataclasses

    from facecore.texture import SH_CONSTANTS

    p = item.albedo_params
    bald = ds.albedo(dataclasses.replace(p, hair_cover=torch.zeros_like(p.hair_cover)), item.albedo_uv.shape[-1])
    hair_uv = ((item.albedo_uv - bald).abs().amax(1, keepdim=True) > HAIR_THRESHOLD).float()
    sh = torch.zeros(1, 9, 3)
    sh[0, 0] = 1.0 / SH_CONSTANTS[0]  # irradiance 1 everywhere: the render is the texture
    with torch.no_grad():
        out = ds.renderer(item.verts_world, item.camera, hair_uv.expand(-1, 3, -1, -1), sh, None,
                          asset_texture=torch.zeros(1, 3, 8, 8))  # fmt: skip
    return hair_uv[0, 0].numpy() > 0.5, out.image[0, 0].numpy() > 0.5, item.mask[0, 0].numpy() < 0.5


def texel_pixels(fit, face, fm: FaceModel, R: int, min_facing: float) -> np.ndarray:
    """(R, R, 2) photo pixel each texel would sample (NaN where not visible): for the legacy extraction, which does
    not record it (the synthetic renders are small enough that extraction never reduces the photo)."""
    from facecore import texture as ft
    from facecore.detect import transform_points

    verts = fit.posed_vertices(fm)
    px = transform_points(fit.to_pixels(verts), face.crop_to_image)
    H, W = face.image.shape[:2]
    texel, tpx, nrm, visible, _ = ft._project_texels(fm.arrays, verts, px, W, H, R, 0.003)
    out = np.full((R * R, 2), np.nan)
    ok = visible & (nrm[:, 2] > min_facing)
    out[texel[ok]] = tpx[ok]
    return out.reshape(R, R, 2)


def clean_scores(tex: T.ExtractedTexture, truth: np.ndarray, hair_uv: np.ndarray, bad_px: np.ndarray,
                 pixel: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:  # fmt: skip
    """Per-region PSNR, contamination and holes of one extracted map vs the synthetic truth.

    PSNR (dB, linear albedo) after one least-squares gain per channel fitted on the texels seen and kept (the
    albedo/light scale is a convention, as in :func:`training.texture.albedo_errors`), per region of
    ``facecore.texture.uv_regions`` and over their union (``face``: forehead, cheeks, nose, lips, eyes, brows);
    the eye region leaves out the lid openings (every render shows the eyeball asset there, never the albedo);
    ``rest``: ``regions["rest"]`` (the skin layout outside every region, where extraction's far fill takes the
    skin's colour) where the truth shows no scalp hair.
    ``contaminated``: of the texels whose colour comes mostly from the photo (own sample or mirrored: weight ≥
    0.5) and whose true albedo is skin, the fraction whose photo share came mostly from a pixel that shows scalp
    hair or background in the render. ``holes``: texels anywhere in the R × R map that are not finite or black
    (every sRGB channel < 2/255); ``white``: texels of the eye regions whose every sRGB channel is > 0.95.
    """
    R = truth.shape[0]
    seen = tex.source == 1
    if tex.weight is None:  # legacy: seen texels count fully, mirrored ones take their mirror's pixel
        w = seen.astype(np.float64)
        w_m = (tex.source == 2).astype(np.float64)
    else:
        w = np.where(tex.valid, np.clip(tex.weight, 0, 1), 0.0)  # upper bound of the own share
        w_m = np.clip(tex.weight - w, 0, 1)
    H, W = bad_px.shape
    bad_t = np.zeros((R, R))
    ok = np.isfinite(pixel[..., 0])
    col = np.clip(np.rint(pixel[..., 0][ok]).astype(int), 0, W - 1)
    row = np.clip(np.rint(pixel[..., 1][ok]).astype(int), 0, H - 1)
    bad_t[ok] = bad_px[row, col]
    share = w * bad_t + w_m * bad_t[:, ::-1]
    written = ((w + w_m) >= 0.5) & ~hair_uv
    out = {"contaminated": float((share[written] >= 0.5 * (w + w_m)[written]).mean()) if written.any() else 0.0}
    a = tex.albedo
    gain = (a[seen] * truth[seen]).sum(0) / np.maximum((a[seen] ** 2).sum(0), 1e-12) if seen.any() else np.ones(3)
    ag = np.clip(a * gain, 0, 1)

    def psnr(mask: np.ndarray) -> float:
        mse = float(((ag[mask] - truth[mask]) ** 2).mean())
        return 10.0 * np.log10(1.0 / max(mse, 1e-12))

    face = np.zeros((R, R), bool)
    for name in REGIONS:
        face |= regions[name]
    face &= ~regions["eye_openings"]
    out["face"] = psnr(face)
    # the rest of the head's bare skin (ears, neck, the sides, a bald scalp; the truth's hair left out): mostly
    # filled, so this scores the fill's tone
    out["rest"] = psnr(regions["rest"] & ~hair_uv)
    for name in REGIONS:
        # the lid openings show the eyeball asset in every render, never the albedo: their truth is unobservable
        out[name] = psnr(regions[name] & ~regions["eye_openings"] if name == "eyes" else regions[name])
    srgb = color.linear_to_srgb(np.nan_to_num(a, nan=0.0))
    out["holes"] = int((~np.all(np.isfinite(a), -1)).sum() + (srgb.max(-1) < 2 / 255).sum())
    out["white"] = int((srgb[regions["eyes"]].min(-1) > 0.95).sum())
    return out


def truth_texture(rec: dict, fm: FaceModel, R: int, prior: np.ndarray | None = None) -> T.ExtractedTexture:
    """The clean extraction through the render's own mesh, camera and light: what a perfect fit would give."""
    from facecore import texture as ft

    lin = color.srgb_to_linear(rec["face"].image.astype(np.float64) / 255.0)
    return T.ExtractedTexture.from_clean(ft.extract(fm.arrays, rec["truth_verts"], rec["truth_px"], lin, R,
                                                    sh=rec["truth_sh"], prior=prior))  # fmt: skip


# variant: (the fit it unwraps through, legacy unwrap, landmark warp, the fill's prior: the extract stage's mean of
# true maps, the bundle's mean map as /reconstruct fills, or none)
CLEAN_VARIANTS = {
    "before": ("fit", True, False, None),
    "flat fit": ("fit_flat", False, False, "mean"),
    "flat fill": ("fit", False, False, None),
    "after": ("fit", False, False, "mean"),
    "service": ("fit", False, False, "bundle"),
    "+warp": ("fit", False, True, "mean"),
    "truth": (None, False, False, "mean"),
}
CLEAN_NOTES = {
    "before": "the legacy unwrap (every visible texel, hair and background included)",
    "flat fit": "clean extraction through a fit whose photometric term renders one skin colour to the end",
    "flat fill": "as after, what the photo does not give filled towards the skin's colour alone",
    "after": "clean extraction through the default fit (textured last stage), its fill following the mean of 256 "
    "true maps (training.texture.mean_albedo): what the extract stage writes",
    "service": "as after, the fill following the bundle's mean map (AlbedoGAN at w_avg), as /reconstruct fills",
    "+warp": "as after, sampled through facecore.texture.landmark_warp (the fit's residual to its landmarks moved off)",
    "truth": "clean extraction through the render's own mesh, camera and light: the ceiling of a perfect fit",
}


@functools.lru_cache(maxsize=1)
def mean_map(bundle_dir: str | None) -> np.ndarray:
    """The bundle's AlbedoGAN map at w_avg (linear), as /reconstruct fills towards it (service.pipeline.mean_map)."""
    import asyncio

    from bundle_metrics import BundleRunner

    from facecore.bundle import load_bundle
    from service import pipeline as P
    from service.settings import EMBEDDED_BUNDLE

    runner = BundleRunner(load_bundle(bundle_dir or EMBEDDED_BUNDLE), 1)
    return asyncio.run(P.mean_map(runner.bundle, runner.run_graph))


def clean_table(args: argparse.Namespace, fm: FaceModel) -> None:
    """Before (legacy) / after (clean) extraction on held-out synthetic faces with hair, brows, stubble and
    backgrounds: per-region PSNR, contamination, holes, per face for small runs and as means; with ``--readme``
    the means and worst faces go into the README's ``texture-extraction`` block."""
    import dataclasses
    import pickle

    config = SyntheticConfig(
        image_size=224, albedo_size=256, seed=args.seed, specular=args.specular, shadows=args.shadows
    )
    ds = SyntheticFaces(config, face_model=FaceModel(fm.arrays))
    cache = Path(args.cache) if args.cache else None
    cfg = face_fit.FitConfig(steps=args.steps)
    if cache is not None and cache.exists():
        recs = pickle.loads(cache.read_bytes())
        # (older caches: plain renders)
        made = {(r.get("seed", args.seed), r.get("specular", 0.0), r.get("shadows", False)) for r in recs}
        want = (args.seed, args.specular, args.shadows)
        if made != {want}:
            raise SystemExit(
                f"{cache} holds renders of (seed, specular, shadows) {sorted(made)}, not {want}: another --cache"
            )
    else:
        renderer = MeshRenderer.from_face_model(fm, cfg.render_size)
        recs = []
        for i in pick_indices(ds, args.count):
            item = ds.batch([i])
            image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
            given = item.landmarks_px[0].double().numpy() if args.landmarks == "truth" else None
            try:
                face = T.prepare_face(image, given, localiser=args.localiser)
            except Exception as exc:
                print(f"skipped {i}: {type(exc).__name__}: {exc}")
                continue
            hair_uv, hair_px, bg_px = hair_truth(ds, item)
            verts = item.verts_world[0].double().numpy()
            camera = (float(item.camera.scale[0]), *item.camera.translation[0].tolist())
            px = project_points(verts, camera, image.shape[1])
            recs.append({"index": i, "face": face, "yaw": float(head_angles_deg(item.codes.pose)[0, 0]),
                         "albedo": item.albedo_uv[0].permute(1, 2, 0).double().numpy(), "hair_uv": hair_uv,
                         "bad_px": hair_px | bg_px, "truth_verts": verts, "truth_px": px,
                         "truth_sh": item.sh[0].double().numpy(), "seed": args.seed,
                         "specular": args.specular, "shadows": args.shadows})  # fmt: skip
        for key, fit_cfg in (("fit", cfg), ("fit_flat", dataclasses.replace(cfg, texture="flat"))):
            for s in range(0, len(recs), args.batch):
                chunk = recs[s : s + args.batch]
                crops, lms = [r["face"].crop for r in chunk], np.stack([r["face"].landmarks for r in chunk])
                for r, fit in zip(chunk, face_fit.fit_faces(crops, lms, fm, renderer, config=fit_cfg), strict=True):
                    r[key] = fit
        if cache is not None:
            cache.write_bytes(pickle.dumps(recs))
    R = 256
    from facecore import texture as ft

    regions = {**ft.uv_regions(fm.arrays, R), "rest": ft._layout(fm.arrays, R).rest.reshape(R, R)}
    priors = {None: None, "mean": T.mean_albedo(R), "bundle": mean_map(args.bundle)}  # (outside the timings)
    rows: dict[str, list[dict]] = {label: [] for label in CLEAN_VARIANTS}
    seconds = dict.fromkeys(CLEAN_VARIANTS, 0.0)
    for r in recs:
        face = r["face"]
        if r["fit"].landmark_error > MAX_LANDMARK_ERROR:
            continue  # the CLI rejects the fit: no map is written
        for label, (key, legacy, warp, fill) in CLEAN_VARIANTS.items():
            t0 = time.perf_counter()
            if key is None:
                tex = truth_texture(r, fm, R, priors[fill])
            else:
                tex = T.extract_texture(face.image, r[key], fm, R, matrix=face.crop_to_image, legacy=legacy,
                                        landmarks=face.landmarks if warp else None, prior=priors[fill],
                                        eyes=None if legacy or warp else face.landmarks[36:48])  # fmt: skip
            # (not through the warp: it moves the fit's eyes onto the landmarks, so their miss, which bounds where
            # lids are kept, would read as none)
            seconds[label] += time.perf_counter() - t0
            pixel = texel_pixels(r[key], face, fm, R, 0.35) if legacy else tex.pixel
            sc = clean_scores(tex, r["albedo"], r["hair_uv"], r["bad_px"], pixel, regions)
            rows[label].append({"index": r["index"], "yaw": r["yaw"], "flags": ",".join(tex.flags), **sc})
    n = len(rows["after"])
    shine = f", highlights up to {args.specular:g} of the key light" if args.specular else ""
    shine += ", the key light's cast shadows" if args.shadows else ""
    print(f"\nClean extraction, {n} synthetic faces (seed {args.seed}{shine}, landmarks {args.landmarks}; "
          f"{len(recs) - n} fit(s) the CLI rejects left out): gain-corrected PSNR (dB) per region")  # fmt: skip
    keys = ("face", *REGIONS, "rest")
    header = (
        f"{'':>8} {'idx':>5} {'yaw':>6} "
        + " ".join(f"{k:>8}" for k in keys)
        + f" {'contam%':>8} {'holes':>6} {'white':>6}"
    )
    print(header)
    print("-" * len(header))
    for label in CLEAN_VARIANTS:
        for r in rows[label] if n <= 16 else []:
            print(f"{label:>8} {r['index']:>5} {r['yaw']:>6.1f} " + " ".join(f"{r[k]:>8.1f}" for k in keys)
                  + f" {100 * r['contaminated']:>8.2f} {r['holes']:>6d} {r['white']:>6d} {r['flags']}")  # fmt: skip
    print("-" * len(header))
    for label in CLEAN_VARIANTS:
        sel = rows[label]
        if not sel:
            continue
        for lo, hi in (*YAW_BINS, (0.0, 90.0)):
            part = [r for r in sel if lo <= abs(r["yaw"]) < hi]
            if not part:
                continue
            span = "all" if (lo, hi) == (0.0, 90.0) else f"{lo:.0f}-{hi:.0f}"
            print(f"{label:>8} {'n=' + str(len(part)):>5} {span:>6} "
                  + " ".join(f"{np.mean([r[k] for r in part]):>8.1f}" for k in keys)
                  + f" {100 * np.mean([r['contaminated'] for r in part]):>8.2f}"
                  f" {int(np.sum([r['holes'] for r in part])):>6d}"
                  f" {int(np.sum([r['white'] for r in part])):>6d}")  # fmt: skip
        worst = {k: min(r[k] for r in sel) for k in keys}
        print(f"{label:>8} {'min':>5} {'':>6} " + " ".join(f"{worst[k]:>8.1f}" for k in keys)
              + f" {100 * max(r['contaminated'] for r in sel):>8.2f} (max)")  # fmt: skip
    print(
        "extraction time per face: "
        + ", ".join(f"{k} {v / max(n, 1):.2f} s" for k, v in seconds.items())
        + f" (R = {R}); "
        + "; ".join(f"{k}: {v}" for k, v in CLEAN_NOTES.items())
    )
    if args.readme and n:
        from readme import table, write_block

        max_yaw = max(abs(r["yaw"]) for r in rows["after"])
        body = [
            (f"{label}", *(f"{np.mean([r[k] for r in rows[label]]):.1f}" for k in keys),
             f"{min(r['face'] for r in rows[label]):.1f}",
             f"{100 * np.mean([r['contaminated'] for r in rows[label]]):.2f}",
             str(int(np.sum([r['holes'] for r in rows[label]]))))
            for label in CLEAN_VARIANTS
        ]  # fmt: skip
        if args.shadows:  # a block of its own, beside the plain renders' (its rows are the same variants)
            text = (
                f"The same on {n} renders whose key light casts the head's own shadows (seed {args.seed}; "
                "`python benchmarks/texture_extraction.py --shadows --readme`): a nose's on the cheek, a brow "
                "ridge's in the socket, which the SH light does not hold.\n\n"
                + table(("", *keys, "worst face", "contam. %", "holes"), body)
            )
            write_block("texture-extraction-shadows", text)
            return
        text = (
            f"Texture extraction on {n} held-out synthetic renders (224 px, yaw up to ±{max_yaw:.0f}°, "
            f"seed {args.seed}, landmarks {args.landmarks}; `python benchmarks/texture_extraction.py --readme`): "
            "gain-corrected PSNR (dB) of the 256² albedo against the truth, mean per region (`rest`: the head's "
            "bare skin outside the face's regions — ears, neck, the sides, scalp without hair — mostly filled), "
            "the worst face, "
            "hair/background contamination of the texels taken from the photo, and texels left black or empty.\n\n"
            + table(("", *keys, "worst face", "contam. %", "holes"), body)
            + "\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in CLEAN_NOTES.items())
        )
        write_block("texture-extraction", text)


def render_fit(fit: face_fit.FitResult, fm: FaceModel, crop: np.ndarray, albedo_lin: np.ndarray | None) -> np.ndarray:
    """The fitted head over the crop: flat skin colour (albedo None) or the extracted albedo, under the fitted light."""
    size = crop.shape[0]
    renderer = MeshRenderer.from_face_model(fm, size)
    codes = fit.codes()
    with torch.no_grad():
        verts = fm(codes.shape, codes.expression, codes.pose)
        cam = WeakPerspectiveCamera(torch.tensor([fit.camera[0]]).float(), torch.tensor([fit.camera[1:]]).float())
        if albedo_lin is None:
            tex = torch.tensor(fit.skin_colour).float()[None, :, None, None]
        else:
            tex = torch.tensor(albedo_lin).float().permute(2, 0, 1)[None]
        out = renderer(verts, cam, tex, torch.tensor(fit.sh).float()[None])
    img = color.linear_to_srgb(out.image[0].permute(1, 2, 0).numpy())
    mask = out.mask[0, 0].numpy()[..., None]
    return color.to_uint8(img * mask + crop / 255.0 * (1 - mask))


def photos(args: argparse.Namespace, fm: FaceModel) -> None:
    from PIL import Image, ImageDraw

    folder = Path(args.photos)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in T.IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        print(f"\nReal photos: none in {folder}, skipped")
        return
    cfg = face_fit.FitConfig(steps=args.steps)
    prior = T.mean_albedo(256)  # the extract stage's fill prior
    rows, lines = [], []
    for path in files:
        image = T._load_image(path)
        try:
            face = T.prepare_face(image, localiser=args.localiser)
        except Exception as exc:
            lines.append(f"{path.name}: skipped ({type(exc).__name__}: {exc})")
            continue
        t0 = time.perf_counter()
        fit = face_fit.fit_face(face.crop, face.landmarks, fm, config=cfg)
        dt = time.perf_counter() - t0
        tex = T.extract_texture(face.image, fit, fm, 256, matrix=face.crop_to_image, prior=prior)
        before = T.extract_texture(face.image, fit, fm, 256, matrix=face.crop_to_image, legacy=True)
        yaw = float(head_angles_deg(torch.tensor(fit.pose)[None])[0, 0])
        lines.append(
            f"{path.name}: detector {face.detector}, landmark error {fit.landmark_error:.3f}, yaw {yaw:.0f}°, "
            f"seen {np.mean(tex.source == 1):.2f} / mirrored {np.mean(tex.source == 2):.2f} of the map, "
            f"skin colour (linear) {np.round(fit.skin_colour, 3).tolist()}, fit {dt:.1f} s"
            + (" — the CLI rejects this fit" if fit.landmark_error > MAX_LANDMARK_ERROR else "")
            + (f", flagged {', '.join(tex.flags)}" if tex.flags else "")
        )
        crop = np.asarray(Image.fromarray(face.crop).resize((256, 256), Image.Resampling.BILINEAR))
        flat = render_fit(fit, fm, face.crop, None)
        textured = render_fit(fit, fm, face.crop, tex.albedo)
        flat_img = Image.fromarray(flat).resize((256, 256), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(flat_img)
        k = 256 / face.crop.shape[0]
        for x, y in fit.landmarks_px(fm) * k:
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(0, 255, 0))
        for x, y in face.landmarks * k:
            draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=(255, 0, 0))
        albedo = color.to_uint8(color.linear_to_srgb(tex.albedo))
        textured = np.asarray(Image.fromarray(textured).resize((256, 256), Image.Resampling.BILINEAR))
        old_albedo = color.to_uint8(color.linear_to_srgb(before.albedo))
        rows.append(np.concatenate([crop, np.asarray(flat_img), textured, old_albedo, albedo], 1))
    print("\nReal photos (input | fit: flat skin colour under the fitted light, its landmarks red, fitted green | "
          "re-rendered with the clean albedo | UV albedo before (legacy extraction) | after (clean)):")  # fmt: skip
    for ln in lines:
        print("  " + ln)
    if args.sheet and rows:
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        sheet = Image.fromarray(np.concatenate(rows, 0))
        if Path(args.sheet).suffix.lower() in (".jpg", ".jpeg"):  # small: half size, JPEG
            sheet = sheet.resize((sheet.width // 2, sheet.height // 2), Image.Resampling.LANCZOS)
            sheet.save(args.sheet, quality=85, optimize=True)
        else:
            sheet.save(args.sheet)
        print(f"contact sheet: {args.sheet}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--steps", type=int, default=face_fit.FitConfig().steps)
    parser.add_argument(
        "--specular",
        type=float,
        default=0.0,
        help="the renders' highlights (SyntheticConfig.specular; 0: Lambertian skin, the training's)",
    )
    parser.add_argument(
        "--shadows", action="store_true", help="the renders' key light casts shadows (SyntheticConfig.shadows)"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--landmarks",
        choices=(*T.LANDMARK_SOURCES, "truth"),
        default="localiser",
        help="the fit's landmarks: as the extract stage's `landmarks`, or the renders' own",
    )
    parser.add_argument(
        "--bundle",
        default=None,
        help="the bundle whose localiser runs and whose mean map the service row's fill follows (default: embedded)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--sheet", default="", help="write the real-photo contact sheet (PNG) here")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--no-clean", action="store_true", help="skip the before/after clean-extraction table")
    parser.add_argument("--cache", default="", help="pickle of the clean table's renders + fits (reused if present)")
    parser.add_argument("--no-photos", action="store_true")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="rewrite the README's texture-extraction block (with --shadows: texture-extraction-shadows)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.localiser = T.landmark_localiser("dlib" if args.landmarks == "truth" else args.landmarks, args.bundle)
    fm = FaceModel.from_file()
    if not args.no_synthetic:
        synthetic_table(args, fm)
    if not args.no_clean:
        clean_table(args, fm)
    if not args.no_photos:
        photos(args, fm)


if __name__ == "__main__":
    main()
