"""Face-model numbers: sizes, decode and detailed-mesh timings and closure; optionally pictures.

python benchmarks/face_model.py [--grid heads.png] [--views detailed.png] [--readme]

Detailed-mesh closure, on a prior sample with a ±1 mm displacement: the longest skin edge relative to the longest
coarse edge / level (a triangle bridging two layers of the folded layout would be far above 1), open edges beyond
the coarse mesh's own (its neck opening, ×level) and the T-junctions with the kept eye/mouth triangles, and the
largest gap between copies of one surface point (seam, poles). ``--views`` draws the skin of the detailed mesh from
six directions (front, 60°, profile, back, below, above; back faces red). ``--readme`` rewrites the README's
``face-model`` block.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from readme import table, write_block
from timing import best_seconds

from facecore import geometry as geo
from models.face.model import DEFAULT_FACE_MODEL, FaceModel
from models.face.preview import image_grid, render_ortho, shaded_image


def best_ms(fn, repeat: int = 5) -> float:
    return 1000 * best_seconds(fn, repeat)


def closure(m: geo.FaceModelArrays, verts: np.ndarray, res: int) -> dict[str, float]:
    """How closed the detailed mesh is (see the module docstring)."""
    u = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    disp = 0.001 * np.sin(3 * u)[None, :] * np.cos(5 * u[:, None] / 2)
    s = geo.mesh_sampling(m, res)
    mesh = geo.detailed_mesh(m, verts, disp, res)
    p = mesh.positions.astype(np.float64)
    coarse_edge = np.linalg.norm(verts[m.faces] - verts[np.roll(m.faces, 1, 1)], axis=2).max()
    longest = np.linalg.norm(p[s.faces] - p[np.roll(s.faces, 1, 1)], axis=2).max() / (coarse_edge / s.level)
    kept_uv = np.unique(m.uv_faces[s.kept_faces])
    base = np.concatenate([np.einsum("nk,nkc->nc", s.bary, verts[m.faces[s.face]]), verts[m.uv_vertex[kept_uv]]])
    _, weld = np.unique(np.round(base / 1e-9).astype(np.int64), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    gap = np.zeros(weld.max() + 1)
    first = np.zeros(weld.max() + 1, np.int64)
    first[weld[::-1]] = np.arange(len(weld))[::-1]
    np.maximum.at(gap, weld, np.linalg.norm(p - p[first[weld]], axis=1))

    def open_edges(faces: np.ndarray) -> np.ndarray:
        e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        return np.unique(e, axis=0, return_counts=True)[1]

    detailed, coarse = open_edges(weld[mesh.faces]), open_edges(m.faces)
    return {
        "level": s.level,
        "longest": float(longest),
        "open": int((detailed == 1).sum()),
        "coarse_open": int((coarse == 1).sum()),
        "gap_um": float(gap.max() * 1e6),
    }


def views(m: geo.FaceModelArrays, verts: np.ndarray, res: int, size: int = 256) -> np.ndarray:
    """The detailed skin from six directions, Lambert-shaded, back faces red."""
    u = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    disp = 3e-4 * np.sin(40 * u)[None, :] * np.sin(30 * u[:, None])  # fine ripples: the detail is visible
    mesh = geo.detailed_mesh(m, verts, disp, res)
    s = geo.mesh_sampling(m, res)
    p, n, f = mesh.positions.astype(np.float64), mesh.normals.astype(np.float64), s.faces
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    tiles = []
    for rotvec in ([0, 0, 0], [0, 60, 0], [0, 90, 0], [0, 180, 0], [-60, 0, 0], [70, 0, 0]):
        rot = geo.axis_angle_to_matrix(np.deg2rad(rotvec))
        v, nn = p @ rot.T, n @ rot.T
        lo, hi = v.min(0), v.max(0)
        view = render_ortho(v, f, size, (lo[:2] + hi[:2]) / 2, float(max(hi[:2] - lo[:2])) * 1.08)
        mask = view.face >= 0
        nrm = np.einsum("nk,nkc->nc", view.bary[mask], nn[f[view.face[mask]]])
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        colour = np.where((nrm[:, 2] < 0)[:, None], [0.9, 0.2, 0.2], [0.8, 0.8, 0.8])
        img = np.ones((size, size, 3))
        img[mask] = colour * (0.2 + 0.8 * np.clip(nrm @ light, 0, 1))[:, None]
        tiles.append((img * 255 + 0.5).astype(np.uint8))
    return image_grid(tiles, 6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", type=Path, help="write a 4x4 grid of heads drawn from the generation prior")
    parser.add_argument("--views", type=Path, help="write six views of a detailed mesh at resolution 256")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's face-model block")
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
    decode = (
        best_ms(lambda: geo.decode_vertices(m, shape[:1], expr[:1], pose[:1])),
        best_ms(lambda: geo.decode_vertices(m, shape, expr, pose)),
    )
    print(f"numpy decode, batch 1: {decode[0]:.1f} ms")
    print(f"numpy decode, batch 8: {decode[1]:.1f} ms")
    fm = FaceModel(m)
    ts, te, tp = (torch.as_tensor(a, dtype=torch.float32) for a in (shape, expr, pose))
    with torch.no_grad():
        torch_ms = best_ms(lambda: fm(ts, te, tp))
    print(f"torch decode, batch 8: {torch_ms:.1f} ms")
    verts = geo.decode_vertices(m, shape[:1])[0]
    disp = rng.normal(0, 5e-4, (256, 256))
    rows = [
        ("face-model npz", f"{DEFAULT_FACE_MODEL.stat().st_size / 1e6:.1f} MB (float16 bases)"),
        ("numpy decode (shape + expression + pose), batch 1 / 8", f"{decode[0]:.1f} ms / {decode[1]:.1f} ms"),
        ("torch decode, batch 8", f"{torch_ms:.1f} ms"),
    ]
    for res in (256, 512):
        t = time.perf_counter()
        geo.mesh_sampling(m, res)
        first = 1000 * (time.perf_counter() - t)
        ms = best_ms(lambda res=res: geo.detailed_mesh(m, verts, disp, res))
        mesh = geo.detailed_mesh(m, verts, disp, res)
        c = closure(m, verts.astype(np.float64), res)
        print(
            f"detailed mesh {res}: {ms:.1f} ms (+{first:.0f} ms once for the sampling), level {c['level']}, "
            f"{len(mesh.positions)} vertices, {len(mesh.faces)} triangles; longest skin edge "
            f"{c['longest']:.2f}× coarse/level; {c['open']} open edges (coarse mesh: {c['coarse_open']}); "
            f"largest gap between copies of a point {c['gap_um']:.2f} µm"
        )
        rows.append(
            (
                f"detailed mesh {res} (level {c['level']}, {len(mesh.positions) / 1000:.0f}k vertices)",
                f"{ms:.0f} ms (+{first:.0f} ms once); longest edge {c['longest']:.2f}× coarse/level, "
                f"largest gap {c['gap_um']:.1f} µm",
            )
        )
    if args.views:
        Image.fromarray(views(m, verts.astype(np.float64), 256)).save(args.views)
        print(f"wrote {args.views}")
    if args.readme:
        write_block("face-model", table(("", ""), rows))
        print("README block face-model rewritten")
    if args.grid:
        heads = geo.decode_vertices(m, m.sample_shape(np.random.default_rng(7), 16))
        ext = float(np.ptp(heads[:, :, 1], axis=1).max()) * 1.05
        tiles = [shaded_image(v, m.faces, 256, yaw_deg=20.0 * ((i % 3) - 1), extent=ext) for i, v in enumerate(heads)]
        Image.fromarray(image_grid(tiles, 4)).save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
