"""A result's files are the same bytes whether made from the request's outputs now or from its stored source
later (the CLI writes the former, the service often serves the latter)."""

from __future__ import annotations

import types

import numpy as np

from facecore.bundle import load_bundle
from service import pipeline as P
from service.settings import EMBEDDED_BUNDLE


def test_files_made_now_and_from_the_stored_source_are_the_same_bytes():
    bundle = load_bundle(EMBEDDED_BUNDLE)
    req = types.SimpleNamespace(texture_size=256, mesh_resolution=32, blendshapes=False, outputs=("albedo",))
    rng = np.random.default_rng(0)
    albedo = rng.random((256, 256, 3)).astype(np.float32)  # what the albedo graph gives: float32
    verts = np.zeros((bundle.face_model.n_verts, 3))
    now = P._source(bundle, req, albedo, None, verts)
    later = P.FileSource.from_bytes(now.to_bytes())
    assert np.array_equal(now.albedo, later.albedo) and now.albedo.dtype == later.albedo.dtype
    made_now = P._encode(bundle, now, {"albedo"}, None, P.Timer())
    made_later = P.make_files(bundle, now.to_bytes(), {"albedo"}, P.Timer())
    assert made_now["albedo.png"] == made_later["albedo.png"]  # the neck fade included (a float32 map differed)


def test_the_stored_source_keeps_the_identity_the_teeth_are_fitted_to():
    """The exported teeth are fitted behind the head's lips (facecore.assets.head_teeth): the identity code travels
    with the stored source, so the mesh made at the first fetch has the same teeth; a source stored without one
    (before the fit) reads back as None (the mean head's teeth)."""
    from facecore import assets

    bundle = load_bundle(EMBEDDED_BUNDLE)
    model = bundle.face_model
    req = types.SimpleNamespace(texture_size=64, mesh_resolution=32, blendshapes=False, outputs=("glb",))
    rng = np.random.default_rng(0)
    shape = None
    while shape is None or assets.head_teeth(model, shape) is assets.face_assets(model).teeth:  # teeth that move
        draw = model.shape_prior_mean + model.shape_prior_chol @ rng.standard_normal(model.n_shape)
        shape = draw.astype(np.float32)
    verts = P.geo.decode_vertices(model, shape[None], np.zeros((1, model.n_expr)))[0]
    albedo = np.full((64, 64, 3), 0.5)
    now = P._source(bundle, req, albedo, None, verts, shape)
    later = P.FileSource.from_bytes(now.to_bytes())
    assert later.shape is not None and np.array_equal(later.shape, shape)
    glb = P._encode(bundle, now, {"glb"}, P._detailed(bundle, now, P.Timer()), P.Timer())["mesh.glb"]
    assert glb == P.make_files(bundle, now.to_bytes(), {"glb"}, P.Timer())["mesh.glb"]
    mean_teeth = P._source(bundle, req, albedo, None, verts)  # stored without the identity: the mean head's teeth
    assert P.FileSource.from_bytes(mean_teeth.to_bytes()).shape is None
    assert P.make_files(bundle, mean_teeth.to_bytes(), {"glb"}, P.Timer())["mesh.glb"] != glb


def test_generate_and_reconstruct_store_their_identity_for_the_teeth(monkeypatch):
    import asyncio
    from pathlib import Path

    from service.engine.sessions import inline_runner, open_sessions

    bundle = load_bundle(EMBEDDED_BUNDLE)
    run_graph = inline_runner(open_sessions(bundle, ["CPUExecutionProvider"], 1))
    stored, real = [], P._source
    monkeypatch.setattr(P, "_source", lambda *a, **k: stored.append(real(*a, **k)) or stored[-1])
    req = P.MeshRequest(3, None, None, 0.7, np.zeros(bundle.face_model.n_expr), None, 256, 32, ("albedo",), False)
    generated = asyncio.run(P.generate(bundle, run_graph, req, P.Timer()))
    photo = Path(__file__).resolve().parents[1] / "fixtures" / "photos" / "cc0-interfaces-001.jpg"
    image = P.decode_photo(photo.read_bytes(), 50_000_000)
    recon = P.ReconstructRequest("t", 256, 32, ("albedo",), False, "auto", "photo")
    reconstructed = asyncio.run(P.reconstruct(bundle, run_graph, recon, image, P.Timer()))
    for source, result in zip(stored, (generated, reconstructed), strict=True):
        np.testing.assert_allclose(source.shape, result.meta["codes"]["shape"], atol=1e-6)
