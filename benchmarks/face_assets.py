"""Eyes, mouth and neck before and after issue 15: render checks on the embedded bundle, and the README picture.
    python benchmarks/face_assets.py [--bundle service/bundled/default] [--out docs/face_assets.jpg] [--json x.json]

For /generate seeds 0-3 (frontal and 20° yaw) and /reconstruct on the fixture photos (the face's own
articulation, frontal), rendered by ``models.render`` (``models.render.checks.render_face``):
* eyes: the dark pupil blob in each visible eye opening and its contrast (iris/sclera ring luma − blob luma);
* mouth: lips luma − open cavity luma with jawOpen 0.5 added (rendered without the teeth, which are lighter by design);
* neck: background gaps and off-colour pixels in the lowest 5 % of the silhouette.
"Before" renders the face model as stored (neck band labelled mouth, eyes and mouth sampling the albedo map,
no neck fill); "after" is what the service, renderer and exports do now (``facecore.assets``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

import numpy as np
from bundle_metrics import PHOTOS, BundleRunner
from PIL import Image, ImageDraw
from readme import table, write_block

from facecore import assets as fa
from facecore import geometry as geo
from facecore.bundle import load_bundle
from models.face.model import FaceModel
from models.render.checks import LEFT_EYE, RIGHT_EYE, bottom_gaps, bottom_notches, eye_check, mouth_margin, render_face
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE


def stored_layout(path: Path) -> geo.FaceModelArrays:
    """The face model exactly as the npz stores it (without ``reattach_neck_band``): the 'before'."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    kwargs = {"metadata": json.loads(str(data.pop("metadata")))}
    for name, arr in data.items():
        if arr.dtype.kind in "US":
            kwargs[name] = tuple(str(s) for s in arr.tolist())
        else:
            kwargs[name] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)
    return geo.FaceModelArrays(**kwargs)


