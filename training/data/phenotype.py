"""Synthetic heads that go with their faces: identity drawn given the sex, age and ancestry the albedo shows.

The procedural albedo (:mod:`training.data.procedural_albedo`) shows sex (stubble, brows, hairline), age (grey
hair) and skin pigment; drawn independently of them, a head's shape could not be read off those cues, although
on real photos they go together and a recognition network sees them first. :func:`phenotype_covariates` turns an
albedo's cues into anny's phenotype covariates and :func:`phenotype_shapes` draws the identity from the face
model's :class:`models.face.phenotype.PhenotypePrior` given them:

- gender (anny's: 0 male … 1 female): male-ish albedos U(0, 0.2), the others U(0.8, 1) (the generation prior's two
  ranges);
- age (anny 0.77 ≈ 18 y … 0.87 ≈ 75 y): grey hair puts the person in the older part of the range, the more grey
  the older; without grey hair anywhere below the top tenth;
- ancestry: the African fraction rises with epidermal melanin (logistic in log melanin, one half at 0.2, the
  moderately-to-darkly pigmented boundary), the rest is split between Asian and European ancestry by a
  Beta(0.7, 0.7) draw (the prior's Dirichlet(0.7) marginal), fair skin (melanin < 0.03) mostly European.

Over the procedural albedo's draws these covariates cover the prior's ranges, so the coupled heads have about the
prior's spread; what the covariates do not explain (three quarters of the vertex variance: the face's own local
shape, build, height) stays random.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from models.face.build_default import ADULT_AGE
from models.face.model import FaceModel
from models.face.phenotype import DEFAULT_PATH, PhenotypePrior
from training.data.procedural_albedo import AlbedoParams

AGE_RANGE = ADULT_AGE  # anny units: the generation prior's adults
AFRICAN_HALF_MELANIN = 0.2
AFRICAN_WIDTH = 0.3  # of the logistic, in log melanin


@lru_cache(maxsize=1)
def default_phenotype_prior() -> PhenotypePrior:
    return PhenotypePrior.load(DEFAULT_PATH)


def covariates(
    male: torch.Tensor,
    grey: torch.Tensor,
    log_melanin: torch.Tensor,
    u_gender: torch.Tensor | float,
    u_age: torch.Tensor | float,
    asian_share: torch.Tensor | float,
) -> torch.Tensor:
    """(N, 4) covariates (gender, age, african, asian) of (N,) cues (see the module doc), batched in torch (the
    ``codes`` graph computes it too): ``male`` may be a probability (the gender is then the mixture's), grey ≤ 0.1
    counts as none, ``u_*`` are the uniform draws of gender and age and ``asian_share`` the Beta(0.7, 0.7) draw."""
    gender = male * 0.2 * u_gender + (1.0 - male) * (0.8 + 0.2 * u_gender)  # anny: 0 male, 1 female
    t = torch.where(grey > 0.1, torch.clamp(0.45 + 0.55 * grey * (0.8 + 0.4 * u_age), max=1.0), 0.9 * u_age)
    age = AGE_RANGE[0] + (AGE_RANGE[1] - AGE_RANGE[0]) * t
    log_melanin = log_melanin.clamp(min=math.log(1e-4))
    african = torch.sigmoid((log_melanin - math.log(AFRICAN_HALF_MELANIN)) / AFRICAN_WIDTH)
    fair = log_melanin < math.log(0.03)
    share = asian_share * torch.where(fair, torch.full_like(african, 0.3), torch.ones_like(african))
    return torch.stack([gender, age, african, (1.0 - african) * share], -1)


def covariates_from_cues(male: float, grey: float, melanin: float, u: tuple[float, float, float]) -> np.ndarray:
    """(4,) :func:`covariates` of one face's cues and three uniform draws ``u``; ``u = (0.5, 0.5, 0.5)`` gives the
    expected face of its cues."""
    cue = [torch.tensor([float(v)], dtype=torch.float64) for v in (male, grey, math.log(max(melanin, 1e-4)))]
    return covariates(*cue, u[0], u[1], _beta07(u[2]))[0].numpy()


def phenotype_covariates(albedo: AlbedoParams, generator: torch.Generator) -> np.ndarray:
    """(B, 4) covariates (gender, age, african, asian) for the albedos' cues; 3 draws per sample from
    ``generator`` (CPU), one sample after the other."""
    rows = []
    for i in range(len(albedo)):
        u = tuple(torch.rand(3, generator=generator, dtype=torch.float64).tolist())
        male = 1.0 if float(albedo.male[i]) > 0.5 else 0.0
        rows.append(covariates_from_cues(male, float(albedo.hair_grey[i]), float(albedo.melanin[i]), u))
    return np.stack(rows)


def _beta07(u: float) -> float:
    """Beta(0.7, 0.7) by inverting its CDF on a grid (one uniform draw → one sample; 0.5 → 0.5)."""
    return float(np.interp(u, _BETA07_CDF, _BETA07_X))


def _beta07_table() -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(0.0, 1.0, 2001)
    mid = 0.5 * (x[1:] + x[:-1])
    pdf = (mid * (1 - mid)) ** (0.7 - 1)
    cdf = np.concatenate([[0.0], np.cumsum(pdf)])
    return cdf / cdf[-1], x


_BETA07_CDF, _BETA07_X = _beta07_table()


def phenotype_shapes(
    face_model: FaceModel,
    albedo: AlbedoParams,
    generator: torch.Generator,
    residual_scale: float = 1.0,
    prior: PhenotypePrior | None = None,
) -> torch.Tensor:
    """(B, K) float32 identity codes that go with the albedos (see the module doc): covariates, then the residual
    ε ~ N(0, I_K), from ``generator`` (CPU), sample by sample."""
    prior = prior if prior is not None else default_phenotype_prior()
    if prior.n_shape != face_model.n_shape or face_model.arrays.metadata.get("name") != "anny-head":
        raise ValueError("identity 'phenotype' needs the default anny face model (its phenotype prior is built for it)")
    z, eps = [], []
    for i in range(len(albedo)):
        z.append(phenotype_covariates(albedo.select(i), generator)[0])
        eps.append(torch.randn(prior.n_shape, generator=generator, dtype=torch.float64).numpy())
    return torch.from_numpy(prior.sample(np.stack(z), np.stack(eps), residual_scale)).float()
