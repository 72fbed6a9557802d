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
    renders = sorted(p.name for p in (tiny_run / "renders").iterdir())
    assert renders == ["eval_prior_chips_c0000.npz", "train_chips_c0000.npz", "train_chips_c0001.npz"]


def test_stage_resumes_from_its_render_chunks(tiny_run):
    stamps = {p: p.stat().st_mtime_ns for p in (tiny_run / "renders").iterdir()}
    before = IdentityHead.load(tiny_run / HEAD_FILE)
    assert main(["identity", "--config", str(TINY), "--out", str(tiny_run.parent)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tiny_run / "renders").iterdir()} == stamps  # nothing re-rendered
    np.testing.assert_array_equal(IdentityHead.load(tiny_run / HEAD_FILE).weight, before.weight)


@pytest.mark.parametrize("graph", ["descriptor", "grid"])
def test_stage_fits_on_a_feature_graph(tiny_run, tmp_path, graph):
    """With ``features_graph`` the same renders go through the exported feature graph; the head reads it. The
    descriptor graph of a network saved by training.identity_finetune (dlib's own weights here) reproduces the
    dlib head; the grid graph gives 1024 features and goes into a bundle."""
    import shutil

    import torch

    from facecore.identity import graph_features
    from models.identity import FaceEmbedder
    from training.identity import GRAPH_FILE
    from training.identity_finetune import NET_FILE, FinetuneConfig, ShapeReader, save_net

    shutil.copytree(tiny_run, tmp_path / "identity")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "identity" / "renders").iterdir()}
    sets = ["--set", f"identity.features_graph={graph}"]
    if graph == "grid":
        sets += ["--set", "identity.ridge_alpha=3"]
    if graph == "descriptor":
        reader = ShapeReader(FaceEmbedder.from_dlib_dat(), torch.zeros(150), torch.ones(150))
        sets += ["--set", f"identity.features_net={save_net(reader, tmp_path / NET_FILE, FinetuneConfig())}"]
    assert main(["identity", "--config", str(TINY), "--out", str(tmp_path), *sets]) == 0
    run = tmp_path / "identity"
    assert {p.name: p.stat().st_mtime_ns for p in (run / "renders").iterdir()} == stamps  # the renders are reused
    head = IdentityHead.load(run / HEAD_FILE)
    metrics = json.loads((run / METRICS_FILE).read_text())
    assert head.features == graph_features(graph) and (run / GRAPH_FILE).is_file()
    if graph == "grid":
        assert metrics["ridge_alpha"] == 3.0  # fixed by the config, not chosen on the validation identities
    assert metrics["features_graph"]["parity_max_abs"] < 1e-2  # export_onnx checked it against its own bound
    if graph == "descriptor":  # dlib's own weights (fp16): the dlib head to within rounding of the features
        dlib_head = IdentityHead.load(tiny_run / HEAD_FILE)
        x = np.random.default_rng(0).normal(dlib_head.x_mean, dlib_head.x_std, (4, 2, 128))
        assert np.abs(head(x) - dlib_head(x)).max() < 0.05 * np.abs(dlib_head(x) - dlib_head.prior_mean).max()
    else:
        assert head.n_features == 1024
        bundle = load_bundle(add_identity_head(BUNDLE, run, tmp_path / "bundle"))
        assert bundle.manifest.graphs["identity_features"].outputs["features"].shape == [None, 1024]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("identity.sampling=adults", "identity: sampling: expected one of"),
        ("identity.identity=adults", "identity: identity: expected one of"),
        ("identity.phenotype_head=true", "phenotype_head: needs identity: phenotype"),
        ("identity.probe_alpha=-1", "probe_alpha: expected a positive"),
        ("identity.photo_copies=1 identity.identity=phenotype identity.phenotype_head=true", "clean chips only"),
        ("identity.colour=1", "colour"),
        ("identity.views=0", "views ≥ 1"),
        ("identity.features_graph=pixels", "features_graph: expected one of"),
        ("identity.features_net=net.pt", "features_net: needs features_graph"),
        ("identity.ridge_alpha=0", "ridge_alpha: expected a positive"),
    ],
)
def test_stage_refuses_bad_config(tmp_path, caplog, override, message):
    sets = [a for one in override.split() for a in ("--set", one)]
    assert main(["identity", "--config", str(TINY), "--out", str(tmp_path), *sets]) == 2
    assert message in caplog.text


def test_stage_with_heads_that_go_with_their_faces(tmp_path):
    """identity: phenotype renders heads drawn given their albedos' cues (own chunk files); phenotype_head fits the
    covariates first, through the phenotype prior, and the rest after: still one linear head of the same kind."""
    sets = ["identity.identity=phenotype", "identity.phenotype_head=true"]
    assert (
        main(["identity", "--config", str(TINY), "--out", str(tmp_path)] + [a for x in sets for a in ("--set", x)]) == 0
    )
    run = tmp_path / "identity"
    renders = sorted(p.name for p in (run / "renders").iterdir())
    assert renders == [
        "eval_prior_phenotype_chips_c0000.npz", "train_phenotype_chips_c0000.npz", "train_phenotype_chips_c0001.npz"
    ]  # fmt: skip
    metrics = json.loads((run / METRICS_FILE).read_text())
    probe = metrics["phenotype_probe"]
    assert metrics["model"] == "phenotype probe + ridge" and probe["covariates"] == [
        "gender",
        "age",
        "african",
        "asian",
    ]
    assert len(probe["validation_r2"]) == 4 and 0.0 <= probe["validation_sex_accuracy"] <= 1.0
    head = IdentityHead.load(run / HEAD_FILE)
    assert head.n_shape == 150 and np.isfinite(head.weight).all()
    assert metrics["held_out_prior"]["centred_mean_identity_mm"] > 1.0


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


def test_photo_like_copies_of_chips():
    """degrade_chips: same shape and dtype, blurred and JPEG-compressed (changed, yet the same picture), and
    deterministic in its generator."""
    from PIL import Image

    from training.identity import degrade_chips

    photo = Path(__file__).resolve().parents[1] / "fixtures" / "photos" / "cc0-interfaces-001.jpg"
    chip = np.asarray(Image.open(photo).convert("RGB").resize((150, 150)))
    chips = np.stack([chip, chip[:, ::-1]])[None]  # (1, 2, 150, 150, 3): identities × views
    a = degrade_chips(chips, np.random.default_rng(3))
    b = degrade_chips(chips, np.random.default_rng(3))
    assert a.shape == chips.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    diff = np.abs(a.astype(float) - chips).mean((-3, -2, -1))
    assert (diff > 0.3).all() and (diff < 12).all(), diff
