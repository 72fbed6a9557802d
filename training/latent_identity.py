"""/generate's head from its face: the generator's latent → identity, the bundle graph ``codes`` (issue 13 item 5).

    python -m training.latent_identity --bundle DIR --out DIR [--samples 4000] [--version V]

Without it, ``/generate`` draws the head from the face model's prior, whatever the albedo shows: a face with
stubble and grey hair gets a young woman's head as often as an old man's. People's shape goes with their sex, age
and ancestry (:mod:`models.face.phenotype`: a man's face is ~7.5 mm longer brow to chin), and so do the cues an
albedo shows. This fits the mapping in three steps, each measured on data its fit never saw:

1. **Cue readers** (ridge regressions on the map averaged down to ``READ_SIZE``², sRGB): the sex cue (stubble,
   brows, hairline), the grey-hair fraction and log skin melanin, fitted on procedural truth maps, whose
   parameters are known (:mod:`training.data.procedural_albedo`, the maps AlbedoGAN learned); the sex and grey
   readings become probabilities by Platt scaling on held-out maps. Reported: held-out sex and grey-hair accuracy,
   grey and melanin R².
2. **Teacher heads**: ``samples`` latents (z ~ N(0, I), truncation ψ ~ U(0.4, 1) as /generate may ask) through
   the bundle's mapping and albedo graphs (onnxruntime, as the service runs them); each map's readings → the
   expected phenotype covariates of those cues (:func:`cue_covariates`: the synthetic source's
   :func:`training.data.phenotype.covariates_from_cues` at its expected draws) → the mean head of those covariates
   (:class:`models.face.phenotype.PhenotypePrior`).
3. **Latent → head**: a ridge map from w (normalised per dimension) to the map's three readings, the penalty
   chosen on the last ``validation`` fraction by the face-region error of the heads those predicted readings give
   against the teacher heads (:class:`training.identity_regression.RegionMetric`), refitted on all. The graph
   ``codes`` is ``(ws, noise) → shape``: the readings w·A + b, the same Platt scaling and expected covariates as the
   teacher (:func:`cue_covariates`), the phenotype prior's mean head of those, plus ``noise · Lᵀ`` (``L`` the prior's
   residual factor): a seed's head is the mean its face implies plus its own random rest (the service draws ``noise``
   from the seed, as it drew the prior head before). The manifest records the held-out numbers (``latent_identity``),
   among them the brow-to-chin length of the mean heads of held-out latents whose maps read male and female.

The detail code stays 0 for /generate: nothing here knows a generated face's detail (the synthetic source has none).
Run it after the generator is final (``--replace-generator`` and :mod:`training.albedo_mean` change what a latent
draws, and drop the graph).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facecore.bundle import CODES_GRAPH as GRAPH
from facecore.bundle import Bundle, edited_copy, load_bundle
from facecore.geometry import FaceModelArrays, landmarks_3d
from facecore.texture import box_downsample
from models.face.phenotype import PhenotypePrior
from service.engine.sessions import GraphSession, open_sessions
from training.albedo_latent import generated_maps, ridge, w_statistics
from training.data.phenotype import covariates, default_phenotype_prior

READ_SIZE = 32
CUES = ("male", "hair_grey", "log_melanin")
LAMBDAS = (1e-1, 1.0, 10.0, 100.0, 1000.0, 10_000.0)
logger = logging.getLogger(__name__)


def _read_features(maps: np.ndarray) -> np.ndarray:
    """(N, 3, R, R) sRGB maps in [0, 1] → (N, 3·READ_SIZE²) features."""
    small = np.stack([box_downsample(m.transpose(1, 2, 0), READ_SIZE) for m in maps])
    return small.reshape(len(maps), -1).astype(np.float64)


def truth_maps(count: int, seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3·R²) features of procedural truth maps and their (count, 3) cues (male, grey, log melanin)."""
    from models.face.model import FaceModel
    from training.data.procedural_albedo import ProceduralAlbedo, sample_albedo_params
    from training.data.skin import linear_to_srgb

    albedo = ProceduralAlbedo(FaceModel.from_file())
    g = torch.Generator().manual_seed(seed)
    feats, cues = [], []
    for start in range(0, count, 64):
        p = sample_albedo_params(min(64, count - start), g)
        with torch.no_grad():
            maps = linear_to_srgb(albedo(p, size=size).clamp(0, 1)).numpy()
        feats.append(_read_features(maps))
        cues.append(np.stack([p.male.numpy(), p.hair_grey.numpy(), np.log(p.melanin.numpy())], 1))
    return np.concatenate(feats), np.concatenate(cues).astype(np.float64)


