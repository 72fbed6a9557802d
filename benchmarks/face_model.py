"""Face-model numbers: sizes, decode and detailed-mesh timings; optionally a grid of prior samples.

python benchmarks/face_model.py [--grid heads.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import best_seconds

from facecore import geometry as geo
from models.face.model import DEFAULT_FACE_MODEL, FaceModel
from models.face.preview import image_grid, shaded_image


def best_ms(fn, repeat: int = 5) -> float:
    return 1000 * best_seconds(fn, repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", type=Path, help="write a 4x4 grid of heads drawn from the generation prior")
    args = parser.parse_args()
    m = geo.FaceModelArrays.load(DEFAULT_FACE_MODEL)
    b = m.metadata["build"]
    print(f"npz: {DEFAULT_FACE_MODEL.stat().st_size / 1e6:.2f} MB")
    print(f"vertices {m.n_verts}, triangles {len(m.faces)}, uv vertices {len(m.uv)}, parts {m.part_names}")
    print(
        f"identity components {m.n_shape}: {100 * b['variance_explained']:.2f} % of the wide variance "
        f"(100 components: {100 * b['variance_explained_100']:.2f} %); expressions {m.n_expr}"
    )
    rng = np.random.default_rng(0)
    shape = m.sample_shape(rng, 8)
    expr = rng.uniform(0, 0.5, (8, m.n_expr))
    pose = np.zeros((8, m.n_joints, 3))
    pose[:, 2, 0] = 0.1
    print(f"numpy decode, batch 1: {best_ms(lambda: geo.decode_vertices(m, shape[:1], expr[:1], pose[:1])):.1f} ms")
    print(f"numpy decode, batch 8: {best_ms(lambda: geo.decode_vertices(m, shape, expr, pose)):.1f} ms")
    fm = FaceModel(m)
    ts, te, tp = (torch.as_tensor(a, dtype=torch.float32) for a in (shape, expr, pose))
    with torch.no_grad():
        print(f"torch decode, batch 8: {best_ms(lambda: fm(ts, te, tp)):.1f} ms")
    verts = geo.decode_vertices(m, shape[:1])[0]
    disp = rng.normal(0, 5e-4, (256, 256))
    for res in (256, 512):
        t = time.perf_counter()
        geo.uv_sampling(m, res)
        first = 1000 * (time.perf_counter() - t)
        ms = best_ms(lambda res=res: geo.detailed_mesh(m, verts, disp, res))
        mesh = geo.detailed_mesh(m, verts, disp, res)
        print(
            f"detailed mesh {res}²: {ms:.1f} ms (+{first:.0f} ms once for the UV sampling), "
            f"{len(mesh.positions)} vertices, {len(mesh.faces)} triangles"
        )
    if args.grid:
        heads = geo.decode_vertices(m, m.sample_shape(np.random.default_rng(7), 16))
        ext = float(np.ptp(heads[:, :, 1], axis=1).max()) * 1.05
        tiles = [shaded_image(v, m.faces, 256, yaw_deg=20.0 * ((i % 3) - 1), extent=ext) for i, v in enumerate(heads)]
        Image.fromarray(image_grid(tiles, 4)).save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
