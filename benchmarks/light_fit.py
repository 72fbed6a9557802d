"""The photo albedo de-lit with the encoder's light vs the light re-fitted to the photo's skin
(``facecore.texture.fit_light``).

    python benchmarks/light_fit.py [--bundle service/bundled/default] [--count 30] [--seed 4242] [--photos DIR]

Synthetic: ``--count`` renders of a stream no training used (224 px, ``training.data.synthetic``; the training drew
from 0 and 7, its evaluations from 1000003, 20261125, 5550001 and 777) go through /reconstruct as served
(``service.pipeline.reconstruct``, onnxruntime), once de-lit with the encoder's light (``pipeline.RELIGHT`` off) and
once with the re-fitted one; printed: the albedo's error on the texels the render saw (linear; MAE, and RMSE after
a per-channel gain, which forgives the albedo-vs-light scale no photo can tell), per way, and on how many renders
the re-fit was better.

Photos (no ground truth): the reconstruction rendered over the photo with the light it was de-lit with, inside the
face (the jaw and brow contour shrunk by 20 %, eyes and mouth left out): the mean luminance difference render −
photo (sRGB levels). Where the albedo keeps the photo's pixels the difference is 0 by construction; it is not 0
where the extraction rejected skin as not explained by the light (and filled it from the mirror side or smoothly),
which a wrong light makes happen on its dark side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bundle_metrics import (
    PHOTOS,
    BundleRunner,
    albedo_errors,
    codes_arrays,
    face_model_path,
    render,
    render_upload,
    served_crop,
    torch_face_model,
)
from PIL import Image, ImageDraw

from facecore import geometry as geo
from facecore import texture
from facecore.bundle import load_bundle
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

WAYS = ("encoder light", "re-fitted light")


def reconstruct(runner: BundleRunner, image: np.ndarray, relight: bool) -> dict:
    P.RELIGHT = relight
    try:
        return runner.reconstruct(image)
    finally:
        P.RELIGHT = True


def synthetic(runner: BundleRunner, count: int, seed: int) -> np.ndarray:
    """(N, 2 ways, 2): (MAE, gain-corrected RMSE) of the served albedo on the seen texels."""
    from models.face.model import FaceModel
    from training.data.images import resize_uv
    from training.data.synthetic import SyntheticConfig, SyntheticFaces
    from training.evaluation import SeenTexels

    fm = torch_face_model(face_model_path(runner.bundle))
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=256, seed=seed), face_model=FaceModel(fm.arrays))
    res = P.unwrap_resolution(runner.texture_size, runner.bundle.manifest.resolutions.albedo)
    seen_texels = SeenTexels(fm, res)
    rows = []
    for i in range(count):
        item = faces.batch([i])
        photo = render_upload(item)
        seen = seen_texels(item.camera, item.verts_world)[0, 0].numpy() > 0.5
        truth = resize_uv(item.albedo_uv, res)[0].permute(1, 2, 0).numpy()[seen]
        row = []
        try:
            for relight in (False, True):
                meta = reconstruct(runner, photo, relight)
                row.append(albedo_errors(meta["albedo_srgb"], truth, seen))
        except P.PhotoError:
            continue
        rows.append(row)
    return np.array(rows)


def inner_face(model: geo.FaceModelArrays, verts: np.ndarray, camera: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: the face inside its jaw and brow contour shrunk by 20 %, without eyes and mouth."""
    lmk = geo.project_points(geo.landmarks_3d(model, verts[None])[0], camera, size)
    contour = lmk[list(range(1, 16)) + [26, 24, 19, 17]]
    centre = contour.mean(0)
    mask = Image.new("L", (size, size))
    draw = ImageDraw.Draw(mask)
    draw.polygon([tuple(p) for p in centre + 0.8 * (contour - centre)], fill=1)
    for part in (range(36, 42), range(42, 48), range(48, 60)):
        q = lmk[list(part)]
        draw.polygon([tuple(p) for p in q.mean(0) + 1.6 * (q - q.mean(0))], fill=0)
    return np.asarray(mask, bool)


def photo_bias(runner: BundleRunner, path: Path, relight: bool, size: int = 384) -> float:
    image = P.decode_photo(path.read_bytes(), 50_000_000)
    meta = reconstruct(runner, image, relight)
    crop = served_crop(image, meta, size)
    model = runner.bundle.face_model
    codes = codes_arrays(meta, model)
    expression = np.clip(codes["expression"], 0.0, 1.0)
    verts = geo.decode_vertices(model, codes["shape"][None], expression[None], codes["pose"][None])[0]
    drawn = render(runner.bundle, verts, codes["camera"], meta["albedo_srgb"], codes["light"], crop / 255.0)
    mask = inner_face(model, verts, codes["camera"], size)
    return float(((drawn.astype(float) - crop.astype(float)) @ texture.LUMA)[mask].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner = BundleRunner(load_bundle(args.bundle), 0)
    r = synthetic(runner, args.count, args.seed)
    print(f"{len(r)} of {args.count} held-out renders (stream {args.seed}) reconstructed; albedo error on seen texels:")
    for w, way in enumerate(WAYS):
        print(f"  {way:16s} MAE {r[:, w, 0].mean():.4f}   gain-corrected RMSE {r[:, w, 1].mean():.4f}")
    print(f"  re-fit better on {(r[:, 1, 1] < r[:, 0, 1]).sum()} of {len(r)} (gain-corrected RMSE)")
    photos = sorted(args.photos.glob("*.jpg"))
    if photos:
        print("photos: render − photo inside the face, mean luminance (sRGB levels), encoder light → re-fitted:")
        for path in photos:
            print(f"  {path.name:26s} {photo_bias(runner, path, False):+6.1f} → {photo_bias(runner, path, True):+6.1f}")


if __name__ == "__main__":
    main()