def measure(image, mask, lm) -> dict:
    eyes = [eye_check(image, lm[list(e)]) for e in (LEFT_EYE, RIGHT_EYE)]
    visible = [e for e in eyes if e.pixels >= 12]
    gaps, _ = bottom_gaps(mask)
    notches, band = bottom_notches(image, mask)
    return {
        "pupil_contrast": [round(e.contrast, 3) for e in visible],
        "pupil_found": sum(e.contrast >= 0.15 and e.sides >= 3 for e in visible),
        "eyes_visible": len(visible),
        "bottom_gaps": gaps,
        "bottom_offcolour_fraction": round(notches / max(band, 1), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--out", type=Path, default=Path("docs/face_assets.jpg"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--readme", action="store_true", help="rewrite the README's face_assets table with the numbers")
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    runner = BundleRunner(bundle, 0)
    model = bundle.face_model
    before_model = stored_layout(args.bundle / bundle.manifest.face_model.file)
    fm_after, fm_before = FaceModel(model), FaceModel(before_model)
    S = args.size
    rows: list[tuple[str, Image.Image, Image.Image]] = []
    report: dict = {"generate": {}, "reconstruct": {}}

    def both(label, shape, expression, pose, albedo_after, albedo_before, key, crop=True):
        out = {}
        tiles = []
        variants = (("before", fm_before, albedo_before, False), ("after", fm_after, albedo_after, True))
        for name, fm, albedo, assets in variants:
            verts = geo.decode_vertices(fm.arrays, shape[None], expression[None], pose[None])[0]
            iris = fa.iris_colour(model, albedo_after)[0] if assets else None
            image, mask, lm = render_face(fm, verts, albedo, S, assets=assets, iris_srgb=iris)
            out[name] = measure(image, mask, lm)
            jaw = expression.copy()
            jaw[model.expr_names.index("jawOpen")] = max(jaw[model.expr_names.index("jawOpen")], 0.5)
            vj = geo.decode_vertices(fm.arrays, shape[None], jaw[None], pose[None])[0]
            open_img, _, lmj = render_face(fm, vj, albedo, S, assets=assets, iris_srgb=iris)
            # the margin is the cavity's (teeth off): the teeth are lighter than the lips by design
            cavity, _, lmc = render_face(fm, vj, albedo, S, assets=assets, iris_srgb=iris, teeth=False)
            lips, interior, margin = mouth_margin(cavity, lmc)
            out[name]["mouth_margin_jawOpen"] = round(margin, 3)
            tiles.append(Image.fromarray(np.concatenate([image, open_img], 1)))
        report[key][label] = out
        rows.append((label, tiles[0], tiles[1]))

    n_expr = model.n_expr
    for seed in (0, 1, 2, 3):
        req = P.MeshRequest(seed, None, None, 0.7, np.zeros(n_expr), None, 256, 64, ("albedo",), False)
        result = asyncio.run(P.generate(bundle, runner.run_graph, req, P.Timer()))
        albedo = np.asarray(Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB"), np.float64) / 255.0
        raw = asyncio.run(runner.run_graph("albedo", {"ws": _ws(bundle, runner, seed)}))["albedo"][0]
        albedo_before = P.generator_image(raw)  # no neck fill
        shape = np.array(result.meta["codes"]["shape"])
        rest = np.zeros((model.n_joints, 3))
        both(f"/generate seed {seed}", shape, np.zeros(n_expr), rest, albedo, albedo_before, "generate")
    for path in sorted(PHOTOS.glob("*.jpg")):
        image = P.decode_photo(path.read_bytes(), 50_000_000)
        meta = runner.reconstruct(image)
        c = meta["codes"]
        expression = np.clip(np.array([c["expression"].get(n, 0.0) for n in model.expr_names]), 0, 1)
        pose = np.array([c["pose"][n] for n in model.joint_names])
        pose[0] = 0.0
        albedo = meta["albedo_srgb"]
        both(f"/reconstruct {path.name}", np.array(c["shape"]), expression, pose, albedo, albedo, "reconstruct")
    # summary
    summary = {}
    for key in ("generate", "reconstruct"):
        for name in ("before", "after"):
            vals = [r[name] for r in report[key].values()]
            found, visible = sum(v["pupil_found"] for v in vals), sum(v["eyes_visible"] for v in vals)
            summary[f"{key}_{name}"] = {
                "pupils_found / eyes_visible": f"{found}/{visible}",
                "pupil_contrast_min": min((c for v in vals for c in v["pupil_contrast"]), default=None),
                "pupil_contrast_median": float(np.median([c for v in vals for c in v["pupil_contrast"]])),
                "mouth_margin_min": min(v["mouth_margin_jawOpen"] for v in vals),
                "bottom_gaps_max": max(v["bottom_gaps"] for v in vals),
                "bottom_offcolour_max": max(v["bottom_offcolour_fraction"] for v in vals),
            }  # fmt: skip
    report["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.readme:
        write_block("face_assets", readme_table(summary))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    # picture: before | after, each frontal at rest and with the jaw open; a few rows
    pick = [r for r in rows if r[0].endswith(("seed 0", "seed 3", "001.jpg", "013.jpg"))]
    T = S // 2
    label_h = 16
    sheet = Image.new("RGB", (8 * T // 2 * 2, len(pick) * (T + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, before, after) in enumerate(pick):
        y = i * (T + label_h)
        draw.text((4, y + 2), f"{label}: before (rest | jawOpen) | after (rest | jawOpen)", fill=(0, 0, 0))
        sheet.paste(before.resize((2 * T, T), Image.LANCZOS), (0, y + label_h))
        sheet.paste(after.resize((2 * T, T), Image.LANCZOS), (2 * T, y + label_h))
    sheet = sheet.crop((0, 0, 4 * T, sheet.size[1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]}, {args.out.stat().st_size / 1e3:.0f} kB)")


def readme_table(summary: dict) -> str:
    """The README's before/after table of :func:`main`'s summary."""
    rows = (
        ("eyes with a dark pupil blob (contrast ≥ 0.15 luma, lighter on ≥ 3 sides)",
         lambda v: v["pupils_found / eyes_visible"]),
        ("pupil contrast, min / median (luma)",
         lambda v: f"{v['pupil_contrast_min']:.2f} / {v['pupil_contrast_median']:.2f}"),
        ("lips − mouth cavity with jawOpen 0.5, min (luma; teeth off: they are lighter by design)",
         lambda v: f"{v['mouth_margin_min']:.2f}"),
        ("lowest 5 % of the silhouette: gaps / off-colour pixels, max",
         lambda v: f"{v['bottom_gaps_max']} / {100 * v['bottom_offcolour_max']:.0f} %"),
    )  # fmt: skip
    cells = [
        (label, *(" · ".join(fmt(summary[f"{k}_{when}"]) for k in ("generate", "reconstruct"))
                  for when in ("before", "after")))
        for label, fmt in rows
    ]  # fmt: skip
    return table(
        ("/generate seeds 0–3 (8 eyes) · /reconstruct on 6 fixture photos (12 eyes)", "before", "after"), cells
    )


def _ws(bundle, runner, seed: int) -> np.ndarray:
    m = bundle.manifest
    z = P.latent_from_seed(seed, m.codes.z_dim)
    ws = asyncio.run(runner.run_graph("mapping", {"z": z[None]}))["ws"]
    return (bundle.w_avg + 0.7 * (ws - bundle.w_avg)).astype(np.float32)


if __name__ == "__main__":
    main()
