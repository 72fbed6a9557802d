"""The phenotype prior (models.face.phenotype): the regression's maths, and what the shipped file says about heads."""

from __future__ import annotations

import numpy as np
import pytest

from facecore import geometry as geo
from models.face.model import DEFAULT_FACE_MODEL
from models.face.phenotype import COVARIATES, PhenotypePrior, fit
from training.latent_identity import face_length_mm


@pytest.fixture(scope="module")
def arrays() -> geo.FaceModelArrays:
    return geo.FaceModelArrays.load(DEFAULT_FACE_MODEL)


@pytest.fixture(scope="module")
def prior() -> PhenotypePrior:
    return PhenotypePrior.load()


def test_fit_recovers_a_linear_relation_and_its_residual(tmp_path):
    rng = np.random.default_rng(0)
    n, K = 20_000, 6
    z = rng.uniform(0, 1, (n, 4))
    coef = rng.normal(0, 1, (5, K))
    chol = np.tril(rng.normal(0, 0.3, (K, K))) + 0.5 * np.eye(K)
    codes = np.c_[np.ones(n), z] @ coef + rng.normal(0, 1, (n, K)) @ chol.T
    basis = rng.normal(0, 1, (K, 10, 3))
    p = fit(z, codes, basis)
    np.testing.assert_allclose(p.coef, coef, atol=0.1)
    np.testing.assert_allclose(p.resid_chol @ p.resid_chol.T, chol @ chol.T, atol=0.05)
    assert 0.0 < p.metadata["variance_explained"] < 1.0
    # sampling: the mean plus the residual factor times ε, scaled
    eps = rng.normal(0, 1, (3, K))
    np.testing.assert_allclose(p.sample(z[:3], eps, 2.0), p.mean(z[:3]) + 2.0 * eps @ p.resid_chol.T)
    p.save(tmp_path / "p.npz")
    q = PhenotypePrior.load(tmp_path / "p.npz")
    assert q.covariates == COVARIATES and q.metadata == p.metadata
    np.testing.assert_allclose(q.coef, p.coef, rtol=1e-6, atol=1e-6)  # float32 storage
    with pytest.raises(ValueError, match="z: expected"):
        p.mean(z[:, :3])


def test_shipped_prior_matches_the_face_model_and_says_how_sex_moves_a_face(arrays, prior):
    assert prior.covariates == COVARIATES and prior.n_shape == arrays.shape_basis.shape[0]
    # what the covariates explain of the adult prior (all vertices): a quarter, measured when it was built
    assert 0.15 < prior.metadata["variance_explained"] < 0.5
    prior_cov = arrays.shape_prior_chol.astype(np.float64) @ arrays.shape_prior_chol.astype(np.float64).T
    assert np.trace(prior.resid_chol @ prior.resid_chol.T) < 0.85 * np.trace(prior_cov)
    # anny's gender runs from male (0) to female (1): a man's face is longer (brow to chin)
    men, women = prior.mean(np.array([[0.1, 0.82, 0.1, 0.3]])), prior.mean(np.array([[0.9, 0.82, 0.1, 0.3]]))
    longer = face_length_mm(arrays, men) - face_length_mm(arrays, women)
    assert 4.0 < longer[0] < 15.0
    # the covariates drawn as the generation prior draws them give back the prior's mean head
    rng = np.random.default_rng(0)
    n = 20_000
    male = rng.random(n) < 0.5
    z = np.stack(
        [
            np.where(male, rng.uniform(0, 0.2, n), rng.uniform(0.8, 1, n)),
            rng.uniform(0.77, 0.87, n),
            *rng.dirichlet(np.full(3, 0.7), n).T[:2],
        ],
        axis=1,
    )
    drift = np.abs(face_length_mm(arrays, prior.mean(z).mean(0, keepdims=True)) - face_length_mm(
        arrays, arrays.shape_prior_mean.astype(np.float64)[None]
    ))  # fmt: skip
    assert drift[0] < 0.5
