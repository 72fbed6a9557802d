"""The ``identity`` stage (training.identity) end to end at CI size, its config checks, and the bundle it feeds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from facecore.bundle import load_bundle
from facecore.identity import FEATURES, IdentityHead
from training.export import add_identity_head
from training.identity import HEAD_FILE, METRICS_FILE
from training.run import main

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("face_recognition_models") is None, reason="face-recognition-models not installed"
    ),
]
TINY = Path(__file__).resolve().parents[2] / "training" / "configs" / "identity_tiny.yaml"
BUNDLE = Path(__file__).resolve().parents[2] / "service" / "bundled" / "default"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("identity_run")
    assert main(["identity", "--config", str(TINY), "--out", str(out)]) == 0
    return out / "identity"


def test_stage_writes_a_head_and_held_out_metrics(tiny_run):
    head = IdentityHead.load(tiny_run / HEAD_FILE)
    assert head.features == FEATURES and head.n_shape == 150
    metrics = json.loads((tiny_run / METRICS_FILE).read_text())
    assert metrics["face_found"] > 0.5 and metrics["train_rows"] >= 4
    for part in ("held_out", "held_out_prior"):
        m = metrics[part]
        assert m["rows"] >= 1 and m["centred_mean_identity_mm"] > 1.0  # identities differ by millimetres
        assert m["centred_ratio"] == pytest.approx(m["centred_mm"] / m["centred_mean_identity_mm"])
    features = sorted(p.name for p in (tiny_run / "features").iterdir())
    assert features == ["eval_prior_c0000.npz", "train_c0000.npz", "train_c0001.npz"]


def test_stage_resumes_from_its_feature_chunks(tiny_run):
    stamps = {p: p.stat().st_mtime_ns for p in (tiny_run / "features").iterdir()}
    before = IdentityHead.load(tiny_run / HEAD_FILE)
    assert main(["identity", "--config", str(TINY), "--out", str(tiny_run.parent)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tiny_run / "features").iterdir()} == stamps  # nothing re-rendered
    np.testing.assert_array_equal(IdentityHead.load(tiny_run / HEAD_FILE).weight, before.weight)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("identity.sampling=adults", "identity: sampling: expected one of"),
        ("identity.colour=1", "colour"),
        ("identity.views=0", "views ≥ 1"),
    ],
)
def test_stage_refuses_bad_config(tmp_path, caplog, override, message):
    assert main(["identity", "--config", str(TINY), "--out", str(tmp_path), "--set", override]) == 2
    assert message in caplog.text


def test_head_goes_into_a_copy_of_the_bundle(tiny_run, tmp_path):
    source = load_bundle(BUNDLE).manifest.identity  # the embedded bundle may carry a head of its own
    out = add_identity_head(BUNDLE, tiny_run, tmp_path / "bundle")
    bundle = load_bundle(out)
    assert bundle.identity_head is not None and bundle.manifest.identity.features == FEATURES
    assert (
        bundle.manifest.identity.metrics["held_out_prior"]
        == json.loads((tiny_run / METRICS_FILE).read_text())["held_out_prior"]
    )
    assert load_bundle(BUNDLE).manifest.identity == source  # the source is left as it was
    assert source is None or bundle.manifest.identity.sha256 != source.sha256  # and the copy has the new head
