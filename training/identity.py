"""The ``identity`` stage: identity from face-recognition features, fitted on synthetic identities (issue 13).

``python -m training.run identity --config training/configs/default.yaml --out runs/default``

1. Identities are drawn (:func:`training.data.identity_set.sample_identity_shapes`; by default half from the
   adult prior at 1.5× its spread, half from the wide basis at 0.5: plausible people and more variety than the
   prior alone; with ``identity: phenotype`` the prior's heads go with the sex, age and skin their albedos show,
   :mod:`training.data.phenotype`) and each is rendered ``views`` times (own pose up to ±60° yaw, expression,
   light, framing, background; the identity's albedo).
2. Each render goes through the service's feature path: dlib's detector and 5-point model
   (:func:`facecore.detect.detect_landmarks5`, as ``/reconstruct``), dlib's chip and face-recognition network
   on the chip and on its mirror image (:class:`facecore.identity.FaceRecogniser`, the same object the service
   calls). Renders where no face is found are dropped (the service answers 422 there). With ``features_graph``
   the chips go through a graph the bundle will carry instead (``OUT/identity_features.onnx``, run on
   onnxruntime as the service runs it): dlib's network computing its descriptor or the 2×2 grid of a middle
   level (``grid``: where the face's parts are, not only who it is), with dlib's weights or those of a
   ``training.identity_finetune`` run (``features_net``).
3. A ridge regression features → shape code is fitted on single views (one photo per request in the
   service), each chip's mirror image a second row with the mirrored code
   (:func:`training.identity_regression.code_mirror`), split by identity (``test_fraction`` held out,
   ``val_fraction`` of the rest chooses λ by the face-region error of
   :class:`training.identity_regression.RegionMetric`, unless ``ridge_alpha`` sets it: the validation identities
   are synthetic, and real photos need more shrinkage to give stable heads). The head averages its estimate from
   the chip and the mirrored estimate from the mirror image and keeps the result within the face model's adult prior
   (whitened radius ≤ the ``prior_radius_quantile`` of the prior's own radii; :class:`facecore.identity.IdentityHead`).
4. Measured on data the fit never saw: the held-out identities of the training distribution and a separate set
   of ``eval_identities`` adult-prior identities (one view each, its own render indices). Each error is the mean
   vertex distance over the face region (centred; also after rigid and after similarity alignment, the NoW
   protocol's), reported as a fraction of the error of predicting the mean identity (the prior's mean for the
   prior set: "the prior's spread").

Writes ``OUT/identity_head.npz`` (:class:`facecore.identity.IdentityHead`), ``OUT/metrics.json`` and the
chips per chunk of identities under ``OUT/renders/`` (a rerun renders only the missing chunks; the features of
any network are computed from them in a minute or two). A rerun with the finished head's settings (the thread
count aside) keeps it: ``training.run all`` resumes past this stage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import chi

from facecore.config import parse_section, section_dict
from facecore.identity import (
    CHIP_SIZE,
    FEATURES,
    GRAPH_FILE,
    GRAPH_OUTPUTS,
    HEAD_FILE,
    IDENTITY_METRICS_FILE,
    IdentityHead,
    get_recogniser,
    graph_features,
)
from models.face.model import FaceModel
from training.data.identity_set import IDENTITY_SAMPLINGS, render_identity_chips, sample_identity_shapes
from training.data.phenotype import covariates_from_cues, default_phenotype_prior
from training.data.synthetic import SYNTHETIC_IDENTITIES, SyntheticConfig, SyntheticFaces
from training.evaluation import identity_region
from training.identity_regression import ALIGNMENTS, LinearMap, RegionMetric, code_mirror, fit_ridge

logger = logging.getLogger(__name__)

METRICS_FILE = IDENTITY_METRICS_FILE  # the run's file names are facecore.identity's: training.export reads them too

EVAL_FIRST_SAMPLE = 50_000_000  # synthetic sample indices of the evaluation set (the training set's start at 0)


@dataclass(frozen=True)
class IdentityStageConfig:
    """The ``identity`` section (see the module doc)."""

    identities: int = 1500
    views: int = 2
    # "phenotype": the adult-prior heads (training and evaluation) go with the sex, age and skin their albedos
    # show (SyntheticConfig.identity); "prior": independent of them
    identity: str = "prior"
    # with identity "phenotype": the head reads the sex, age and ancestry the features show first (a ridge probe to
    # the covariates the albedo's cues imply, its penalty by validation, through the phenotype prior's mean head),
    # and fits the rest with ridge_alpha; combined it is one linear head like the others
    phenotype_head: bool = False
    probe_alpha: float | None = None  # the probe's ridge penalty; null: chosen by the validation identities
    sampling: str = "mixed"
    prior_scale: float = 1.5
    wide_scale: float = 0.5
    wide_fraction: float = 0.5
    eval_identities: int = 200
    test_fraction: float = 0.15
    val_fraction: float = 0.1
    image_size: int = 224
    albedo_size: int = 128
    seed: int = 0
    chunk: int = 100
    threads: int | None = 1
    prior_radius_quantile: float = 0.999
    # the features: None, dlib's descriptor by dlib's runtime; "descriptor" or "grid", a bundle graph computing
    # them (facecore.identity.GRAPH_OUTPUTS) with dlib's weights or a training.identity_finetune run's network
    features_graph: str | None = None
    features_net: str | None = None
    # fit on each training chip and on this many photo-like copies of it (JPEG q25–90, blur σ ≤ 1 px). Tried
    # against the grid head's JPEG sensitivity on the fixture photos: one copy made it worse (1.4 → 1.7 mm)
    photo_copies: int = 0
    # the ridge penalty (relative to the rows); null: chosen by the held-out synthetic identities' error. Those
    # choose little shrinkage, which real photos (outside the synthetic features) turn into unstable heads
    ridge_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.identity not in SYNTHETIC_IDENTITIES:
            raise ValueError(f"identity: expected one of {SYNTHETIC_IDENTITIES}, got {self.identity!r}")
        if self.probe_alpha is not None and not self.probe_alpha > 0:
            raise ValueError("probe_alpha: expected a positive penalty or null")
        if self.phenotype_head and self.identity != "phenotype":
            raise ValueError("phenotype_head: needs identity: phenotype (heads that go with their albedos)")
        if self.phenotype_head and self.photo_copies:
            raise ValueError("phenotype_head: fits on the clean chips only (photo_copies: 0)")
        if self.sampling not in IDENTITY_SAMPLINGS:
            raise ValueError(f"sampling: expected one of {IDENTITY_SAMPLINGS}, got {self.sampling!r}")
        if self.identities < 4 or self.views < 1 or self.eval_identities < 2 or self.chunk < 1:
            raise ValueError("identities ≥ 4, views ≥ 1, eval_identities ≥ 2 and chunk ≥ 1 are needed")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1):
            raise ValueError("test_fraction and val_fraction: expected fractions in (0, 1)")
        if not 0 < self.prior_radius_quantile < 1:
            raise ValueError("prior_radius_quantile: expected a fraction in (0, 1)")
        if self.features_graph is not None and self.features_graph not in GRAPH_OUTPUTS:
            raise ValueError(
                f"features_graph: expected one of {tuple(GRAPH_OUTPUTS)} or null, got {self.features_graph!r}"
            )
        if self.photo_copies < 0:
            raise ValueError("photo_copies: expected ≥ 0")
        if self.ridge_alpha is not None and not self.ridge_alpha > 0:
            raise ValueError("ridge_alpha: expected a positive penalty or null")
        if self.features_net is not None and self.features_graph is None:
            raise ValueError("features_net: needs features_graph (which output of the network to fit on)")
        if min(self.prior_scale, self.wide_scale) <= 0 or not 0 <= self.wide_fraction <= 1:
            raise ValueError("prior_scale and wide_scale must be positive, wide_fraction in [0, 1]")


@dataclass(frozen=True)
class _Part:
    """A set of identities: how they are drawn and where their renders start in the synthetic stream."""

    name: str
    identities: int
    views: int
    sampling: dict[str, Any]
    first_sample: int


def _renders(cfg: IdentityStageConfig, part: _Part, faces: SyntheticFaces, folder: Path) -> dict[str, np.ndarray]:
    """Shapes (N, K), the service's chips (N, V, 150, 150, 3) uint8, "a face was found" (N, V) and yaw (N, V) of
    a part, rendered by chunk (a chunk on disk is not rendered again)."""
    chunks = []
    recogniser = get_recogniser()
    coupled = faces.config.identity == "phenotype"
    tag = f"{part.name}_phenotype" if coupled else part.name
    for c, start in enumerate(range(0, part.identities, cfg.chunk)):
        path = folder / f"{tag}_chips_c{c:04d}.npz"
        n = min(cfg.chunk, part.identities - start)
        if not path.exists():
            t = time.perf_counter()
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (part.first_sample > 0) * 10_007 + c)
            first = part.first_sample + start * part.views
            albedo = faces.sample_params(range(first, first + n * part.views, part.views))[0] if coupled else None
            shapes, _ = sample_identity_shapes(faces.face_model, n, g, **part.sampling, albedo=albedo)
            chips = render_identity_chips(
                faces, shapes, part.views, first_index=first, chip_size=CHIP_SIZE, align="detect5", cut=recogniser.chip
            )
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, shapes=chips.shapes, chips=chips.chips, found=chips.detected, yaw=chips.yaw_deg)
            tmp.rename(path)
            logger.info(
                "%s chunk %d: %d renders, %.0f %% with a face, %.2f s each",
                part.name, c, n * part.views, 100 * chips.detected.mean(), (time.perf_counter() - t) / (n * part.views),
            )  # fmt: skip
        with np.load(path) as data:
            chunks.append({k: data[k] for k in data.files})
    return {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}


def _describe(data: dict[str, np.ndarray], describe: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """Shapes, features (N, V, 2, D: chip, mirrored chip; NaN where no face was found) and yaw of rendered chips;
    ``describe``: (M, 150, 150, 3) uint8 chips → (M, 2, D)."""
    found = data["found"]
    features = describe(data["chips"][found])
    desc = np.full((*found.shape, 2, features.shape[-1]), np.nan)
    desc[found] = features
    return {"shapes": data["shapes"], "desc": desc, "yaw": data["yaw"]}


def _phenotype_fit(
    c: IdentityStageConfig,
    faces: SyntheticFaces,
    train: dict[str, np.ndarray],
    fit: np.ndarray,
    val: np.ndarray,
    with_mirrored: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    region_error: Callable[[np.ndarray, np.ndarray], float],
    alphas: dict[str, list[float]],
) -> tuple[LinearMap, dict[str, Any]]:
    """The ``phenotype_head`` fit: features → the covariates the identity's albedo cues imply (ridge, penalty by
    validation), through the phenotype prior's mean head, plus a ridge on what that leaves; one linear map."""
    prior = default_phenotype_prior()
    n = len(train["shapes"])
    albedo, _ = faces.sample_params(range(0, n * c.views, c.views))  # each identity's albedo: its view 0's
    half = (0.5, 0.5, 0.5)
    cues = zip(albedo.male.tolist(), albedo.hair_grey.tolist(), albedo.melanin.tolist(), strict=True)
    z_all = np.stack([covariates_from_cues(m, g, mel, half) for m, g, mel in cues])

    def rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, _ = _rows(train, ids)
        found = np.isfinite(train["desc"][ids]).all((-2, -1))
        z = np.broadcast_to(z_all[ids][:, None], (*found.shape, z_all.shape[1]))[found]
        x2, y2 = with_mirrored(x, y)
        return x2, y2, np.concatenate([z, z])  # a mirror image shows the same person

    (xf, yf, zf), (xv, yv, zv) = rows(fit), rows(val)
    probe = fit_ridge(xf, zf, xv, zv, **({} if c.probe_alpha is None else {"alphas": [c.probe_alpha]}))
    rf, rv = yf - prior.mean(probe(xf)), yv - prior.mean(probe(xv))
    residual = fit_ridge(xf, rf, xv, rv, val_error=region_error, **alphas)
    if not (np.allclose(probe.x_mean, residual.x_mean) and np.allclose(probe.x_std, residual.x_std)):
        raise RuntimeError("the probe and the residual fit standardised their features differently")
    W = probe.W @ prior.coef[1:] + residual.W
    y_mean = prior.coef[0] + probe.y_mean @ prior.coef[1:] + residual.y_mean
    z_val = probe(xv)
    report = {
        "alpha": probe.alpha,
        "covariates": list(prior.covariates),
        "validation_r2": [round(float(r), 4) for r in 1 - ((z_val - zv) ** 2).mean(0) / zv.var(0)],
        "validation_sex_accuracy": round(float(((z_val[:, 0] > 0.5) == (zv[:, 0] > 0.5)).mean()), 4),
    }
    logger.info("phenotype probe: %s", report)
    return LinearMap(residual.x_mean, residual.x_std, W, y_mean, residual.alpha), report


