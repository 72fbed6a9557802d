"""Can a frozen face recogniser's features give the identity? A measured probe for issue 13's identity branch.

python benchmarks/identity_from_features.py [--identities 1000] [--views 2] [--sets prior,prior2,wide05,wide1]
    [--image-size 160] [--seed 0] [--cache /tmp/identity_probe_cache] [--mlp-seconds 60] [--no-mlp]

Identity sets (:mod:`training.data.identity_set`): ``prior`` = the face model's generation prior (plausible
adults), ``prior2`` = the same with twice its spread, ``wide05`` / ``wide1`` = the wide basis' N(0, s² I) with
s = 0.5 / 1 (the wide build sample has unit variance per coefficient; at s = 1 many heads are caricatures).
Each identity is rendered ``--views`` times (own pose, expression, light, framing, background; the identity's
albedo) and cut into dlib's 150-px chip on the 68 projected landmarks; dlib's face-recognition ResNet
(:class:`models.identity.FaceEmbedder`, frozen) gives the raw 128-d descriptor and the 256-d penultimate features.
Descriptors are cached under ``--cache`` per (set, chunk of 200 identities), so reruns and larger
``--identities`` only render what is missing.

1. **Feature spread**: dlib distances of the same identity across views, of different identities (fraction
   inside dlib's 0.6 "same person" radius) and nearest other identity, per set; the fixture photos
   (tests/fixtures/photos, real people, 5-point chips): their pairwise distances and their nearest synthetic
   face per set; and, on ``--check-detect`` renders, the distance between the 68-GT-landmark chip and the
   5-point-detected chip of the same render (does the alignment path matter?).
2. **Regression** features → identity on held-out identities (split by identity: ``--test-fraction`` test,
   10 % of the rest validation for λ / early stopping): ridge and an MLP, trained on the set itself ("own")
   or on all sets' training identities ("all"); with 1 view (every view its own sample) or ``views`` views
   (descriptors averaged). Targets are the region coordinates of :class:`training.identity_regression.RegionMetric`
   (a linear change of the shape code in which least squares is the face region's squared error). Error =
   mean vertex distance (mm) over the face region (:func:`training.evaluation.identity_region`), centred or
   rigidly aligned, printed as a ratio to the error of predicting the set's mean identity (its spread).
   Issue 13's target for the final system: ≤ 0.6.

Measured (600 identities × 2 views per set, gt5 chips of 160-px renders, 2 shared CPU cores: 17 min, ~250 ms
per render, ~25 ms per embedding, regressions 3 min): different synthetic people 0.52 ± 0.08 apart (prior; 84 %
inside 0.6), 0.56 (prior2; 70 %), 0.54 (wide05; 80 %), same person across views 0.38; real photos 0.83 ± 0.11
apart, nearest synthetic 0.59 / 0.57 / 0.58, real photos 0.67 from the synthetic centroid vs 0.39 for synthetic
faces; the chip alignment alone (ground-truth vs detected 5 points, same render) moves descriptors 0.18.
Spread (centred) prior 4.39 mm, prior2 9.16, wide05 4.21. Best held-out ratios (ridge on the 256-d penultimate
features, 2 views averaged): prior 0.86, prior2 0.74, wide05 0.82 (1 view 0.88 / 0.78 / 0.85; descriptor
0.90 / 0.78 / 0.85); the MLP is no better (0.80–0.93, it overfits in < 15 epochs on ≤ 864 rows); training on
all sets together is worse on each than training on its own (prior 0.87–1.02). Profile views (|yaw| ≥ 40°) are
0.1–0.2 worse than frontal ones.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facecore import detect
from models.face.model import FaceCodes, FaceModel
from models.identity import FaceEmbedder, extract_dlib_chip
from training.data.identity_set import CHIP_ALIGNMENTS, embed_chips, render_identity_chips, sample_identity_shapes
from training.data.synthetic import SyntheticConfig, SyntheticFaces
from training.evaluation import identity_region
from training.identity_regression import RegionMetric, fit_mlp, fit_ridge

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
SETS = {  # name → (sampling, keyword arguments of sample_identity_shapes)
    "prior": ("prior", {}),
    "prior2": ("prior", {"prior_scale": 2.0}),
    "wide05": ("wide", {"wide_scale": 0.5}),
    "wide1": ("wide", {"wide_scale": 1.0}),
    "mixed": ("mixed", {"wide_scale": 0.5}),
}
CHUNK = int(os.environ.get("IDENTITY_PROBE_CHUNK", 200))  # identities per cache file
DLIB_SAME = 0.6


def t_print(t0: float, msg: str) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)


def load_set(args, name: str, fm: FaceModel, faces: SyntheticFaces, t0: float) -> dict[str, np.ndarray]:
    """Descriptors, penultimate features, true codes, yaw of ``args.identities`` identities of set ``name``."""
    sampling, kw = SETS[name]
    set_id = list(SETS).index(name)
    parts = []
    embedder = None
    for c in range(-(-args.identities // CHUNK)):
        n = min(CHUNK, args.identities - c * CHUNK)
        path = args.cache / f"{name}_s{args.seed}_v{args.views}_px{args.image_size}_{args.align}_c{c}_n{CHUNK}.npz"
        if path.exists():
            data = dict(np.load(path))
        else:
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + set_id * 10_007 + c)
            shapes, wide = sample_identity_shapes(fm, CHUNK, g, sampling, **kw)
            t = time.perf_counter()
            first = (set_id * 10_000 + c) * CHUNK * args.views
            chips = render_identity_chips(faces, shapes, args.views, first_index=first, align=args.align)
            t_render = time.perf_counter() - t
            if embedder is None:
                embedder = FaceEmbedder.from_dlib_dat()
            t = time.perf_counter()
            desc, pooled = embed_chips(embedder, chips.chips)
            t_embed = time.perf_counter() - t
            data = {
                "shapes": chips.shapes,
                "wide": wide.numpy(),
                "desc": desc,
                "pooled": pooled,
                "yaw": chips.yaw_deg,
                "male": chips.male,
            }
            np.savez(path, **data)
            if c == 0:
                grid = chips.chips[:8].transpose(1, 0, 2, 3, 4)  # (views, 8, S, S, 3)
                rows = [np.concatenate(list(r), 1) for r in grid]
                Image.fromarray(np.concatenate(rows, 0)).save(args.cache / f"chips_{name}_{args.align}.png")
            renders = CHUNK * args.views
            t_print(
                t0,
                f"{name} chunk {c}: {renders} renders {t_render / renders * 1000:.0f} ms each, "
                f"embeddings {t_embed / renders * 1000:.1f} ms each",
            )
        parts.append({k: v[:n] for k, v in data.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def pair_stats(d: np.ndarray) -> str:
    p5, p50, p95 = np.percentile(d, [5, 50, 95])
    return f"{d.mean():.3f} ± {d.std():.3f} (5/50/95 % {p5:.2f}/{p50:.2f}/{p95:.2f})"


def cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0))


def real_photos(embedder: FaceEmbedder, cache: Path) -> tuple[list[str], np.ndarray]:
    names, chips = [], []
    for path in sorted(PHOTOS.glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = detect.detect_landmarks5(image)
        if not faces:
            print(f"  {path.name}: no face")
            continue
        names.append(path.stem.rsplit("-", 1)[-1])
        chips.append(extract_dlib_chip(image, faces[0].points))
    Image.fromarray(np.concatenate(chips, 1)).save(cache / "chips_real.png")
    desc, _ = embed_chips(embedder, np.stack(chips))
    return names, desc


def feature_spread(sets: dict[str, dict[str, np.ndarray]], real: np.ndarray, rng: np.random.Generator) -> None:
    print("\n== 1. feature spread (dlib raw descriptor distances; dlib's same-person radius 0.6)")
    pool = min(len(s["desc"]) for s in sets.values())
    print(f"nearest-neighbour pools: the first {pool} identities of each set (view 0)")
    for name, s in sets.items():
        d0 = s["desc"][:, 0]
        n = len(d0)
        i, j = rng.integers(0, n, 4000), rng.integers(0, n, 4000)
        keep = i != j
        diff = np.linalg.norm(d0[i[keep]] - d0[j[keep]], axis=1)
        line = f"{name:>7}: different identities {pair_stats(diff)}, inside 0.6: {np.mean(diff < DLIB_SAME):.0%}"
        if s["desc"].shape[1] > 1:
            same = np.linalg.norm(s["desc"][:, 0] - s["desc"][:, 1], axis=1)
            line += f"; same identity (view 0 vs 1) {same.mean():.3f} ± {same.std():.3f}"
        m = min(300, pool)
        dd = cdist(d0[:m], d0[:pool])
        dd[np.arange(m), np.arange(m)] = np.inf
        print(line + f"; nearest other identity {dd.min(1).mean():.3f}")
    P = len(real)
    rr = cdist(real, real)[np.triu_indices(P, 1)]
    print(f"   real: {P} fixture photos, pairwise {rr.mean():.3f} ± {rr.std():.3f} (min {rr.min():.3f})")
    head = "   real photo → nearest synthetic: " + "  ".join(f"{n:>7}" for n in sets)
    print(head)
    near = {name: cdist(real, s["desc"][:pool, 0]).min(1) for name, s in sets.items()}
    for p in range(P):
        print(f"   {'photo ' + str(p):>31}  " + "  ".join(f"{near[n][p]:7.3f}" for n in sets))
    print(f"   {'mean':>31}  " + "  ".join(f"{near[n].mean():7.3f}" for n in sets))
    allsyn = np.concatenate([s["desc"][:, 0] for s in sets.values()])
    mu = allsyn.mean(0)
    to_mu_syn, to_mu_real = np.linalg.norm(allsyn - mu, axis=1).mean(), np.linalg.norm(real - mu, axis=1).mean()
    norm_syn, norm_real = np.linalg.norm(allsyn, axis=1).mean(), np.linalg.norm(real, axis=1).mean()
    print(
        f"   distance to the synthetic centroid: synthetic {to_mu_syn:.3f}, real {to_mu_real:.3f}; "
        f"descriptor norms: synthetic {norm_syn:.3f}, real {norm_real:.3f}"
    )


def check_detect(fm: FaceModel, faces: SyntheticFaces, embedder: FaceEmbedder, n: int) -> None:
    """Chips on ground-truth points (68-point and 5-point templates) vs on detected 5 points, same renders."""
    g = torch.Generator().manual_seed(12345)
    shapes, _ = sample_identity_shapes(fm, n, g, "prior")
    idx = list(range(900_000, 900_000 + n))
    albedo, scene = faces.sample_params(idx)
    scene = replace(scene, codes=FaceCodes(shapes, scene.codes.expression, scene.codes.pose))
    out = faces.render(torch.tensor(idx), albedo, scene)
    images = (out.image_srgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    chips: dict[str, list[np.ndarray]] = {"gt68": [], "gt5": [], "detect5": []}
    for k in range(n):
        found = detect.detect_landmarks5(images[k])
        if found:
            gt = out.landmarks_px[k].double().numpy()
            chips["gt68"].append(extract_dlib_chip(images[k], gt))
            chips["gt5"].append(extract_dlib_chip(images[k], gt[list(detect.DLIB5_TO_IBUG68)]))
            chips["detect5"].append(extract_dlib_chip(images[k], found[0].points))
    if not chips["gt5"]:
        print(f"\nalignment check: no face detected in {n} renders")
        return
    desc = {k: embed_chips(embedder, np.stack(v))[0] for k, v in chips.items()}
    print(f"\nalignment check ({len(chips['gt5'])}/{n} renders detected), same render, different chip alignment:")
    for k in ("gt68", "gt5"):
        d = np.linalg.norm(desc[k] - desc["detect5"], axis=1)
        print(f"  {k} chip vs detected 5-point chip: {d.mean():.3f} ± {d.std():.3f} (max {d.max():.3f})")


def regression(args, sets: dict[str, dict[str, np.ndarray]], metric: RegionMetric, mean_z: dict[str, np.ndarray],
               t0: float) -> None:  # fmt: skip
    print(
        "\n== 2. regression features → identity on held-out identities (ratio = error / error of the set's mean "
        "identity; target ≤ 0.6)"
    )
    rng = np.random.default_rng(args.seed)
    splits = {}
    for name, s in sets.items():
        order = rng.permutation(len(s["shapes"]))
        n_test = int(round(args.test_fraction * len(order)))
        n_val = int(round(0.1 * (len(order) - n_test)))
        splits[name] = (order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test])
    z = {name: metric.to_z(s["shapes"]) for name, s in sets.items()}

    print("spread (error of predicting the set's mean identity, test identities), mm:")
    base = {}
    for name in sets:
        te = splits[name][2]
        zm = np.broadcast_to(mean_z[name], z[name][te].shape)
        base[name] = (metric.error_mm(zm, z[name][te]).mean(), metric.error_mm(zm, z[name][te], rigid=True).mean())
        print(f"  {name:>7}: centred {base[name][0]:.2f}, rigid {base[name][1]:.2f}")

    def rows(names: list[str], part: int, feat: str, views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ys, yaws = [], [], []
        for name in names:
            idx = splits[name][part]
            x = sets[name][feat][idx]
            if views == 1:
                V = x.shape[1]
                xs.append(x.reshape(-1, x.shape[-1]))
                ys.append(np.repeat(z[name][idx], V, 0))
                yaws.append(sets[name]["yaw"][idx].reshape(-1))
            else:
                xs.append(x[:, :views].mean(1))
                ys.append(z[name][idx])
                yaws.append(np.abs(sets[name]["yaw"][idx][:, :views]).mean(1))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(yaws)

    views_list = sorted({1, args.views})
    feats = ["desc", "pooled"]
    pools = {name: [name] for name in sets}
    if len(sets) > 1:
        pools["all"] = list(sets)
    results: dict[tuple[str, str, str, int, str], tuple[float, float]] = {}
    yaw_lines = []
    for pool_name, members in pools.items():
        for feat in feats:
            for views in views_list:
                xtr, ytr, _ = rows(members, 0, feat, views)
                xva, yva, _ = rows(members, 1, feat, views)
                t = time.perf_counter()
                ridge = fit_ridge(xtr, ytr, xva, yva)
                t_ridge = time.perf_counter() - t
                models = {"ridge": ridge}
                info = ""
                if not args.no_mlp:
                    mlp, stats = fit_mlp(xtr, ytr, xva, yva, max_seconds=args.mlp_seconds, seed=args.seed)
                    models["mlp"] = mlp.predict
                    info = f", mlp {stats['seconds']:.0f} s ({stats['best_epoch']}/{stats['epochs']} epochs)"
                tested = [pool_name] if pool_name in sets else list(sets)
                for test in tested:
                    xte, yte, yaw = rows([test], 2, feat, views)
                    for model_name, model in models.items():
                        pred = model(xte)
                        c = metric.error_mm(pred, yte)
                        r = metric.error_mm(pred, yte, rigid=True)
                        key = ("own" if pool_name in sets else "all", test, feat, views, model_name)
                        results[key] = (c.mean() / base[test][0], r.mean() / base[test][1])
                        if views == 1 and feat == "desc" and model_name == "ridge":
                            lo, hi = np.abs(yaw) < 20, np.abs(yaw) >= 40
                            yaw_lines.append(
                                f"  {key[0]:>3} → {test:>7}: |yaw| < 20° {c[lo].mean() / base[test][0]:.2f} "
                                f"(n {lo.sum()}), ≥ 40° {c[hi].mean() / base[test][0]:.2f} (n {hi.sum()})"
                            )
                t_print(
                    t0,
                    f"trained on {pool_name} ({len(xtr)} rows), {feat}, {views} view(s): ridge λ {ridge.alpha:g} "
                    f"{t_ridge:.1f} s{info}",
                )
    models_list = ["ridge"] + ([] if args.no_mlp else ["mlp"])
    cols = [(f, v, m) for f in feats for m in models_list for v in views_list]
    for rigid, label in ((0, "centred"), (1, "rigidly aligned")):
        print(f"\nratio to the set's spread, {label} (rows: train pool → test set; columns: features/model/views)")
        print(" " * 17 + "".join(f"{f[:4]}/{m}/{v}v".rjust(15) for f, v, m in cols))
        for pool in ("own", "all"):
            for test in sets:
                vals = [results.get((pool, test, f, v, m)) for f, v, m in cols]
                if all(x is None for x in vals):
                    continue
                cells = "".join(("—" if x is None else f"{x[rigid]:.3f}").rjust(15) for x in vals)
                print(f"  {pool:>3} → {test:>7}" + cells)
    print("\nridge, descriptor, 1 view, by head yaw (centred ratio):")
    print("\n".join(yaw_lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=1000, help="identities per set")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--sets", default="prior,prior2,wide05,wide1", help=f"comma-separated of {list(SETS)}")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--albedo-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--mlp-seconds", type=float, default=60.0)
    parser.add_argument("--no-mlp", action="store_true")
    parser.add_argument("--check-detect", type=int, default=48, help="renders for the alignment check (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--align", default="gt5", choices=CHIP_ALIGNMENTS, help="how synthetic chips are aligned")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/identity_probe_cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown or not names:
        raise SystemExit(f"--sets: unknown {unknown}; choose from {list(SETS)}")

    t0 = time.perf_counter()
    fm = FaceModel.from_file()
    faces = SyntheticFaces(
        SyntheticConfig(image_size=args.image_size, albedo_size=args.albedo_size, seed=args.seed), fm
    )
    sets = {name: load_set(args, name, fm, faces, t0) for name in names}
    t_print(t0, f"data: {len(names)} sets × {args.identities} identities × {args.views} views (cache {args.cache})")

    embedder = FaceEmbedder.from_dlib_dat()
    _, real = real_photos(embedder, args.cache)
    feature_spread(sets, real, np.random.default_rng(args.seed))
    if args.check_detect:
        check_detect(fm, faces, embedder, args.check_detect)
        t_print(t0, "alignment check done")

    arrays = fm.arrays
    region = identity_region(arrays)
    metric = RegionMetric(arrays, region)
    prior_mean = np.asarray(arrays.shape_prior_mean, np.float64)
    mean_code = {n: (prior_mean if SETS[n][0] == "prior" else np.zeros_like(prior_mean)) for n in names}
    if "mixed" in names:
        mean_code["mixed"] = sets["mixed"]["shapes"].mean(0)
    print(f"\nface region: {region.sum()} vertices; region coordinates: {metric.dim}")
    regression(args, sets, metric, {n: metric.to_z(mean_code[n][None])[0] for n in names}, t0)
    t_print(t0, "done")


if __name__ == "__main__":
    main()
