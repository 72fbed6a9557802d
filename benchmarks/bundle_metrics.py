"""A model bundle's metrics as the service runs it (onnxruntime, the /reconstruct pipeline), on unseen data.
    python benchmarks/bundle_metrics.py [--bundle service/bundled/default] [--synthetic 48] [--seed 20261125]
        [--photos tests/fixtures/photos] [--kid-samples 512]
        [--extracted runs/default/extract/albedo --holdout-seed 0 --holdout 64] [--json metrics.json] [--threads N]
        [--write]

1. Synthetic held-out faces (``training.data.synthetic`` stream ``--seed``: the default recipe trains on streams 0
   and 7 and evaluates on 1000003, so this one is unseen), rendered at 224 px like photos and sent through
   ``service.pipeline.reconstruct`` as PNG uploads (dlib detection, alignment, ONNX encoder):
   * shape error by the NoW protocol (mm): the neutral reconstructed mesh (coarse; detailed = + the neutral
     displacement) aligned to the true neutral skin surface within 95 mm of the nose tip by the 7 NoW landmarks
     (similarity) + rigid ICP, then scan-to-mesh distances: median / mean / std over all scan points; beside it
     the same for the prior's mean identity (what predicting nothing scores);
   * landmark error: the reconstruction's 68 projected landmarks vs the renders' true ones, mean distance /
     outer-eye-corner distance (300-W convention), visible points;
   * albedo error: the /reconstruct albedo map (linear) vs the true albedo on the texels the render shows:
     MAE, and RMSE after one least-squares gain per channel (the albedo/light scale is a convention).
2. Real photos (``--photos``, no ground truth): landmark error of the reconstruction vs dlib's 68-point detector
   (same normalisation), and identity similarity: cosine between dlib face-recognition embeddings
   (``models.identity.FaceEmbedder``) of the photo and of the reconstruction rendered over it (same chip
   alignment for both), against the same cosine for the renders of the *other* photos' reconstructions
   (impostors): a useful reconstruction resembles its own photo more than the others'.
3. AlbedoGAN: KID (``training.evaluation``, download-free albedo features, the units of the training log) of
   ``--kid-samples`` generated maps (truncation 1, through the bundle's mapping + albedo graphs) against the
   procedural ground-truth albedos (a stream seed the training never drew from) and, with ``--extracted``,
   against the held-out maps of that folder: the split AlbedoGAN's folder source makes with ``--holdout-seed``
   and ``--holdout`` (its ``albedo.data.seed`` / ``holdout``), so the reference never trained the generator.
   Each KID is printed with its standard deviation over the subsets.
Latency of /generate and /reconstruct over HTTP: ``benchmarks/serve.py``.

``--write`` puts the report into the bundle itself: ``manifest.json["metrics"]`` (every number with the data it
was measured on), the ``metrics`` block of its ``MODEL_CARD.md`` and, for the embedded bundle, the README's
``bundle-metrics`` block (:mod:`benchmarks.readme`): numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from readme import README, table, write_block

from facecore import color
from facecore import geometry as geo
from facecore.bundle import Bundle, load_bundle
from service import pipeline as P
from service.engine.sessions import generated_albedos, open_sessions
from service.settings import EMBEDDED_BUNDLE

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
IDENTITY_SIZE = 256  # the aligned crop the identity renders are made in


class BundleRunner:
    """The bundle's ONNX graphs behind the pipeline's ``run_graph`` interface (no batching, one process)."""

    def __init__(self, bundle: Bundle, threads: int, texture_size: int = 512):
        self.bundle = bundle
        self.texture_size = texture_size  # the API's default
        self.sessions = open_sessions(bundle, ["CPUExecutionProvider"], threads)

    async def run_graph(self, name: str, inputs):
        return self.sessions[name].run(inputs)

    def reconstruct(self, image: np.ndarray, albedo: str = "photo") -> dict:
        req = P.ReconstructRequest("bench", self.texture_size, 64, ("albedo",), False, "auto", albedo)
        result = asyncio.run(P.reconstruct(self.bundle, self.run_graph, req, image, P.Timer()))
        albedo = np.asarray(Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB"), np.float64) / 255.0
        return {**result.meta, "albedo_srgb": albedo}


def codes_arrays(meta: dict, model: geo.FaceModelArrays) -> dict[str, np.ndarray]:
    c = meta["codes"]
    expression = np.array([c["expression"].get(n, 0.0) for n in model.expr_names])  # zeros are left out
    pose = np.array([c["pose"][n] for n in model.joint_names])
    return {
        "shape": np.array(c["shape"]),
        "expression": expression,
        "pose": pose,
        "camera": np.array(c["camera"]),
        "light": np.array(c["light"]),
        "detail": np.array(c["detail"]),
    }


def albedo_errors(albedo_srgb: np.ndarray, truth: np.ndarray, seen: np.ndarray) -> tuple[float, float]:
    """A served (R, R, 3) sRGB albedo map against the (n, 3) linear truth at the (res, res) ``seen`` texels: mean
    absolute error and RMSE after one least-squares gain per channel (the albedo-vs-light scale no photo tells)."""
    res = seen.shape[0]
    served = Image.fromarray((albedo_srgb * 255 + 0.5).astype(np.uint8)).resize((res, res), Image.BICUBIC)
    got = color.srgb_to_linear(np.asarray(served) / 255.0)[seen]
    gain = (got * truth).sum(0) / np.maximum((got * got).sum(0), 1e-12)
    return float(np.abs(got - truth).mean()), float(np.sqrt(((gain * got - truth) ** 2).mean()))


def summary(values: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(values)), "mean": float(values.mean()), "std": float(values.std())}


# ----------------------------------------------------------------------------------------------------- synthetic
def render_upload(item) -> np.ndarray:
    """A synthetic render (a batch of one) as the service reads its PNG upload: (H, W, 3) sRGB uint8."""
    image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return P.decode_photo(png.getvalue(), 50_000_000)


def synthetic_metrics(runner: BundleRunner, count: int, seed: int) -> dict:
    from models.displacement import UVGrid
    from models.face.model import FaceModel
    from training.data.images import resize_uv
    from training.data.synthetic import SyntheticConfig, SyntheticFaces
    from training.evaluation import MeshDistance, SeenTexels, now_scan_to_mesh, now_scans
    from training.shape import NOW_LANDMARKS

    bundle = runner.bundle
    model = bundle.face_model
    fm = torch_face_model(face_model_path(bundle))
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=256, seed=seed), face_model=FaceModel(fm.arrays))
    scanner = UVGrid(fm, 128)
    res = P.unwrap_resolution(runner.texture_size, bundle.manifest.resolutions.albedo)
    seen_texels = SeenTexels(fm, res)
    coarse_dist = MeshDistance(fm.faces, fm.n_verts)
    mean_neutral = fm(torch.as_tensor(model.shape_prior_mean, dtype=torch.float32)[None])[0]
    mean_lm = fm.landmarks(mean_neutral[None])[0, list(NOW_LANDMARKS)]
    coarse, detailed, mean_face, nme, failed = [], [], [], [], []
    modes = ("photo", "generated") if runner.bundle.generated_reconstruct else ("photo",)
    mae: dict[str, list[float]] = {m: [] for m in modes}
    gain_rmse: dict[str, list[float]] = {m: [] for m in modes}
    detailed_dist = None
    for i in range(count):
        item = faces.batch([i])
        image = render_upload(item)
        try:
            meta = runner.reconstruct(image)
        except P.PhotoError as exc:
            failed.append(f"{i}: {exc}")
            continue
        codes = codes_arrays(meta, model)
        # shape: NoW protocol against the true neutral surface
        scan, scan_lm = now_scans(fm, scanner, item.codes.shape, 95.0)[0]
        shape = torch.as_tensor(codes["shape"], dtype=torch.float32)[None]
        neutral = fm(shape)[0]
        lm = fm.landmarks(neutral[None])[0, list(NOW_LANDMARKS)]
        coarse.append(now_scan_to_mesh(scan, scan_lm, neutral, lm, coarse_dist).numpy())
        disp = runner.sessions["displacement"].run(
            {"detail": codes["detail"][None], "expression": np.zeros((1, model.n_expr)), "jaw_pose": np.zeros((1, 3))}
        )["displacement"][0, 0]
        mesh = geo.detailed_mesh(model, neutral.numpy(), disp * bundle.manifest.displacement_scale_m, 128)
        if detailed_dist is None:
            detailed_dist = MeshDistance(torch.as_tensor(mesh.faces), len(mesh.positions))
        detailed.append(now_scan_to_mesh(scan, scan_lm, torch.as_tensor(mesh.positions), lm, detailed_dist).numpy())
        mean_face.append(now_scan_to_mesh(scan, scan_lm, mean_neutral, mean_lm, coarse_dist).numpy())
        # landmarks against the render's truth
        pred = np.array(meta["face"]["landmarks68"])
        vis = item.landmarks_visible[0].numpy()
        gt = item.landmarks_px[0].numpy()
        iod = np.linalg.norm(gt[36] - gt[45])
        nme.append(float(np.linalg.norm(pred - gt, axis=1)[vis].mean() / iod))
        # albedo on the seen texels
        seen = seen_texels(item.camera, item.verts_world)[0, 0].numpy() > 0.5
        truth = resize_uv(item.albedo_uv, res)[0].permute(1, 2, 0).numpy()[seen]
        for mode in modes:
            albedo = meta["albedo_srgb"] if mode == "photo" else runner.reconstruct(image, mode)["albedo_srgb"]
            error, gain_error = albedo_errors(albedo, truth, seen)
            mae[mode].append(error)
            gain_rmse[mode].append(gain_error)
    out = {
        "num_samples": count,
        "num_reconstructed": len(nme),
        "failures": failed,
        "seed": seed,
        "now_coarse_mm": summary(1000.0 * np.concatenate(coarse)),
        "now_detailed_mm": summary(1000.0 * np.concatenate(detailed)),
        "landmark_nme": float(np.mean(nme)),
        "albedo_mae": {m: float(np.mean(v)) for m, v in mae.items()},
        "albedo_rmse_gain_corrected": {m: float(np.mean(v)) for m, v in gain_rmse.items()},
    }
    out["now_prior_mean_mm"] = summary(1000.0 * np.concatenate(mean_face))
    return out


# ----------------------------------------------------------------------------------------------------- photos
@functools.lru_cache(maxsize=2)
def torch_face_model(path: Path):
    """A bundle's face-model file as a torch :class:`models.face.model.FaceModel` (loaded once)."""
    from models.face.model import FaceModel

    return FaceModel.from_file(path)


