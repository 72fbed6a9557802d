"""/generate's head from its face (training.latent_identity): cue readers, the codes graph, the service's use of it."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from facecore.bundle import BundleError, load_bundle
from service import pipeline as P
from service.engine.sessions import inline_runner, open_sessions
from training.data.phenotype import default_phenotype_prior
from training.latent_identity import CueReaders, cue_covariates, fit_codes, fit_readers, truth_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def with_codes(tiny_bundle, tmp_path_factory):
    from training.latent_identity import add_codes_graph

    return add_codes_graph(tiny_bundle, tmp_path_factory.mktemp("codes") / "b", count=96, truth_count=96, seed=4)


def _generate(bundle, seed, identity=None) -> np.ndarray:
    run_graph = inline_runner(open_sessions(bundle, ["CPUExecutionProvider"], 1))
    req = P.MeshRequest(
        seed, None, None, 0.7, np.zeros(bundle.face_model.n_expr), identity, 256, 32, ("albedo",), False
    )
    result = asyncio.run(P.generate(bundle, run_graph, req, P.Timer()))
    return np.array(result.meta["codes"]["shape"])


def test_cue_readers_read_held_out_truth_maps():
    x, cues = truth_maps(480, seed=1, size=64)
    readers, report = fit_readers(x, cues)
    assert report["maps"] == 480 and report["validation_maps"] == 96
    assert report["male_accuracy"] > 0.7 and report["log_melanin_r2"] > 0.8 and report["hair_grey_r2"] > 0.3
    assert report["hair_grey_accuracy"] > 0.8
    x2, cues2 = truth_maps(192, seed=2, size=64)  # maps no fit saw
    read = readers.read(x2)
    assert np.corrcoef(read[:, 2], cues2[:, 2])[0, 1] > 0.9  # skin melanin
    prob = readers.probabilities(read)
    assert ((prob[:, 0] > 0.5) == (cues2[:, 0] > 0.5)).mean() > 0.7
    assert prob[cues2[:, 0] > 0.5, 0].mean() > prob[cues2[:, 0] < 0.5, 0].mean() + 0.3


def test_covariates_of_read_cues():
    """Readings → expected covariates: a sure man, a sure grey-haired dark-skinned woman, and a face whose sex is a
    coin toss."""
    rows = np.array([[9.0, -9.0, np.log(0.02)], [-9.0, 9.0, np.log(0.5)], [0.0, -9.0, np.log(0.2)]])
    z = cue_covariates(torch.from_numpy(rows), torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)).numpy()
    gender, age, african, asian = z.T
    np.testing.assert_allclose(gender, [0.1, 0.9, 0.5], atol=1e-3)  # anny: 0 male, 1 female
    assert age[1] > age[0] + 0.04 and age[0] == pytest.approx(age[2])  # grey hair: older
    assert african[0] < 0.01 and african[1] > 0.9 and african[2] == pytest.approx(0.5)
    assert asian[0] == pytest.approx(0.3 * 0.5 * (1 - african[0]))  # fair skin: mostly European ancestry


def test_the_graphs_covariates_are_the_synthetic_sources_at_their_expected_draws():
    """cue_covariates (torch, inside the codes graph) = covariates_from_cues (the synthetic source's) at u = ½, mixed
    with and without grey hair by its probability."""
    from training.data.phenotype import covariates_from_cues

    rng = np.random.default_rng(0)
    reading = np.stack([rng.normal(0.5, 0.6, 64), rng.normal(0.2, 0.4, 64), rng.uniform(-5.0, -0.4, 64)], 1)
    platt = np.array([[6.0, -3.0], [9.0, -2.0]])
    got = cue_covariates(torch.from_numpy(reading), torch.from_numpy(platt)).numpy()
    for r, row in zip(reading, got, strict=True):
        p_male, p_grey = 1 / (1 + np.exp(-(r[:2] * platt[:, 0] + platt[:, 1])))
        half = (0.5, 0.5, 0.5)
        with_grey = covariates_from_cues(p_male, float(np.clip(r[1], 0.2, 1.0)), float(np.exp(r[2])), half)
        without = covariates_from_cues(p_male, 0.0, float(np.exp(r[2])), half)
        np.testing.assert_allclose(row, p_grey * with_grey + (1 - p_grey) * without, atol=1e-9)


def test_fit_codes_recovers_linear_readings(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((400, bundle.manifest.codes.w_dim)).astype(np.float32)
    A = rng.standard_normal((w.shape[1], 3)) * 0.05
    reading = w @ A + np.array([0.5, 0.2, -2.0])
    readers = CueReaders(np.zeros((1, 3)), np.zeros(3), np.array([[6.0, -3.0], [9.0, -2.0]]))
    mapping = open_sessions(bundle, ["CPUExecutionProvider"], 1)["mapping"]
    weight, bias, report = fit_codes(bundle, mapping, w, reading, readers, default_phenotype_prior())
    assert report["error_ratio"] < 0.1 and report["validation_samples"] == 60
    assert np.abs(w @ weight + bias - reading).max() < 0.1 * np.abs(reading - reading.mean(0)).max()


def test_generate_draws_the_head_its_face_implies(tiny_bundle, with_codes):
    bundle, plain = load_bundle(with_codes), load_bundle(tiny_bundle)
    spec = bundle.manifest.graphs["codes"]
    assert spec.inputs["noise"].shape == [None, 150] and spec.outputs["shape"].shape == [None, 150]
    report = bundle.manifest.latent_identity
    assert report["samples"] == 96 and np.isfinite(report["error_ratio"]) and "male_accuracy" in report["readers"]
    assert set(report["held_out_face_length_mm"]) == {"read_male", "read_female"}
    shape = _generate(bundle, 5)
    np.testing.assert_array_equal(shape, _generate(bundle, 5))  # a seed gives one person
    assert np.abs(shape - _generate(bundle, 6)).max() > 0.1
    assert np.abs(shape - _generate(plain, 5)).max() > 1e-3  # not the prior's head any more
    # the graph at the seed's latent and noise: the same stream the prior head was drawn from
    sessions = open_sessions(bundle, ["CPUExecutionProvider"], 1)
    z = P.latent_from_seed(5, bundle.manifest.codes.z_dim)[None]
    ws = sessions["mapping"].run({"z": z})["ws"]
    ws = (bundle.w_avg + 0.7 * (ws - bundle.w_avg)).astype(np.float32)
    noise = np.random.default_rng([5, 1]).standard_normal((1, 150)).astype(np.float32)
    codes = ort.InferenceSession(str(with_codes / "codes.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(shape, codes.run(None, {"ws": ws, "noise": noise})[0][0], atol=2e-6)
    explicit = np.linspace(-1, 1, 150).astype(np.float32)
    np.testing.assert_allclose(_generate(bundle, 5, explicit), explicit, atol=1e-6)  # a request's identity wins


def test_bundle_refuses_a_codes_graph_of_the_wrong_shape(with_codes, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(with_codes, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["graphs"]["codes"]["inputs"]["noise"]["shape"] = [None, 10]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="graphs.codes' must take inputs"):
        load_bundle(bad)


def test_edits_of_the_generator_drop_the_codes_graph(with_codes, tmp_path):
    """--replace-generator and albedo_mean change what a latent draws: the graph fitted to the old maps goes."""
    from facecore.bundle import drop_latent_graphs, edited_copy

    bundle = load_bundle(edited_copy(with_codes, tmp_path / "edited", None, drop_latent_graphs))
    assert "codes" not in bundle.manifest.graphs and not (bundle.root / "codes.onnx").exists()
    assert getattr(bundle.manifest, "latent_identity", None) is None


def test_a_latent_far_outside_the_mapping_gives_a_plausible_head(with_codes):
    """An explicit w (the API allows ±10⁴ per coordinate) far outside the mapping's range still gives a head within
    the radius 99.9 % of the prior's own heads stay within (the graph's covariates saturate; the service limits the
    head whatever a bundle's graph gives)."""
    from facecore.geometry import prior_radius

    bundle = load_bundle(with_codes)
    run_graph = inline_runner(open_sessions(bundle, ["CPUExecutionProvider"], 1))
    w = np.full(bundle.manifest.codes.w_dim, 1e4, np.float32)
    req = P.MeshRequest(None, None, w, 1.0, np.zeros(bundle.face_model.n_expr), None, 256, 32, ("albedo",), False)
    shape = np.array(asyncio.run(P.generate(bundle, run_graph, req, P.Timer())).meta["codes"]["shape"])
    model = bundle.face_model
    eps = np.linalg.solve(model.shape_prior_chol.astype(np.float64), shape - model.shape_prior_mean)
    assert np.linalg.norm(eps) <= prior_radius(150) * (1 + 1e-6)