def _split(n: int, validation: float) -> int:
    n_val = max(1, int(round(validation * n)))
    if n - n_val < 2:
        raise ValueError(f"{n} samples: too few to fit and validate (need at least {n_val + 2})")
    return n_val


def _platt(score: np.ndarray, label: np.ndarray, iterations: int = 50) -> np.ndarray:
    """(slope, offset) of P(label) = σ(slope · score + offset), by Newton's method on the log-loss (lightly
    penalised, so separable scores stay finite)."""
    theta = np.zeros(2)
    X = np.stack([score, np.ones_like(score)], 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (p - label) + 1e-3 * theta
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-3 * np.eye(2)
        theta -= np.linalg.solve(hess, grad)
    return theta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class CueReaders:
    """Linear readings of (male, grey, log melanin) from map features, and the probabilities of a male face and of
    grey hair from the first two (Platt scaling fitted on held-out readings)."""

    weight: np.ndarray  # (D, 3)
    bias: np.ndarray  # (3,)
    platt: np.ndarray  # (2, 2): (slope, offset) of P(male), P(grey hair)

    def read(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) readings of (N, D) features."""
        return x @ self.weight + self.bias

    def probabilities(self, reading: np.ndarray) -> np.ndarray:
        """(N, 2) P(male), P(grey hair) of (N, 3) readings."""
        return _sigmoid(reading[:, :2] * self.platt[:, 0] + self.platt[:, 1])


def cue_covariates(reading: torch.Tensor, platt: torch.Tensor) -> torch.Tensor:
    """(N, 4) expected covariates (gender, age, african, asian) of (N, 3) readings (male, grey, log melanin) and the
    (2, 2) Platt scaling of the first two: :func:`training.data.phenotype.covariates` at its expected draws (u = ½)
    for the read skin and sex probability, mixed with and without grey hair (of the read amount, at least 0.2) by
    its probability. Torch, so that the ``codes`` graph computes exactly what the teacher heads were."""
    prob = torch.sigmoid(reading[:, :2] * platt[:, 0] + platt[:, 1])
    p_male, p_grey = prob[:, 0], prob[:, 1]
    with_grey = covariates(p_male, reading[:, 1].clamp(0.2, 1.0), reading[:, 2], 0.5, 0.5, 0.5)
    without = covariates(p_male, torch.zeros_like(p_male), reading[:, 2], 0.5, 0.5, 0.5)
    return p_grey[:, None] * with_grey + (1.0 - p_grey[:, None]) * without


def fit_readers(x: np.ndarray, cues: np.ndarray, validation: float = 0.2) -> tuple[CueReaders, dict]:
    """Ridge cue readers (one penalty per cue, chosen on the held-out tail) and Platt scaling of the male and grey
    readings on that tail; the readers are then refitted on all maps."""
    n_val = _split(len(x), validation)
    mx, sx = x[:-n_val].mean(0), x[:-n_val].std(0) + 1e-6
    z = (x - mx) / sx
    A = np.zeros((x.shape[1], len(CUES)))
    b = np.zeros(len(CUES))
    platt = np.zeros((2, 2))
    report = {"maps": len(x), "validation_maps": n_val}
    for j, cue in enumerate(CUES):
        t = cues[:, j]
        errors = {}
        for lam in LAMBDAS:
            a, c = ridge(z[:-n_val], t[:-n_val], lam * len(x))
            errors[lam] = float(((z[-n_val:] @ a + c - t[-n_val:]) ** 2).mean())
        lam = min(errors, key=errors.__getitem__)
        a, c = ridge(z[:-n_val], t[:-n_val], lam * len(x))
        pred = z[-n_val:] @ a + c
        if j < 2:  # male, grey hair: a probability of the reading
            label = (t[-n_val:] > 0.5 if cue == "male" else t[-n_val:] > 0).astype(np.float64)
            platt[j] = _platt(pred, label)
            prob = _sigmoid(platt[j, 0] * pred + platt[j, 1])
            report[f"{cue}_accuracy"] = round(float(((prob > 0.5) == (label > 0.5)).mean()), 4)
        if j > 0:
            report[f"{cue}_r2"] = round(1.0 - errors[lam] / float(t[-n_val:].var()), 4)
        A[:, j], b[j] = ridge(z, t, lam * len(x))
    return CueReaders(A / sx[:, None], b - (mx / sx) @ A, platt), report


def generator_samples(
    bundle: Bundle, sessions: Mapping[str, GraphSession], count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(count, w_dim) truncated latents and (count, 3, R, R) their maps through the bundle's graphs."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count, bundle.manifest.codes.z_dim)).astype(np.float32)
    psi = rng.uniform(0.4, 1.0, (count, 1)).astype(np.float32)
    w = np.concatenate([sessions["mapping"].run({"z": z[s : s + 256]})["ws"][:, 0] for s in range(0, count, 256)])
    w = (bundle.w_avg[None] + psi * (w - bundle.w_avg[None])).astype(np.float32)
    return w, generated_maps(sessions["albedo"], w, bundle.manifest.codes.num_ws)


def landmark_distance_mm(model: FaceModelArrays, shapes: np.ndarray, a: int, b: int) -> np.ndarray:
    """(N,) distance (mm) between landmarks ``a`` and ``b`` (iBUG 68 order) of (N, K) identity codes' neutral heads."""
    from training.evaluation import neutral_vertices

    lmk = 1000.0 * landmarks_3d(model, neutral_vertices(model, shapes))
    return np.linalg.norm(lmk[:, a] - lmk[:, b], axis=1)


def face_length_mm(model: FaceModelArrays, shapes: np.ndarray) -> np.ndarray:
    """(N,) brow-to-chin length (landmarks 27–8, neutral, mm) of (N, K) identity codes."""
    return landmark_distance_mm(model, shapes, 27, 8)


class CodesGraph(nn.Module):
    """(B, num_ws, w_dim) ws, (B, K) noise → (B, K) shape: the readings w·A + b → :func:`cue_covariates` → the
    phenotype prior's mean head, plus noise · Lᵀ (L its residual factor)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, platt: np.ndarray, prior: PhenotypePrior):
        super().__init__()
        for name, value in (("weight", weight), ("bias", bias), ("platt", platt), ("coef", prior.coef)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))
        self.register_buffer("residual_t", torch.as_tensor(prior.resid_chol.T, dtype=torch.float32))

    def forward(self, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        reading = ws[:, 0] @ self.weight + self.bias
        z = cue_covariates(reading, self.platt)
        return self.coef[0] + z @ self.coef[1:] + noise @ self.residual_t


def fit_codes(
    bundle: Bundle,
    mapping: GraphSession,
    w: np.ndarray,
    reading: np.ndarray,
    readers: CueReaders,
    prior: PhenotypePrior,
    validation: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Ridge w → the maps' readings (normalised W units); the penalty by the held-out face-region error of the heads
    the predicted readings give against the teacher heads the maps' own readings give. Returns (A, b, report)."""
    from training.evaluation import identity_region
    from training.identity_regression import RegionMetric

    model = bundle.face_model
    metric = RegionMetric(model, identity_region(model))
    platt = torch.from_numpy(np.asarray(readers.platt, np.float64))

    def heads(r: np.ndarray) -> np.ndarray:
        return prior.mean(cue_covariates(torch.from_numpy(r), platt).numpy())

    mean, std = w_statistics(mapping, bundle.manifest.codes.z_dim)
    x = (w.astype(np.float64) - mean) / std
    n_val = _split(len(x), validation)
    truth = metric.to_z(heads(reading[-n_val:]))
    errors = {}
    for lam in LAMBDAS:
        A, b = ridge(x[:-n_val], reading[:-n_val], lam)
        errors[lam] = float(metric.error_mm(metric.to_z(heads(x[-n_val:] @ A + b)), truth).mean())
    best = min(errors, key=errors.__getitem__)
    prior_mean = np.broadcast_to(metric.to_z(np.asarray(model.shape_prior_mean, np.float64)[None]), truth.shape)
    spread = float(metric.error_mm(prior_mean, truth).mean())
    report = {
        "samples": len(x),
        "validation_samples": n_val,
        "penalty": best,
        "face_region_error_mm": round(errors[best], 3),
        "teacher_spread_mm": round(spread, 3),  # the teacher heads' distance from the prior's mean face
        "error_ratio": round(errors[best] / spread, 4),
    }
    A, b = ridge(x, reading, best)
    return A / std[:, None], b - (mean / std) @ A, report


def add_codes_graph(
    bundle: str | Path,
    out: str | Path,
    count: int = 4000,
    truth_count: int = 3000,
    seed: int = 20261205,
    version: str | None = None,
    prior: PhenotypePrior | None = None,
) -> Path:
    """A copy of ``bundle`` with the ``codes`` graph (see the module)."""
    from training.export import GraphExport, graph_edit

    source = load_bundle(bundle)
    if not source.capabilities["generate"]:
        raise ValueError(f"{source.root}: needs AlbedoGAN (mapping, albedo)")
    prior = prior if prior is not None else default_phenotype_prior()
    fm = source.face_model
    if prior.n_shape != fm.shape_basis.shape[0] or fm.metadata.get("name") != "anny-head":
        raise ValueError(f"{source.root}: the phenotype prior is built for the default anny face model, not this one")
    x, cues = truth_maps(truth_count, seed)
    readers, readers_report = fit_readers(x, cues)
    logger.info("cue readers on held-out truth maps: %s", readers_report)
    sessions = open_sessions(source, ["CPUExecutionProvider"], 0)
    w, maps = generator_samples(source, sessions, count, seed + 1)
    reading = readers.read(_read_features(maps))
    prob = readers.probabilities(reading)
    weight, bias, report = fit_codes(source, sessions["mapping"], w, reading, readers, prior)
    graph_module = CodesGraph(weight, bias, readers.platt, prior)
    n_val = report["validation_samples"]
    with torch.no_grad():
        held_out = torch.from_numpy(w[-n_val:, None].astype(np.float32))
        mean_heads = graph_module(held_out, torch.zeros(n_val, prior.n_shape)).double().numpy()
    length = face_length_mm(source.face_model, mean_heads)
    male = prob[-n_val:, 0] > 0.5
    report["held_out_face_length_mm"] = {  # brow to chin of the mean heads the graph gives held-out latents
        "read_male": round(float(length[male].mean()), 2) if male.any() else None,
        "read_female": round(float(length[~male].mean()), 2) if (~male).any() else None,
    }
    report.update(
        readers=readers_report,
        generated_male_fraction=round(float(prob[:, 0].mean()), 4),  # expected fractions over the generated maps
        generated_grey_fraction=round(float(prob[:, 1].mean()), 4),
        seed=seed,
    )
    logger.info("latent → identity: %s", report)
    m = source.manifest.codes
    graph = GraphExport(
        graph_module,
        {"ws": torch.randn(2, m.num_ws, m.w_dim), "noise": torch.randn(2, m.shape)},
        ["shape"],
    )

    edit = graph_edit(GRAPH, graph, {"shape": (2, m.shape)}, "latent_identity", report)
    return edited_copy(bundle, out, version, edit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.latent_identity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the copy with the graph (may be --bundle itself)")
    ap.add_argument("--version", help="the copy's manifest version")
    ap.add_argument("--samples", type=int, default=4000, help="generator latents the map is fitted on")
    ap.add_argument("--truth", type=int, default=3000, help="procedural truth maps the cue readers are fitted on")
    ap.add_argument("--seed", type=int, default=20261205)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.samples < 16 or args.truth < 16:
        ap.error("--samples and --truth must be >= 16")
    try:
        add_codes_graph(args.bundle, args.out, args.samples, args.truth, args.seed, args.version)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
