"""/reconstruct with a bundle's identity head: the shape code comes from dlib's recognition features through the
head, the camera is refitted to it; the same bundle without the head answers as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from facecore.bundle import BundleError, load_bundle
from facecore.identity import (
    DESCRIPTOR_DIM,
    FEATURES,
    FEATURES_GRAPH,
    IdentityHead,
    chips_input,
    get_recogniser,
    graph_features,
    pair_features,
)
from service.app import create_app
from service.settings import Settings
from training.export import add_identity_head
from training.identity import GRAPH_FILE, HEAD_FILE, METRICS_FILE

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
FRONTAL = PHOTOS / "cc0-interfaces-001.jpg"


def _identity_run(folder: Path, n_shape: int, seed: int = 0, graph: bool = False) -> Path:
    """A stand-in for an ``identity`` stage run: a head with known random weights and its metrics file; with
    ``graph`` the head reads a feature graph (dlib's own weights through training.identity_finetune's export)."""
    rng = np.random.default_rng(seed)
    head = IdentityHead(
        rng.normal(0, 0.1, DESCRIPTOR_DIM), np.full(DESCRIPTOR_DIM, 0.1),
        rng.normal(0, 1 / DESCRIPTOR_DIM, (DESCRIPTOR_DIM, n_shape)), np.zeros(n_shape), np.eye(n_shape),
        np.zeros(n_shape), np.zeros(n_shape), np.eye(n_shape), np.array(1e9),
        graph_features("descriptor") if graph else FEATURES,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    head.save(folder / HEAD_FILE)
    metrics = {"model": "ridge", "ridge_alpha": 1.0, "train_identities": 0, "held_out": {}, "held_out_prior": {}}
    if graph:
        import torch

        from models.identity import FaceEmbedder
        from training.identity import export_graph
        from training.identity_finetune import NET_FILE, FinetuneConfig, ShapeReader, save_net

        reader = ShapeReader(FaceEmbedder.from_dlib_dat(), torch.zeros(n_shape), torch.ones(n_shape))
        save_net(reader, folder / NET_FILE, FinetuneConfig())
        metrics["features_graph"] = export_graph("descriptor", folder / NET_FILE, folder)
    (folder / METRICS_FILE).write_text(json.dumps(metrics))
    return folder


@pytest.fixture(scope="module")
def head_bundle(tiny_bundle, tmp_path_factory) -> Path:
    n_shape = load_bundle(tiny_bundle).manifest.codes.shape
    run = _identity_run(tmp_path_factory.mktemp("identity"), n_shape)
    return add_identity_head(tiny_bundle, run, tmp_path_factory.mktemp("bundles") / "with_head", version="0.0.2")


def _reconstruct(bundle: Path, results: Path) -> dict:
    with TestClient(create_app(Settings(bundle=bundle, results_dir=results))) as client:
        r = client.post(
            "/reconstruct",
            files={"image": ("face.jpg", FRONTAL.read_bytes(), "image/jpeg")},
            data={"texture_size": "256", "mesh_resolution": "64"},
        )
    assert r.status_code == 200, r.text
    return r.json()


def test_bundle_with_and_without_head_load(tiny_bundle, head_bundle):
    plain, headed = load_bundle(tiny_bundle), load_bundle(head_bundle)
    assert plain.identity_head is None and plain.manifest.identity is None
    assert headed.identity_head is not None and headed.manifest.version == "0.0.2"
    assert headed.manifest.identity.file == HEAD_FILE and headed.digest != plain.digest
    # the copy is the bundle plus the head: same files, same manifest apart from the new entry and version
    before = json.loads((tiny_bundle / "manifest.json").read_text())
    after = json.loads((head_bundle / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("identity", "version")} == {
        k: v for k, v in before.items() if k != "version"
    }
    assert sorted(p.name for p in head_bundle.iterdir()) == sorted(
        [*(p.name for p in tiny_bundle.iterdir()), HEAD_FILE]
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["identity"].update(sha256="0" * 64), "sha256 does not match field 'identity.sha256'"),
        (lambda m: m["identity"].update(features="arcface"), "field 'identity.features'"),
        (lambda m: m["identity"].update(file="gone.npz"), "field 'identity.file' names gone.npz"),
    ],
)
def test_bundle_refuses_a_bad_head_entry(head_bundle, tmp_path, edit, message):
    import shutil

    copy = Path(shutil.copytree(head_bundle, tmp_path / "b"))
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_bundle_refuses_a_head_for_another_face_model(tiny_bundle, tmp_path):
    run = _identity_run(tmp_path / "run", n_shape=7)
    with pytest.raises(BundleError, match="to 7 shape coefficients"):
        add_identity_head(tiny_bundle, run, tmp_path / "out")


def test_reconstruct_takes_the_shape_from_the_head(tiny_bundle, head_bundle, tmp_path):
    plain = _reconstruct(tiny_bundle, tmp_path / "plain")
    headed = _reconstruct(head_bundle, tmp_path / "headed")
    assert "identity" not in plain["timings_ms"] and headed["timings_ms"]["identity"] > 0
    # the head on the service's own features of the detected face gives the shape code
    from PIL import Image

    image = np.asarray(Image.open(FRONTAL).convert("RGB"))
    features = get_recogniser().describe(image, np.array(headed["face"]["points5"]))
    expected = load_bundle(head_bundle).identity_head(features)
    np.testing.assert_allclose(headed["codes"]["shape"], expected, atol=2e-6)
    assert np.abs(np.array(plain["codes"]["shape"]) - expected).max() > 0.1
    # everything else the encoder predicts is unchanged; the camera moves only to fit the new head's landmarks
    # (and the light, re-fitted to the photo on the head's normals, moves with the head: facecore.texture.fit_light)
    for key in ("expression", "pose", "detail"):
        assert headed["codes"][key] == plain["codes"][key]
    lmk_plain, lmk_headed = np.array(plain["face"]["landmarks68"]), np.array(headed["face"]["landmarks68"])
    box = np.array(plain["face"]["box"])
    assert np.linalg.norm(lmk_headed - lmk_plain, axis=1).mean() < 0.05 * (box[2] - box[0])


@pytest.fixture(scope="module")
def graph_bundle(tiny_bundle, tmp_path_factory) -> Path:
    n_shape = load_bundle(tiny_bundle).manifest.codes.shape
    run = _identity_run(tmp_path_factory.mktemp("identity_graph"), n_shape, graph=True)
    return add_identity_head(tiny_bundle, run, tmp_path_factory.mktemp("bundles") / "with_graph", version="0.0.3")


def test_head_on_the_feature_graph(tiny_bundle, graph_bundle, tmp_path):
    """A head that reads the fine-tuned feature graph brings it into the bundle, /reconstruct runs it on dlib's chip
    and its mirror image, and a bundle whose manifest lacks the graph is refused."""
    import shutil

    import onnxruntime as ort

    bundle = load_bundle(graph_bundle)
    assert bundle.manifest.identity.features == graph_features("descriptor") and (graph_bundle / GRAPH_FILE).is_file()
    assert bundle.manifest.graphs[FEATURES_GRAPH].weights_dtype == "float16"
    result = _reconstruct(graph_bundle, tmp_path / "graph")
    assert result["timings_ms"]["identity"] > 0

    from PIL import Image

    image = np.asarray(Image.open(FRONTAL).convert("RGB"))
    chip = get_recogniser().chip(image, np.array(result["face"]["points5"]))
    session = ort.InferenceSession(str(graph_bundle / GRAPH_FILE), providers=["CPUExecutionProvider"])
    features = pair_features(session.run(None, {"chips": chips_input(chip[None])})[0])[0]
    np.testing.assert_allclose(result["codes"]["shape"], bundle.identity_head(features), atol=2e-6)
    # the graph here is dlib's own network (fp16 weights): its features are dlib's descriptors to rounding
    dlib = get_recogniser().describe(image, np.array(result["face"]["points5"]))
    assert np.linalg.norm(features - dlib, axis=1).max() < 0.01

    copy = Path(shutil.copytree(graph_bundle, tmp_path / "b"))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["graphs"][FEATURES_GRAPH]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"reads the graph '{FEATURES_GRAPH}'"):
        load_bundle(copy)

    # a dlib-feature head added to that bundle drops the graph it no longer reads
    n_shape = bundle.manifest.codes.shape
    plain = add_identity_head(graph_bundle, _identity_run(tmp_path / "plain_run", n_shape), tmp_path / "plain")
    assert FEATURES_GRAPH not in load_bundle(plain).manifest.graphs and not (plain / GRAPH_FILE).exists()
