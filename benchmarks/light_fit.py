"""The photo albedo's light handling, way by way: the encoder's light, re-fitted to the photo's skin
(``facecore.texture.fit_light``), its directions let differ in colour, the two sides' smooth difference taken as the
light's, and the mirror fill matched to the taken side at its border (``facecore.texture.extract``).

    python benchmarks/light_fit.py [--bundle service/bundled/default] [--count 30] [--seed 4242] [--photos DIR]
        [--key-tint 0.12]

Synthetic: ``--count`` renders of a stream no training used (224 px, ``training.data.synthetic``; the training drew
from 0 and 7, its evaluations from 1000003, 20261125, 5550001 and 777) go through /reconstruct as served
(``service.pipeline.reconstruct``, onnxruntime), once per way (each adds one step to the one before; the last is what
the service does); printed per way: the albedo's error against the truth (linear; MAE on the texels the render saw,
and RMSE after one gain per channel fitted over the face's regions — the albedo-vs-light scale no photo tells — on
the seen texels and on the face's texels the render did not see, which the mirror and the fill make), and on how
many renders it beat the way before (RMSE over the whole face).

Photos (no ground truth): the reconstruction rendered over the photo with the light it was de-lit with, inside the
face (the jaw and brow contour shrunk by 20 %, eyes and mouth left out): the mean luminance difference render −
photo (sRGB levels), for the first and the last way. With the encoder's light the difference is 0 where the albedo
keeps the photo's pixels, and not where the extraction rejected skin as not explained by the light (and filled it
from the mirror side or smoothly), which a wrong light makes happen on its dark side; the last way also evens out
the face's two sides in the albedo, which the smooth light it is rendered with does not put back.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from bundle_metrics import (
    PHOTOS,
    BundleRunner,
    codes_arrays,
    face_model_path,
    render,
    render_upload,
    served_crop,
    torch_face_model,
)
from PIL import Image, ImageDraw

from facecore import color, texture
from facecore import geometry as geo
from facecore.bundle import load_bundle
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE

#: way → the settings it runs with (service.pipeline.RELIGHT; facecore.texture's LIGHT_COLOUR_PRIOR,
#: SYMMETRY_REACH, SEAM_REACH); each adds one step to the way before, the last is the service's own
WAYS = {
    "encoder light": (False, None, 0.0, 0.0),
    "re-fitted light": (True, None, 0.0, 0.0),
    "+ light colour": (True, texture.LIGHT_COLOUR_PRIOR, 0.0, 0.0),
    "+ sides' light": (True, texture.LIGHT_COLOUR_PRIOR, texture.SYMMETRY_REACH, 0.0),
    "+ seamless mirror": (True, texture.LIGHT_COLOUR_PRIOR, texture.SYMMETRY_REACH, texture.SEAM_REACH),
}


@contextmanager
def way(name: str):
    """The service runs as ``WAYS[name]`` says inside the block."""
    names = ("LIGHT_COLOUR_PRIOR", "SYMMETRY_REACH", "SEAM_REACH")
    before = P.RELIGHT, *(getattr(texture, n) for n in names)
    P.RELIGHT, *values = WAYS[name]
    for n, v in zip(names, values, strict=True):
        setattr(texture, n, v)
    try:
        yield
    finally:
        P.RELIGHT, *values = before
        for n, v in zip(names, values, strict=True):
            setattr(texture, n, v)


def reconstruct(runner: BundleRunner, image: np.ndarray, name: str) -> dict:
    with way(name):
        return runner.reconstruct(image)


def face_errors(albedo_srgb: np.ndarray, truth: np.ndarray, seen: np.ndarray, face: np.ndarray) -> list[float]:
    """MAE on the ``seen`` texels; RMSE after one gain per channel fitted over ``face`` (all (R, R) masks; ``truth``
    (R, R, 3) linear) on the seen face texels, on the unseen ones, and on all of them."""
    res = seen.shape[0]
    served = Image.fromarray((albedo_srgb * 255 + 0.5).astype(np.uint8)).resize((res, res), Image.BICUBIC)
    got = color.srgb_to_linear(np.asarray(served) / 255.0)
    gain = (got[face] * truth[face]).sum(0) / np.maximum((got[face] ** 2).sum(0), 1e-12)
    sq = ((gain * got - truth) ** 2).mean(-1)
    return [
        float(np.abs(got[seen] - truth[seen]).mean()),
        *(float(np.sqrt(sq[m].mean())) if m.any() else np.nan for m in (face & seen, face & ~seen, face)),
    ]


def synthetic(runner: BundleRunner, count: int, seed: int, key_tint: float = 0.12) -> np.ndarray:
    """(N, ways, 4): :func:`face_errors` of the served albedo, per way."""
    from models.face.model import FaceModel
    from training.data.images import resize_uv
    from training.data.synthetic import SyntheticConfig, SyntheticFaces
    from training.evaluation import SeenTexels

    fm = torch_face_model(face_model_path(runner.bundle))
    config = SyntheticConfig(image_size=224, albedo_size=256, seed=seed, key_tint=key_tint)
    faces = SyntheticFaces(config, face_model=FaceModel(fm.arrays))
    res = P.unwrap_resolution(runner.texture_size, runner.bundle.manifest.resolutions.albedo)
    seen_texels = SeenTexels(fm, res)
    regions = texture.uv_regions(runner.bundle.face_model, res)
    face = np.any([regions[k] for k in ("forehead", "cheeks", "nose", "lips", "eyes")], 0) & ~regions["eye_openings"]
    rows = []
    for i in range(count):
        item = faces.batch([i])
        photo = render_upload(item)
        seen = seen_texels(item.camera, item.verts_world)[0, 0].numpy() > 0.5
        truth = resize_uv(item.albedo_uv, res)[0].permute(1, 2, 0).numpy()
        try:
            rows.append([face_errors(reconstruct(runner, photo, w)["albedo_srgb"], truth, seen, face) for w in WAYS])
        except P.PhotoError:
            continue
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


def photo_bias(runner: BundleRunner, path: Path, name: str, size: int = 384) -> float:
    image = P.decode_photo(path.read_bytes(), 50_000_000)
    meta = reconstruct(runner, image, name)
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
    parser.add_argument(
        "--key-tint",
        type=float,
        default=0.12,
        help="the renders' key light tint range (training: 0.12; a sun "
        "beside a blue sky: ~0.35; training.data.synthetic.SyntheticConfig.key_tint)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner = BundleRunner(load_bundle(args.bundle), 0)
    r = synthetic(runner, args.count, args.seed, args.key_tint)
    print(f"{len(r)} of {args.count} held-out renders (stream {args.seed}, key tint ±{args.key_tint}) reconstructed; "
          "albedo error (linear):")  # fmt: skip
    print(f"  {'':20s} {'MAE seen':>9s} {'RMSE seen':>10s} {'unseen':>8s} {'face':>8s}   better than the way before")
    for w, name in enumerate(WAYS):
        better = "" if w == 0 else f"{(r[:, w, 3] < r[:, w - 1, 3]).sum()} of {len(r)}"
        print(f"  {name:20s} {r[:, w, 0].mean():9.4f} {r[:, w, 1].mean():10.4f} {np.nanmean(r[:, w, 2]):8.4f} "
              f"{r[:, w, 3].mean():8.4f}   {better}")  # fmt: skip
    photos = sorted(args.photos.glob("*.jpg"))
    if photos:
        first, last = list(WAYS)[0], list(WAYS)[-1]
        print(f"photos: render − photo inside the face, mean luminance (sRGB levels), {first} → {last}:")
        for path in photos:
            print(f"  {path.name:26s} {photo_bias(runner, path, first):+6.1f} → {photo_bias(runner, path, last):+6.1f}")


if __name__ == "__main__":
    main()