def degrade_chips(chips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(..., S, S, 3) uint8 chips as a photo's might come: each blurred (σ uniform in 0–1 px; none below 0.2) and
    JPEG-compressed at a quality uniform in 25–90."""
    import io

    from PIL import Image, ImageFilter

    flat = np.asarray(chips).reshape(-1, *np.shape(chips)[-3:])
    out = np.empty_like(flat)
    for i, chip in enumerate(flat):
        image = Image.fromarray(chip)
        sigma = rng.uniform(0.0, 1.0)
        if sigma > 0.2:
            image = image.filter(ImageFilter.GaussianBlur(sigma))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(25, 91)))
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out.reshape(np.shape(chips))


def export_graph(output: str, features_net: str | Path | None, out: Path) -> dict[str, Any]:
    """Export the feature graph computing ``output`` (:data:`facecore.identity.GRAPH_OUTPUTS`) of dlib's network
    (``features_net``: a ``training.identity_finetune`` run's instead) as ``out/``:data:`GRAPH_FILE` (float16
    weights, as bundles store them); returns its bundle graph entry (``manifest.json["graphs"]``)."""
    from facecore.identity import FEATURES_GRAPH_OUTPUT
    from training.export import _spec
    from training.identity_finetune import export_features

    graph, parity = export_features(features_net, out / GRAPH_FILE, output)
    return _spec(graph, out / GRAPH_FILE, parity, {FEATURES_GRAPH_OUTPUT: (2, GRAPH_OUTPUTS[output])}, fp16=True)


def graph_describer(path: Path, batch: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """The feature graph (:data:`facecore.identity.FEATURES_GRAPH`) on onnxruntime, as the service
    runs it: (M, 150, 150, 3) uint8 chips → (M, 2, D) features of each chip and its mirror image."""
    import onnxruntime as ort

    from facecore.identity import FEATURES_GRAPH_INPUT, chips_input, pair_features

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def describe(chips: np.ndarray) -> np.ndarray:
        parts = [
            pair_features(session.run(None, {FEATURES_GRAPH_INPUT: chips_input(chips[i : i + batch])})[0])
            for i in range(0, len(chips), batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 2, session.get_outputs()[0].shape[-1]))

    return describe


def _rows(data: dict[str, np.ndarray], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detected single views of identities ``ids``: features (R, 2, 128), codes (R, K), |yaw| (R,)."""
    desc, yaw = data["desc"][ids], data["yaw"][ids]
    found = np.isfinite(desc).all((-2, -1))
    shapes = np.broadcast_to(data["shapes"][ids][:, None], (*found.shape, data["shapes"].shape[1]))
    return desc[found], shapes[found], np.abs(yaw[found])


def _scores(metric: RegionMetric, head: IdentityHead, x: np.ndarray, y: np.ndarray, y_mean: np.ndarray,
            yaw: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Head error and mean-identity error (mm, face region) and their ratio, centred, rigid and similarity-aligned
    (:data:`training.identity_regression.ALIGNMENTS`); by yaw; and the
    fitted map on the chip alone (``single_centred_ratio``, without the mirror image's estimate)."""
    z_true, z_pred = metric.to_z(y), metric.to_z(head(x))
    z_mean = np.broadcast_to(metric.to_z(y_mean[None]), z_true.shape)
    single = metric.error_mm(metric.to_z(head.single(x[:, 0])), z_true).mean()
    out: dict[str, float] = {"rows": len(x), "single_centred_ratio": single / metric.error_mm(z_mean, z_true).mean()}
    for label, rigid, scale in ALIGNMENTS:
        err, base = metric.error_mm(z_pred, z_true, rigid, scale), metric.error_mm(z_mean, z_true, rigid, scale)
        out |= {
            f"{label}_mm": err.mean(),
            f"{label}_mean_identity_mm": base.mean(),
            f"{label}_ratio": err.mean() / base.mean(),
        }
        if label == "centred":
            for name, sel in (("yaw_below_20", yaw < 20), ("yaw_above_40", yaw >= 40)):
                if sel.any():
                    out[f"centred_ratio_{name}"] = err[sel].mean() / base[sel].mean()
    return {k: float(v) for k, v in out.items()}


def run(cfg: Mapping[str, Any], out: Path) -> None:
    """``python -m training.run identity``: see the module doc; config section ``identity``."""
    c = parse_section(IdentityStageConfig, cfg.get("identity"), "identity")
    done = out / METRICS_FILE

    def settings(config: Mapping[str, Any]) -> dict:  # what the head depends on (not the thread count)
        return {k: v for k, v in json.loads(json.dumps(config)).items() if k != "threads"}

    if done.is_file() and settings(json.loads(done.read_text()).get("config") or {}) == settings(section_dict(c)):
        logger.info("identity: %s is this config's finished head; nothing to do", out)
        return
    if c.threads is not None:
        torch.set_num_threads(c.threads)
    t0 = time.perf_counter()
    folder = out / "renders"
    folder.mkdir(parents=True, exist_ok=True)
    fm = FaceModel.from_file()
    synthetic = SyntheticConfig(image_size=c.image_size, albedo_size=c.albedo_size, seed=c.seed, identity=c.identity)
    faces = SyntheticFaces(synthetic, fm)
    train_sampling = {
        "sampling": c.sampling, "prior_scale": c.prior_scale, "wide_scale": c.wide_scale,
        "wide_fraction": c.wide_fraction,
    }  # fmt: skip
    train = _renders(c, _Part("train", c.identities, c.views, train_sampling, 0), faces, folder)
    prior = _renders(
        c, _Part("eval_prior", c.eval_identities, 1, {"sampling": "prior"}, EVAL_FIRST_SAMPLE), faces, folder
    )
    t_data = time.perf_counter() - t0
    t = time.perf_counter()
    graph_spec = None
    if c.features_graph is None:
        features, describe = FEATURES, get_recogniser().describe_with_mirror
    else:  # the graph the bundle will carry, run as the service runs it
        graph_spec = export_graph(c.features_graph, c.features_net, out)
        features, describe = graph_features(c.features_graph), graph_describer(out / GRAPH_FILE)
    rng = np.random.default_rng(c.seed + 17)
    copies = [
        _describe({**train, "chips": degrade_chips(train["chips"], rng)}, describe) for _ in range(c.photo_copies)
    ]
    train, prior = _describe(train, describe), _describe(prior, describe)
    t_features = time.perf_counter() - t

    order = np.random.default_rng(c.seed).permutation(c.identities)
    n_test = max(1, round(c.test_fraction * c.identities))
    n_val = max(1, round(c.val_fraction * (c.identities - n_test)))
    test, val, fit = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    arrays = fm.arrays
    metric = RegionMetric(arrays, identity_region(arrays))
    mirror, mirror_offset = code_mirror(arrays)

    def with_mirrored(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the chips and of their mirror images (with the mirrored codes)."""
        return np.concatenate([x[:, 0], x[:, 1]]), np.concatenate([y, y @ mirror + mirror_offset])

    def fit_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The clean and the photo-like rows of identities ``ids``, each with its mirror image."""
        parts = [with_mirrored(*_rows(data, ids)[:2]) for data in (train, *copies)]
        return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])

    (x_fit, y_fit), (x_val, y_val) = fit_rows(fit), fit_rows(val)
    if len(x_fit) < 2 or len(x_val) < 1:
        raise ValueError(
            f"identity: too few renders with a detected face ({len(x_fit)} to fit, {len(x_val)} to validate)"
        )

    def region_error(pred: np.ndarray, true: np.ndarray) -> float:
        return float(metric.error_mm(metric.to_z(pred), metric.to_z(true)).mean())

    t = time.perf_counter()
    alphas = {} if c.ridge_alpha is None else {"alphas": [c.ridge_alpha]}
    probe = None
    if c.phenotype_head:
        ridge, probe = _phenotype_fit(c, faces, train, fit, val, with_mirrored, region_error, alphas)
    else:
        ridge = fit_ridge(x_fit, y_fit, x_val, y_val, val_error=region_error, **alphas)
    radius = chi.ppf(c.prior_radius_quantile, fm.n_shape)  # ‖ε‖ of prior samples, ε ~ N(0, I_K)
    limit = (np.asarray(arrays.shape_prior_mean), np.asarray(arrays.shape_prior_chol), np.array(radius))
    head = IdentityHead(ridge.x_mean, ridge.x_std, ridge.W, ridge.y_mean, mirror, mirror_offset, *limit, features)
    t_fit = time.perf_counter() - t
    head.save(out / HEAD_FILE)

    x_test, y_test, yaw_test = _rows(train, test)
    x_prior, y_prior, yaw_prior = _rows(prior, np.arange(c.eval_identities))
    metrics = {
        "features": head.features,
        "model": "ridge" if probe is None else "phenotype probe + ridge",
        "ridge_alpha": ridge.alpha,
        "phenotype_probe": probe,
        "train_identities": len(fit) + len(val),
        "train_rows": len(x_fit) + len(x_val),
        "photo_copies": c.photo_copies,
        "face_found": float(np.isfinite(train["desc"]).all((-2, -1)).mean()),
        "held_out": _scores(
            metric, head, x_test, y_test, train["shapes"][np.concatenate([fit, val])].mean(0), yaw_test
        ),
        "held_out_prior": _scores(metric, head, x_prior, y_prior, np.asarray(arrays.shape_prior_mean), yaw_prior),
        "seconds": {"data": t_data, "features": t_features, "fit": t_fit, "total": time.perf_counter() - t0},
        "features_graph": graph_spec,
        "config": section_dict(c),
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    logger.info(
        "identity head: held-out identities %.3f of the mean identity's error, adult prior %.3f of its spread "
        "(centred face region; rigid %.3f / %.3f; similarity %.3f / %.3f); %.0f s",
        metrics["held_out"]["centred_ratio"], metrics["held_out_prior"]["centred_ratio"],
        metrics["held_out"]["rigid_ratio"], metrics["held_out_prior"]["rigid_ratio"],
        metrics["held_out"]["similarity_ratio"], metrics["held_out_prior"]["similarity_ratio"],
        metrics["seconds"]["total"],
    )  # fmt: skip
