"""How sex, age and ancestry move a head: the face model's identity coefficients given anny phenotypes.

The generation prior (``shape_prior_mean`` + ``shape_prior_chol`` · ε) is one Gaussian over plausible adults. Part
of its spread is what a photo shows at a glance — whether the person is a woman or a man, young or old, of which
ancestry — and part of the head's size goes with it. :class:`PhenotypePrior` stores that part: a linear
regression of the identity coefficients on the covariates ``z = (gender, age, african, asian)`` (anny's units:
gender 0 male … 1 female (its two anchors, in that order), age 0.77 ≈ 18 y … 0.87 ≈ 75 y, ancestry fractions;
caucasian is the rest) over adult heads drawn exactly as the prior is drawn, and the Cholesky factor of what is
left, so that

    shape = [1, z] · coef + resid_chol · ε

has the prior's distribution when ``z`` is drawn as the prior draws it, and couples a head with its appearance
when ``z`` comes from the appearance (the synthetic source's sex, grey hair and skin tone:
:func:`training.data.identity_set.phenotype_covariates`).

Built like the face model, from anny (``pip install -e ".[build-face]"``), against the stored face model's basis:

    python -m models.face.phenotype [--n 4000] [--seed 11] [--out models/face/data/anny_phenotype.npz]

Needs no torch and no anny to load.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).parent / "data" / "anny_phenotype.npz"
COVARIATES: tuple[str, ...] = ("gender", "age", "african", "asian")


@dataclass(frozen=True)
class PhenotypePrior:
    """Identity coefficients given phenotype covariates (see the module doc).

    Attributes:
        covariates: the covariate names, in column order of ``z``.
        coef: (1 + C, K) regression: the mean identity of covariates z is ``[1, z] @ coef``.
        resid_chol: (K, K) lower Cholesky factor of the residual covariance.
        metadata: how it was built and what it explains.
    """

    covariates: tuple[str, ...]
    coef: np.ndarray
    resid_chol: np.ndarray
    metadata: dict

    def __post_init__(self) -> None:
        C, K = len(self.covariates), self.coef.shape[1]
        if self.coef.shape != (1 + C, K) or self.resid_chol.shape != (K, K):
            raise ValueError(f"shapes: coef {self.coef.shape}, resid_chol {self.resid_chol.shape} for {C} covariates")

    @property
    def n_shape(self) -> int:
        return int(self.coef.shape[1])

    def mean(self, z: np.ndarray) -> np.ndarray:
        """(N, K) mean identity of (N, C) covariates."""
        z = np.asarray(z, np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.covariates):
            raise ValueError(f"z: expected (N, {len(self.covariates)}), got {z.shape}")
        return self.coef[0] + z @ self.coef[1:]

    def sample(self, z: np.ndarray, eps: np.ndarray, residual_scale: float = 1.0) -> np.ndarray:
        """(N, K) identities: the mean of ``z`` plus ``residual_scale`` · resid_chol · ε for (N, K) ``eps``."""
        eps = np.asarray(eps, np.float64)
        if eps.shape != (len(z), self.n_shape):
            raise ValueError(f"eps: expected ({len(z)}, {self.n_shape}), got {eps.shape}")
        return self.mean(z) + residual_scale * eps @ self.resid_chol.T

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            covariates=np.array(self.covariates),
            coef=self.coef.astype(np.float32),
            resid_chol=self.resid_chol.astype(np.float32),
            metadata=np.array(json.dumps(self.metadata)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> PhenotypePrior:
        with np.load(path, allow_pickle=False) as d:
            return cls(
                covariates=tuple(str(x) for x in d["covariates"]),
                coef=d["coef"].astype(np.float64),
                resid_chol=d["resid_chol"].astype(np.float64),
                metadata=json.loads(str(d["metadata"])),
            )


def fit(
    z: np.ndarray, codes: np.ndarray, basis: np.ndarray, covariates: tuple[str, ...] = COVARIATES
) -> PhenotypePrior:
    """Least-squares regression of (N, K) identity ``codes`` on (N, C) covariates ``z``; ``basis`` (K, V, 3) only
    measures what the covariates explain (vertex variance, all vertices)."""
    z, codes = np.asarray(z, np.float64), np.asarray(codes, np.float64)
    X = np.concatenate([np.ones((len(z), 1)), z], axis=1)
    coef, *_ = np.linalg.lstsq(X, codes, rcond=None)
    resid = codes - X @ coef
    K = codes.shape[1]
    chol = np.linalg.cholesky(np.cov(resid, rowvar=False) + 1e-6 * np.eye(K))
    B = np.asarray(basis, np.float64).reshape(K, -1)

    def vertex_var(c: np.ndarray) -> float:  # mean squared vertex displacement from the sample's mean, m²
        d = (c - c.mean(0)) @ B
        return float((d**2).sum(1).mean() / (B.shape[1] // 3))

    total, left = vertex_var(codes), vertex_var(resid)
    meta = {
        "n": len(z),
        "covariates": list(covariates),
        "vertex_rms_mm": {"prior": 1000 * total**0.5, "residual": 1000 * left**0.5},
        "variance_explained": 1.0 - left / total,
    }
    return PhenotypePrior(tuple(covariates), coef, chol, meta)


def build(n: int = 4000, seed: int = 11, batch: int = 200) -> tuple[PhenotypePrior, np.ndarray, np.ndarray]:
    """Draw ``n`` adult heads as the face model's prior was drawn (:func:`models.face.build_default
    .sample_adult_phenotypes`), project them on the stored face model's basis and fit (needs anny).

    Returns the prior, the covariates (n, C) and the codes (n, K)."""
    from facecore.geometry import FaceModelArrays
    from models.face.build_default import DEFAULT_OUT, HeadTopology, _AnnyHead, sample_adult_phenotypes

    arrays = FaceModelArrays.load(DEFAULT_OUT)
    K = arrays.shape_basis.shape[0]
    B = arrays.shape_basis.astype(np.float64).reshape(K, -1)
    gram = B @ B.T
    head = _AnnyHead()
    topo = HeadTopology(head)
    if topo.n_verts != arrays.mean.shape[0]:
        raise RuntimeError(f"anny head gives {topo.n_verts} vertices, the face model has {arrays.mean.shape[0]}")
    pidx = [head.pheno.index(name) for name in COVARIATES]
    rng = np.random.default_rng(seed)
    zs, codes = [], []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        ph, lc = sample_adult_phenotypes(rng, b, head)
        v, h, _ = head.rest(ph, lc)
        v = topo.assemble(v, h)
        v = v - v[:, : topo.n_skin].mean(1, keepdims=True)
        x = v.reshape(b, -1) - arrays.mean.astype(np.float64).reshape(-1)
        codes.append(np.linalg.solve(gram, B @ x.T).T)
        zs.append(ph[:, pidx])
    z, c = np.concatenate(zs), np.concatenate(codes)
    prior = fit(z, c, arrays.shape_basis)
    drift = np.abs(c.mean(0) - arrays.shape_prior_mean).max()
    prior.metadata.update(
        {"seed": seed, "source": "anny==0.6.2 via models.face.phenotype", "prior_mean_max_abs_diff": float(drift)}
    )
    return prior, z, c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from models.face.build_default import anny_installed

    if not anny_installed():
        return 2
    t = time.time()
    prior, _, _ = build(args.n, args.seed)
    prior.save(args.out)
    m = prior.metadata
    logger.info(
        "wrote %s: covariates explain %.1f %% of the adult prior's vertex variance (RMS %.2f → %.2f mm); %.0f s",
        args.out, 100 * m["variance_explained"], m["vertex_rms_mm"]["prior"], m["vertex_rms_mm"]["residual"],
        time.time() - t,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
