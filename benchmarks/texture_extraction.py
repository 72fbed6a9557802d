"""Texture extraction accuracy on synthetic renders with ground truth, speed, and a contact sheet of real photos.

    python benchmarks/texture_extraction.py [--count 16] [--seed 2024] [--landmarks detect|truth]
        [--sheet contact.png] [--photos ../shared/fixtures/photos] [--threads 1] [--batch 4]

The synthetic faces are rendered by ``training.data.synthetic`` with a seed disjoint from the one the fit's
defaults were chosen on (1000), picked to cover |yaw| < 20°, 20–40° and > 40° equally. The fit sees only the
image and dlib's 68 landmarks (``--landmarks truth`` gives it the renders' own landmarks instead, as an upper
bound); the ground truth (landmarks, identity, albedo) is used for scoring only.

Columns: ``det``/``fit`` landmark error (mean distance / inter-ocular distance) of dlib's points and of the fitted
model; ``shape``/``mean``: per-vertex RMS (mm) of the fitted / the prior-mean neutral identity vs the truth over
the facial-skin vertices after the best rigid alignment (rotation + translation, no scale); albedo mean abs
errors (linear [0, 1]) on the texels seen in the photo: ``raw`` (seen colours), ``delit`` (de-lit albedo),
``gain`` (de-lit after one least-squares gain per channel: the albedo/light scale is a convention); PSNR on the
fixed facial-skin texels: ``psnr`` (gain-corrected), ``abs`` (no gain), ``noflip`` (mirror fill replaced by the
mean), ``nodelit`` (seen colours instead of albedo); ``seen``/``mir``: fractions of those texels seen / mirrored.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from facecore import color
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
    config = SyntheticConfig(image_size=224, albedo_size=256, seed=args.seed)
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
            prepared.append((i, item, T.prepare_face(image, given)))
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
    rows, lines = [], []
    for path in files:
        image = T._load_image(path)
        try:
            face = T.prepare_face(image)
        except Exception as exc:
            lines.append(f"{path.name}: skipped ({type(exc).__name__}: {exc})")
            continue
        t0 = time.perf_counter()
        fit = face_fit.fit_face(face.crop, face.landmarks, fm, config=cfg)
        dt = time.perf_counter() - t0
        tex = T.extract_texture(face.image, fit, fm, 256, matrix=face.crop_to_image)
        yaw = float(head_angles_deg(torch.tensor(fit.pose)[None])[0, 0])
        lines.append(
            f"{path.name}: detector {face.detector}, landmark error {fit.landmark_error:.3f}, yaw {yaw:.0f}°, "
            f"seen {np.mean(tex.source == 1):.2f} / mirrored {np.mean(tex.source == 2):.2f} of the map, "
            f"skin colour (linear) {np.round(fit.skin_colour, 3).tolist()}, fit {dt:.1f} s"
            + (" — the CLI rejects this fit" if fit.landmark_error > MAX_LANDMARK_ERROR else "")
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
        rows.append(np.concatenate([crop, np.asarray(flat_img), textured, albedo], 1))
    print("\nReal photos (input | fit: flat skin colour under the fitted light, dlib points red, fitted green | "
          "re-rendered with the extracted albedo | UV albedo):")  # fmt: skip
    for ln in lines:
        print("  " + ln)
    if args.sheet and rows:
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, 0)).save(args.sheet)
        print(f"contact sheet: {args.sheet}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--steps", type=int, default=face_fit.FitConfig().steps)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--landmarks", choices=("detect", "truth"), default="detect")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--sheet", default="", help="write the real-photo contact sheet (PNG) here")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--no-photos", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fm = FaceModel.from_file()
    if not args.no_synthetic:
        synthetic_table(args, fm)
    if not args.no_photos:
        photos(args, fm)


if __name__ == "__main__":
    main()
