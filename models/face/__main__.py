"""Export random heads of the default face model: ``python -m models.face --seed 0 --out out/``.

Writes, per head, an engine-ready GLB (with the 51 ARKit expression blendshapes as morph targets), an OBJ
+ MTL + texture zip, and a preview PNG (front and three-quarter views). Until AlbedoGAN lands the texture
is a flat skin tone: this is the geometry of the face model, not yet the generative service.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from facecore import formats
from facecore.geometry import FaceModelArrays, coarse_mesh, decode_vertices
from models.face.model import DEFAULT_FACE_MODEL
from models.face.preview import image_grid, shaded_image

logger = logging.getLogger("models.face")


def export_head(model: FaceModelArrays, seed: int, out: Path, expression: dict[str, float]) -> list[Path]:
    rng = np.random.default_rng(seed)
    shape = model.sample_shape(rng)
    verts = decode_vertices(model, shape, model.expression_vector(expression)[None])[0]
    mesh = coarse_mesh(model, verts)
    albedo = formats.albedo_png(np.broadcast_to(np.array([0.78, 0.6, 0.5]), (64, 64, 3)).copy())
    morphs = {name: model.expr_basis[i][model.uv_vertex] for i, name in enumerate(model.expr_names)}
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"head_{seed:04d}.glb", out / f"head_{seed:04d}_obj.zip", out / f"head_{seed:04d}.png"]
    paths[0].write_bytes(formats.glb_bytes(mesh, albedo, morph_targets=morphs, name=f"head_{seed}"))
    paths[1].write_bytes(formats.write_obj_zip(mesh, {"albedo": albedo}, name=f"head_{seed:04d}"))
    views = [shaded_image(verts, model.faces, 384, yaw) for yaw in (0.0, 35.0)]
    Image.fromarray(image_grid(views, 2)).save(paths[2])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--model", type=Path, default=DEFAULT_FACE_MODEL, help="face-model npz")
    parser.add_argument("--expression", nargs="*", default=[], metavar="NAME=WEIGHT", help="e.g. jawOpen=0.5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = FaceModelArrays.load(args.model)
        expression = {}
        for item in args.expression:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expression: expected NAME=WEIGHT, got {item!r}")
            expression[name] = float(value)
        for seed in args.seed:
            for path in export_head(model, seed, args.out, expression):
                logger.info("wrote %s", path)
    except (OSError, ValueError) as exc:
        logger.error("error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
