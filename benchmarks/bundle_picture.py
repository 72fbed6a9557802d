"""The README picture of a bundle: generated heads from 3 angles, and /reconstruct on real photos.
    python benchmarks/bundle_picture.py [--bundle service/bundled/default] [--out docs/default_bundle.jpg]
        [--seeds 0 1 2 3] [--photos tests/fixtures/photos] [--pick 001 006 013] [--size 192]

    python benchmarks/bundle_picture.py --seeds $(seq 0 15) --pick --size 128 --out docs/albedogan_heads.jpg
        (the 16 maps of docs/albedogan_samples.png on their heads)

    python benchmarks/bundle_picture.py --seeds --pick 001 006 013 028 --albedo generated \
        --out docs/reconstruct_generated.jpg  (/reconstruct with AlbedoGAN's map at the photo's latent)

Top rows: /generate for each seed (the bundle's AlbedoGAN albedo on the identity /generate pairs with it),
rendered by ``models.render`` at yaw 0°, 35° and 70° under one fixed light, then the albedo map itself.
Bottom rows: for each picked photo, /reconstruct's aligned input crop | the reconstruction rendered over it
(albedo × the predicted SH light) | the reconstruction alone from 35° | the albedo map.
Everything goes through the service's own pipeline functions (onnxruntime graphs).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import math
from pathlib import Path

import numpy as np
import torch
from bundle_metrics import PHOTOS, BundleRunner, codes_arrays, render, render_over, served_crop
from PIL import Image, ImageDraw

from facecore import color
from facecore import geometry as geo
from facecore.bundle import Bundle, load_bundle
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

YAWS_DEG = (0.0, 35.0, 70.0)


@functools.lru_cache(maxsize=1)
def display_light(direction=(0.35, 0.45, 1.0), ambient: float = 0.55, strength: float = 0.6) -> np.ndarray:
    """(9, 3) SH coefficients approximating ``ambient + strength · max(0, n·d)`` (fitted, any SH ordering)."""
    from models.render.shading import sh_basis

    n = torch.nn.functional.normalize(torch.randn(4096, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    d = torch.nn.functional.normalize(torch.tensor(direction, dtype=torch.float32), dim=0)
    target = ambient + strength * (n @ d).clamp_min(0.0)
    coeff = torch.linalg.lstsq(sh_basis(n), target[:, None]).solution  # (9, 1)
    return np.repeat(coeff.numpy(), 3, axis=1)


def render_head(
    bundle: Bundle, shape: np.ndarray, albedo_srgb: np.ndarray, yaw_deg: float, size: int, expression=None, pose=None
) -> np.ndarray:
    """A head rendered at ``yaw_deg`` on grey, framed like the service's face crop (zoomed out)."""
    from models.encoder import alignment_camera

    model = bundle.face_model
    pose = np.zeros((model.n_joints, 3)) if pose is None else pose.copy()
    pose[0] = [0.0, math.radians(yaw_deg), 0.0]
    expression = np.zeros(model.n_expr) if expression is None else expression
    verts = geo.decode_vertices(model, shape[None], expression[None], pose[None])[0]
    grey = np.full((size, size, 3), float(color.linear_to_srgb(np.array(0.18))))  # 18 % linear grey, sRGB-encoded
    return render(bundle, verts, np.array(alignment_camera(model, 1.6)), albedo_srgb, display_light(), grey, shape)


def generate(runner: BundleRunner, seed: int) -> tuple[np.ndarray, np.ndarray]:
    bundle = runner.bundle
    req = P.MeshRequest(
        seed, None, None, 0.7, np.zeros(bundle.face_model.n_expr), None, bundle.manifest.resolutions.albedo, 64,
        ("albedo",), False,
    )  # fmt: skip
    result = asyncio.run(P.generate(bundle, runner.run_graph, req, P.Timer()))
    albedo = np.asarray(Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB"), np.float64) / 255.0
    return np.array(result.meta["codes"]["shape"]), albedo


def tile(img: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(img).resize((size, size), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--out", type=Path, default=Path("docs/default_bundle.jpg"))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3], help="/generate seeds (none: only photos)")
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--pick", nargs="*", default=["001", "006", "013"], help="photos to reconstruct (none: only seeds)")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--albedo", choices=("photo", "generated"), default="photo", help="/reconstruct's albedo")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    runner = BundleRunner(bundle, 0)
    S = args.size
    rows: list[tuple[str, list[Image.Image]]] = []
    for seed in args.seeds:
        shape, albedo = generate(runner, seed)
        tiles = [tile(render_head(bundle, shape, albedo, yaw, 2 * S), S) for yaw in YAWS_DEG]
        tiles.append(tile((albedo * 255).astype(np.uint8), S))
        rows.append((f"/generate seed {seed}: yaw 0, 35, 70 | albedo", tiles))
    for key in args.pick:
        path = next(iter(sorted(args.photos.glob(f"*{key}*.jpg"))), None)
        if path is None:
            raise SystemExit(f"no photo matching {key!r} in {args.photos}")
        image = P.decode_photo(path.read_bytes(), 50_000_000)
        meta = runner.reconstruct(image, args.albedo)
        crop = served_crop(image, meta, 2 * S)
        codes = codes_arrays(meta, bundle.face_model)
        local = np.zeros_like(codes["pose"])
        local[1:] = codes["pose"][1:]  # the face's own articulation, not the head pose of the photo
        alone = render_head(bundle, codes["shape"], meta["albedo_srgb"], 35.0, 2 * S,
                            np.clip(codes["expression"], 0, 1), local)  # fmt: skip
        tiles = [tile(crop, S), tile(render_over(bundle, meta, crop), S), tile(alone, S),
                 tile((meta["albedo_srgb"] * 255).astype(np.uint8), S)]  # fmt: skip
        rows.append((f"/reconstruct {path.name}: input | render | 35 deg | albedo={args.albedo}", tiles))
    label_h = 16
    sheet = Image.new("RGB", (4 * S, len(rows) * (S + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        y = r * (S + label_h)
        draw.text((4, y + 2), label, fill=(0, 0, 0))
        for c, t in enumerate(tiles):
            sheet.paste(t, (c * S, y + label_h))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]}, {args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
