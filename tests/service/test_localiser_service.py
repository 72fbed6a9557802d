"""/reconstruct with a bundle that has a landmarks graph: the crops are cut where the localiser says."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from facecore import detect, localise
from facecore.bundle import BundleError, load_bundle
from service.app import create_app
from service.settings import Settings

FRONTAL = Path(__file__).resolve().parents[1] / "fixtures" / "photos" / "cc0-interfaces-001.jpg"


def reconstruct(bundle: Path, tmp_path: Path) -> dict:
    settings = Settings(bundle=bundle, results_dir=tmp_path / "results", max_upload_bytes=2_000_000)
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/reconstruct",
            files={"image": ("face.jpg", FRONTAL.read_bytes(), "image/jpeg")},
            data={"texture_size": "256", "mesh_resolution": "64", "outputs": "albedo"},
        )
    assert r.status_code == 200, r.text
    return r.json()


def test_reconstruct_cuts_its_crops_around_the_localisers_anchors(localised_bundle, tiny_bundle, tmp_path):
    import onnxruntime as ort

    body = reconstruct(localised_bundle, tmp_path)
    face = body["face"]
    assert face["aligned_on"] == "localiser" and body["timings_ms"]["landmarks"] > 0
    # by hand: the graph on onnxruntime, two passes from dlib's 5 points (facecore.localise)
    bundle = load_bundle(localised_bundle)
    spec = bundle.manifest.graphs[localise.GRAPH]
    session = ort.InferenceSession(str(bundle.root / spec.file), providers=["CPUExecutionProvider"])

    async def run_graph(name, inputs):
        return dict(zip([localise.GRAPH_OUTPUT], session.run(None, dict(inputs)), strict=True))

    image = np.asarray(Image.open(FRONTAL).convert("RGB"))
    found = asyncio.run(localise.localise(run_graph, image, np.array(face["points5"]), spec.inputs["image"].shape[-1]))
    want = detect.alignment_anchors(found)
    np.testing.assert_allclose(face["anchors"], want, atol=2e-3)
    # the untrained localiser re-frames: its anchors are not dlib's, and the reconstruction follows them
    dlib = detect.alignment_anchors(np.array(face["points5"]))
    assert np.abs(want - dlib).max() > 2.0
    plain = reconstruct(tiny_bundle, tmp_path)["face"]
    assert plain["aligned_on"] == "points5" and np.allclose(plain["anchors"], dlib, atol=2e-3)
    assert np.abs(np.array(plain["landmarks68"]) - np.array(face["landmarks68"])).max() > 1.0


def test_a_landmarks_graph_needs_its_manifest_section(localised_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(localised_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["localiser"]["crop_scale"] == localise.CROP_SCALE and manifest["localiser"]["passes"] >= 1
    del manifest["localiser"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="localiser"):
        load_bundle(copy)


def test_the_head_is_refined_onto_the_localisers_landmarks(localised_bundle, tmp_path):
    unrefined = tmp_path / "unrefined"
    shutil.copytree(localised_bundle, unrefined)
    manifest = json.loads((unrefined / "manifest.json").read_text())
    manifest["localiser"]["refine"] = False
    (unrefined / "manifest.json").write_text(json.dumps(manifest))
    refined = reconstruct(localised_bundle, tmp_path)
    plain = reconstruct(unrefined, tmp_path / "b")
    assert refined["face"]["refined"] and not plain["face"]["refined"]
    assert refined["timings_ms"]["refine"] > 0 and "refine" not in plain["timings_ms"]
    found = np.array(refined["face"]["localiser68"])
    assert np.allclose(found, plain["face"]["localiser68"])  # the same localiser, the same photo
    iod = np.linalg.norm(found[36] - found[45])

    def error(body: dict) -> float:
        return float(np.linalg.norm(np.array(body["face"]["landmarks68"]) - found, axis=1).mean() / iod)

    assert error(refined) < 0.5 * error(plain)


def test_a_degenerate_localiser_answer_falls_back_to_dlibs_framing(localised_bundle, tmp_path, monkeypatch):
    async def collapsed(run_graph, image, points, *args, **kwargs):
        return np.zeros((68, 2))  # every point at one place: no similarity maps the template onto it

    monkeypatch.setattr(localise, "localise", collapsed)
    body = reconstruct(localised_bundle, tmp_path)
    face = body["face"]
    assert face["aligned_on"] == "points5" and not face["refined"] and "localiser68" not in face
    np.testing.assert_allclose(face["anchors"], detect.alignment_anchors(np.array(face["points5"])), atol=2e-3)


def test_a_refinement_that_cannot_run_keeps_the_encoders_codes(localised_bundle, tmp_path, monkeypatch):
    from facecore import refine

    def impossible(model, codes, target, size):
        raise ValueError("camera: the scale must be positive, got -1.0")

    monkeypatch.setattr(refine, "refine", impossible)
    face = reconstruct(localised_bundle, tmp_path)["face"]
    assert face["aligned_on"] == "localiser" and not face["refined"]