def face_model_path(bundle: Bundle) -> Path:
    return bundle.root / bundle.manifest.face_model.file


@functools.lru_cache(maxsize=4)
def _renderer(path: Path, size: int):
    from models.render import MeshRenderer

    return MeshRenderer.from_face_model(torch_face_model(path), size, teeth=True)  # what the exported meshes show


def render(
    bundle: Bundle,
    verts: np.ndarray,
    camera: np.ndarray,
    albedo_srgb: np.ndarray,
    sh,
    background: np.ndarray,
    shape: np.ndarray | None = None,
) -> np.ndarray:
    """(V, 3) posed vertices seen by the weak-perspective ``camera`` (s, tx, ty), textured with an sRGB albedo map
    and lit by ``sh`` (9, 3), over an sRGB ``background`` (S, S, 3) in [0, 1] → (S, S, 3) uint8 (torch renderer);
    the eyes' iris has the colour the exports give them (facecore.assets.iris_colour of the map), the teeth are
    fitted to the head of identity ``shape`` as the exports fit them (facecore.assets.head_teeth)."""
    from facecore.assets import iris_colour, with_head_teeth
    from models.render import MeshRenderer, WeakPerspectiveCamera

    if shape is not None:
        verts = with_head_teeth(bundle.face_model, verts, shape)

    fm = torch_face_model(face_model_path(bundle))
    eyes = MeshRenderer.asset_textures(fm, [iris_colour(bundle.face_model, albedo_srgb)[0]])
    s, tx, ty = camera
    cam = WeakPerspectiveCamera(torch.tensor([s]).float(), torch.tensor([[tx, ty]]).float())
    albedo = torch.as_tensor(color.srgb_to_linear(albedo_srgb), dtype=torch.float32).permute(2, 0, 1)[None]
    back = torch.as_tensor(color.srgb_to_linear(background), dtype=torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = _renderer(face_model_path(bundle), background.shape[0])(
            torch.as_tensor(verts, dtype=torch.float32)[None], cam, albedo,
            torch.as_tensor(sh, dtype=torch.float32).reshape(1, 9, 3), background=back, asset_texture=eyes,
        )  # fmt: skip
    img = color.linear_to_srgb(out.image[0].permute(1, 2, 0).clamp(0, 1).numpy())
    return (img * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def served_crop(image: np.ndarray, meta: dict, size: int) -> np.ndarray:
    """The photo's crop as /reconstruct framed it (its ``face.anchors``), at ``size``."""
    from facecore import detect

    matrix = detect.anchors_matrix(np.array(meta["face"]["anchors"]), size)
    return detect.warp_crop(image, matrix, size).crop


def render_over(bundle: Bundle, meta: dict, crop: np.ndarray) -> np.ndarray:
    """The reconstruction rendered (albedo × the predicted SH shading) over the aligned crop it came from."""
    codes = codes_arrays(meta, bundle.face_model)
    expression = np.clip(codes["expression"], 0.0, 1.0)
    verts = geo.decode_vertices(bundle.face_model, codes["shape"][None], expression[None], codes["pose"][None])[0]
    return render(bundle, verts, codes["camera"], meta["albedo_srgb"], codes["light"], crop / 255.0, codes["shape"])


def photo_metrics(runner: BundleRunner, photos: Path) -> tuple[dict, list[tuple[str, np.ndarray, np.ndarray]]]:
    from models.identity import FaceEmbedder, extract_dlib_chip
    from models.landmarks import landmarks68

    bundle = runner.bundle
    embedder = FaceEmbedder.from_dlib_dat().eval()
    rows, crops = [], []
    for path in sorted(photos.glob("*.jpg")):
        image = P.decode_photo(path.read_bytes(), 50_000_000)
        meta = runner.reconstruct(image)
        detected = landmarks68(image)
        pred = np.array(meta["face"]["landmarks68"])
        iod = np.linalg.norm(detected[36] - detected[45])
        crop = served_crop(image, meta, IDENTITY_SIZE)
        render = render_over(bundle, meta, crop)
        crop_lmk = landmarks68(crop)
        chips = [extract_dlib_chip(img, crop_lmk) for img in (crop, render)]
        with torch.no_grad():
            emb = embedder(torch.as_tensor(np.stack(chips), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0)
        rows.append({"photo": path.name, "landmark_nme_vs_detector": float(
            np.linalg.norm(pred - detected, axis=1).mean() / iod)})  # fmt: skip
        crops.append((path.name, crop, render, emb.numpy(), meta["albedo_srgb"]))
    emb_photo = np.stack([c[3][0] for c in crops])
    emb_render = np.stack([c[3][1] for c in crops])
    sim = emb_photo @ emb_render.T  # photo i vs render j
    for i, row in enumerate(rows):
        row["identity_cosine_own_render"] = float(sim[i, i])
        others = np.delete(sim[i], i)
        row["identity_cosine_other_renders"] = float(others.mean())
    n = len(rows)
    own = float(np.mean(np.diag(sim)))
    other = float((sim.sum() - np.trace(sim)) / max(n * (n - 1), 1))
    rank1 = float(np.mean(np.argmax(sim, axis=1) == np.arange(n)))
    summary_ = {
        "num_photos": n,
        "landmark_nme_vs_detector": float(np.mean([r["landmark_nme_vs_detector"] for r in rows])),
        "identity_cosine_own_render": own,
        "identity_cosine_other_renders": other,
        "identity_rank1": rank1,
        "per_photo": rows,
    }
    return summary_, [(c[0], c[1], c[2], c[4]) for c in crops]


# ----------------------------------------------------------------------------------------------------- KID
def kid_metrics(
    runner: BundleRunner, samples: int, seed: int, extracted: Path | None, holdout_seed: int = 0, holdout: int = 64
) -> dict:
    from training.data.albedo_maps import DataConfig, SyntheticAlbedos, build_data
    from training.evaluation import AlbedoFeatures, ReferenceSet

    bundle = runner.bundle
    m = bundle.manifest
    res = m.resolutions.albedo
    z = np.random.default_rng(seed).standard_normal((samples, m.codes.z_dim)).astype(np.float32)
    generated_t = torch.cat(
        [torch.as_tensor((img + 1.0) * 0.5).clamp(0, 1) for img in generated_albedos(runner.sessions, z)]
    )
    extractor = AlbedoFeatures()
    feats = extractor.extract(generated_t)
    source = SyntheticAlbedos(res, seed, samples, cache=False)
    truth = torch.stack([source.load_uint8(i) for i in range(samples)]).float() / 255.0

    def half(n_ref: int) -> int:  # subsets of half the smaller set: the spread over subsets is the uncertainty
        return max(2, min(len(feats), n_ref) // 2)

    kid = ReferenceSet.from_images(extractor, truth.clamp(0, 1)).kid_features(feats, 50, half(len(truth)))
    out = {"num_generated": samples, "kid_vs_procedural_truth": kid.mean, "kid_vs_procedural_truth_std": kid.std}
    if extracted is not None:
        _, held = build_data(DataConfig(kind="folder", path=str(extracted), seed=holdout_seed, holdout=holdout), res)
        if held is None:
            raise SystemExit("--extracted: --holdout must be > 0 (the reference must be maps the GAN never saw)")
        maps = held.batch(range(len(held))) * 0.5 + 0.5
        kid = ReferenceSet.from_images(extractor, maps.clamp(0, 1)).kid_features(feats, 50, half(len(held)))
        out.update(kid_vs_extracted_heldout=kid.mean, kid_vs_extracted_heldout_std=kid.std, extracted_heldout=len(held))
    return out


# ----------------------------------------------------------------------------------------------------- writing
def _spread(v: dict) -> str:
    return f"median {v['median']:.2f}, mean {v['mean']:.2f} ± {v['std']:.2f}"


def _with_previous(header: tuple[str, str, str], rows: list[tuple], prev: dict | None) -> str:
    """A table of (label, this, previous, note) rows; the previous bundle's column only when there is one."""
    if prev is None:
        return table(header, [(a, b, d) for a, b, _, d in rows])
    mean = header[1] == "mean"
    previous = f"{prev['bundle']['name']} {prev['bundle']['version']}" + " (mean)" * mean
    head = (header[0], "this bundle (mean)" if mean else header[1], previous, header[2] + " (this bundle)" * mean)
    return table(head, [(a, b, c or "—", d) for a, b, c, d in rows])


def previous_report(path: Path, args: argparse.Namespace) -> dict:
    """Another bundle's ``--json`` report, measured the same way (same stream, counts and photos), for the column
    beside this bundle's; only what the tables show is kept."""
    prev = json.loads(path.read_text())
    s = prev.get("synthetic")
    if args.synthetic and s and (s.get("seed") != args.seed or s.get("num_samples") != args.synthetic):
        raise SystemExit(f"--previous {path}: measured on stream {s.get('seed')} × {s.get('num_samples')}, "
                         f"not {args.seed} × {args.synthetic}")  # fmt: skip
    photos = sorted(f.name for f in Path(args.photos).glob("*.jpg"))  # as photo_metrics reads them
    theirs = sorted(r["photo"] for r in (prev.get("photos") or {}).get("per_photo", []))
    if prev.get("photos") and theirs != photos:
        raise SystemExit(f"--previous {path}: measured on the photos {theirs}, not {photos}")
    return {k: prev[k] for k in ("bundle", "synthetic", "photos") if k in prev}


def card_tables(report: dict) -> str:
    """The model card's metric tables from a report of :func:`main`."""
    out = [f"Bundle size: {report['bundle']['megabytes']} MB (every file of the bundle folder)."]
    prev = report.get("previous")
    if "synthetic" in report:
        s = report["synthetic"]
        ps = (prev or {}).get("synthetic")
        rows = [
            (
                "shape error, NoW protocol, coarse mesh (mm, over scan points)",
                _spread(s["now_coarse_mm"]),
                ps and _spread(ps["now_coarse_mm"]),
                "the prior's mean face: " + _spread(s["now_prior_mean_mm"]),
            ),
            (
                "shape error, NoW protocol, detailed mesh (mm)",
                _spread(s["now_detailed_mm"]),
                ps and _spread(ps["now_detailed_mm"]),
                "",
            ),
            (
                "68-landmark error / inter-ocular distance vs the renders' truth",
                f"{s['landmark_nme']:.3f}",
                ps and f"{ps['landmark_nme']:.3f}",
                "",
            ),
        ] + [
            (
                f"albedo error on the seen texels, `albedo={mode}` (linear)",
                f"MAE {mae:.3f}, RMSE after a per-channel gain {s['albedo_rmse_gain_corrected'][mode]:.3f}",
                ps
                and mode in ps["albedo_mae"]
                and f"MAE {ps['albedo_mae'][mode]:.3f}, RMSE after a per-channel gain "
                f"{ps['albedo_rmse_gain_corrected'][mode]:.3f}",
                "",
            )
            for mode, mae in s["albedo_mae"].items()
        ]
        out.append(
            f"**Synthetic held-out faces**: {s['num_reconstructed']} of {s['num_samples']} renders of stream seed "
            f"{s['seed']} (never trained on) reconstructed through the service pipeline"
            + (f"; not found: {', '.join(s['failures'])}" if s["failures"] else "")
            + (f" ({prev['bundle']['version']}: {ps['num_reconstructed']} of them)" if ps else "")
            + ".\n\n"
            + _with_previous(("", "this bundle", "reference"), rows, prev)
        )
    if "photos" in report:
        p = report["photos"]
        pp = (prev or {}).get("photos")
        names = ", ".join(r["photo"].split(".")[0] for r in p["per_photo"])
        rows = [
            (
                "68-landmark error of the reconstruction vs dlib's 68-point detector",
                f"{p['landmark_nme_vs_detector']:.3f}",
                pp and f"{pp['landmark_nme_vs_detector']:.3f}",
                ", ".join(f"{r['landmark_nme_vs_detector']:.3f}" for r in p["per_photo"]),
            ),
            (
                "identity cosine, photo vs its reconstruction rendered over it (dlib embedding)",
                f"{p['identity_cosine_own_render']:.3f}",
                pp and f"{pp['identity_cosine_own_render']:.3f}",
                f"rank-1 {p['identity_rank1']:.2f}",
            ),
            (
                "identity cosine, photo vs the other photos' renders",
                f"{p['identity_cosine_other_renders']:.3f}",
                pp and f"{pp['identity_cosine_other_renders']:.3f}",
                "",
            ),
        ]
        out.append(
            f"**Real photos** ({p['num_photos']} CC0 fixture portraits, no ground truth; per photo: {names}):\n\n"
            + _with_previous(("", "mean", "per photo"), rows, prev)
        )
    if "albedogan" in report:
        a = report["albedogan"]
        rows = [
            (
                f"{a['num_generated']} generated maps vs as many procedural ground-truth albedos (unseen seed)",
                f"{a['kid_vs_procedural_truth']:.2f} ± {a['kid_vs_procedural_truth_std']:.2f}",
            ),
        ]
        if "kid_vs_extracted_heldout" in a:
            rows.append(
                (
                    f"vs the {a['extracted_heldout']} held-out extracted maps (never trained on)",
                    f"{a['kid_vs_extracted_heldout']:.2f} ± {a['kid_vs_extracted_heldout_std']:.2f}",
                )
            )
        out.append(
            "**AlbedoGAN** (KID on the project's download-free albedo features, ± its spread over subsets):\n\n"
            + table(("", "KID"), rows)
        )
    return "\n\n".join(out)


def readme_rows(report: dict) -> str:
    """The README's short table of the embedded bundle's held-out numbers."""
    rows = [
        (
            "bundle size (ONNX graphs with float16 weights, face model, model card)",
            f"{report['bundle']['megabytes']} MB",
        )
    ]
    if "synthetic" in report:
        s = report["synthetic"]
        rows += [
            (
                f"shape error, NoW protocol, {s['num_reconstructed']} synthetic held-out faces: coarse / detailed / "
                "the mean face (median mm)",
                f"{s['now_coarse_mm']['median']:.2f} / {s['now_detailed_mm']['median']:.2f} / "
                f"{s['now_prior_mean_mm']['median']:.2f}",
            ),
            ("68-landmark error / inter-ocular, synthetic via the service", f"{s['landmark_nme']:.3f}"),
            (
                "albedo error on synthetic truth, MAE (linear): "
                + " / ".join(f"`albedo={m}`" for m in s["albedo_mae"]),
                " / ".join(f"{v:.3f}" for v in s["albedo_mae"].values()),
            ),
        ]
    if "photos" in report:
        p = report["photos"]
        rows += [
            (
                f"real photos ({p['num_photos']}): 68-landmark error vs dlib's detector",
                f"{p['landmark_nme_vs_detector']:.3f}",
            ),
            (
                "identity cosine, photo vs its render / vs other photos' renders (dlib embedding)",
                f"{p['identity_cosine_own_render']:.3f} / {p['identity_cosine_other_renders']:.3f}, "
                f"rank-1 {p['identity_rank1']:.2f}",
            ),
        ]
    if "albedogan" in report:
        a = report["albedogan"]
        rows.append(
            (
                "AlbedoGAN KID vs procedural ground truth (unseen)",
                f"{a['kid_vs_procedural_truth']:.2f} ± {a['kid_vs_procedural_truth_std']:.2f}",
            )
        )
        if "kid_vs_extracted_heldout" in a:
            rows.append(
                (
                    "AlbedoGAN KID vs held-out extracted maps",
                    f"{a['kid_vs_extracted_heldout']:.2f} ± {a['kid_vs_extracted_heldout_std']:.2f}",
                )
            )
    return table(("", ""), rows)


def _arguments(args: argparse.Namespace) -> list[str]:
    """The command-line options that shaped the report (paths relative to the project when inside it)."""
    root = Path(__file__).resolve().parents[1]
    out = []
    for key, value in vars(args).items():
        if value in (None, False, True) or (key.startswith("holdout") and args.extracted is None):
            continue
        if isinstance(value, Path) and value.resolve().is_relative_to(root):
            value = value.resolve().relative_to(root)
        out.append(f"--{key.replace('_', '-')} {value}")
    return out


def write(bundle_dir: Path, report: dict, args: argparse.Namespace) -> None:
    """The report into the bundle's manifest and model card, and the README when it is the embedded bundle."""
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"] = {
        "measured_by": "python benchmarks/bundle_metrics.py " + " ".join(_arguments(args)) + " --write",
        "data": {
            "synthetic": "training.data.synthetic renders of a stream seed the training never drew from, 224 px",
            "photos": "the CC0 fixture portraits (tests/fixtures/photos), never trained on",
            "albedogan": "generated maps at truncation 1 vs procedural albedos of an unseen seed"
            + (" and the held-out split of --extracted" if args.extracted else ""),
        },
        **report,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    write_block("metrics", card_tables(report), bundle_dir / "MODEL_CARD.md")
    print(f"wrote the metrics of {manifest_path} and the metrics block of {bundle_dir / 'MODEL_CARD.md'}")
    if bundle_dir.resolve() == Path(EMBEDDED_BUNDLE).resolve():
        write_block("bundle-metrics", readme_rows(report), README)
        print("wrote the README's bundle-metrics block")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--synthetic", type=int, default=48)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--kid-samples", type=int, default=512)
    ap.add_argument("--extracted", type=Path, default=None)
    ap.add_argument("--holdout-seed", type=int, default=0, help="albedo.data.seed of the run that used --extracted")
    ap.add_argument("--holdout", type=int, default=64, help="albedo.data.holdout of that run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write", action="store_true", help="write the report into the bundle (and the README)")
    ap.add_argument("--no-tone-match", action="store_true", help="albedo=generated without the photo's skin tone")
    ap.add_argument("--previous", type=Path, default=None, help="another bundle's --json report: a column beside")
    args = ap.parse_args()
    if args.write and args.no_tone_match:
        raise SystemExit("--write measures the service as it runs: without --no-tone-match")
    P.TONE_MATCH = not args.no_tone_match
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    runner = BundleRunner(bundle, args.threads or 0)
    path = Path(args.bundle)
    if args.write and not path.is_dir():
        raise SystemExit("--write: --bundle must be a bundle folder (its manifest and model card are rewritten)")
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    report: dict = {
        "bundle": {"name": bundle.manifest.name, "version": bundle.manifest.version, "megabytes": round(size / 1e6, 1)}
    }
    previous = previous_report(args.previous, args) if args.previous else None
    t0 = time.perf_counter()
    if args.synthetic:
        report["synthetic"] = synthetic_metrics(runner, args.synthetic, args.seed)
        s = report["synthetic"]
        print(f"synthetic held-out (seed {args.seed}): {s['num_reconstructed']}/{s['num_samples']} reconstructed")
        for key in ("now_coarse_mm", "now_detailed_mm", "now_prior_mean_mm"):
            if key in s:
                v = s[key]
                print(f"  {key:<20} median {v['median']:.2f}  mean {v['mean']:.2f}  std {v['std']:.2f}")
        print(f"  landmark NME {s['landmark_nme']:.4f}")
        for mode, value in s["albedo_mae"].items():
            print(f"  albedo ({mode}): MAE {value:.4f}   RMSE (gain-corrected) "
                  f"{s['albedo_rmse_gain_corrected'][mode]:.4f}")  # fmt: skip
    if args.photos.is_dir():
        report["photos"], _ = photo_metrics(runner, args.photos)
        p = report["photos"]
        print(f"real photos ({p['num_photos']}): landmark NME vs detector {p['landmark_nme_vs_detector']:.4f}")
        for r in p["per_photo"]:
            print(f"  {r['photo']:<24} NME {r['landmark_nme_vs_detector']:.4f}  "
                  f"cos own {r['identity_cosine_own_render']:.3f}  "
                  f"cos others {r['identity_cosine_other_renders']:.3f}")  # fmt: skip
        print(f"  identity cosine own render {p['identity_cosine_own_render']:.3f} vs other renders "
              f"{p['identity_cosine_other_renders']:.3f}; rank-1 {p['identity_rank1']:.2f}")  # fmt: skip
    if args.kid_samples:
        a = kid_metrics(runner, args.kid_samples, args.seed, args.extracted, args.holdout_seed, args.holdout)
        report["albedogan"] = a
        print("AlbedoGAN KID " + "  ".join(f"{k[4:]} {a[k]:.2f} ± {a[k + '_std']:.2f}" for k in a
                                           if k.startswith("kid_") and not k.endswith("_std")))  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if previous:
        report["previous"] = previous
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.write:
        write(Path(args.bundle), report, args)


if __name__ == "__main__":
    main()
