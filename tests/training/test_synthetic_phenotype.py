"""Synthetic heads that go with their faces (training.data.phenotype, SyntheticConfig.identity, the identity sets)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.face.model import FaceModel
from training.data.identity_set import sample_identity_shapes
from training.data.phenotype import phenotype_covariates, phenotype_shapes
from training.data.synthetic import SyntheticConfig, SyntheticFaces
from training.latent_identity import face_length_mm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def streams() -> tuple[SyntheticFaces, SyntheticFaces]:
    cfg = SyntheticConfig(image_size=64, albedo_size=64, seed=5)
    return SyntheticFaces(cfg), SyntheticFaces(dataclasses.replace(cfg, identity="phenotype"))


def test_covariates_follow_the_albedo(streams):
    albedo, _ = streams[0].sample_params(range(400))
    z = phenotype_covariates(albedo, torch.Generator().manual_seed(0))
    male, grey, melanin = albedo.male.numpy() > 0.5, albedo.hair_grey.numpy(), albedo.melanin.numpy()
    gender, age, african, asian = z.T
    assert np.all(gender[male] <= 0.2) and np.all(gender[~male] >= 0.8)  # anny: 0 male, 1 female
    assert np.all((age >= 0.77) & (age <= 0.87))
    assert age[grey > 0].mean() > age[grey == 0].mean() + 0.02  # grey hair: older
    assert np.all((african >= 0) & (asian >= 0) & (african + asian <= 1 + 1e-12))
    dark, fair = melanin > 0.3, melanin < 0.05
    assert dark.any() and fair.any()
    assert african[dark].min() > 0.7 and african[fair].max() < 0.05
    # the same generator state gives the same covariates
    np.testing.assert_array_equal(z, phenotype_covariates(albedo, torch.Generator().manual_seed(0)))


def test_phenotype_stream_gives_men_longer_faces_and_keeps_every_other_draw(streams):
    independent, coupled = streams
    albedo0, scene0 = independent.sample_params(range(300))
    albedo1, scene1 = coupled.sample_params(range(300))
    # the head is drawn last: albedo, expression, pose, light and framing are the independent stream's
    for a, b in (
        (albedo0.melanin, albedo1.melanin),
        (scene0.codes.expression, scene1.codes.expression),
        (scene0.codes.pose, scene1.codes.pose),
        (scene0.sh, scene1.sh),
        (scene0.face_fill, scene1.face_fill),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # fmt: skip
    arrays = coupled.face_model.arrays
    male = albedo1.male.numpy() > 0.5
    length0, length1 = (
        face_length_mm(arrays, scene0.codes.shape.double().numpy()),
        face_length_mm(arrays, scene1.codes.shape.double().numpy()),
    )
    assert abs(length0[male].mean() - length0[~male].mean()) < 2.5  # independent: sex does not show in the head
    assert length1[male].mean() - length1[~male].mean() > 5.0  # coupled (the prior file: 7.5 mm at equal age)
    assert 0.7 < length1.std() / length0.std() < 1.3  # about the prior's spread
    # a sample is the same in any batch
    torch.testing.assert_close(coupled.sample_params([7])[1].codes.shape, scene1.codes.shape[7:8], rtol=0, atol=0)


def test_identity_sets_follow_their_albedos(streams):
    independent, _ = streams
    fm = independent.face_model
    albedo, _ = independent.sample_params(range(64))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    wide, _ = sample_identity_shapes(fm, 64, g(), "wide")
    torch.testing.assert_close(sample_identity_shapes(fm, 64, g(), "wide", albedo=albedo)[0], wide)
    coupled, is_wide = sample_identity_shapes(fm, 64, g(), "mixed", albedo=albedo)
    assert not torch.equal(coupled[~is_wide], sample_identity_shapes(fm, 64, g(), "mixed")[0][~is_wide])
    assert torch.isfinite(coupled).all()
    with pytest.raises(ValueError, match="expected 64 parameter sets"):
        sample_identity_shapes(fm, 64, g(), "prior", albedo=albedo.select(torch.arange(10)))


def test_phenotype_needs_the_anny_face_model(streams):
    arrays = streams[0].face_model.arrays
    other = FaceModel(dataclasses.replace(arrays, metadata={**arrays.metadata, "name": "flame"}))
    albedo, _ = streams[0].sample_params([0])
    with pytest.raises(ValueError, match="default anny face model"):
        phenotype_shapes(other, albedo, torch.Generator())
    with pytest.raises(ValueError, match="identity: expected one of"):
        SyntheticConfig(identity="adults")
