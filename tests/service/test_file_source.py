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
    bundle = load_bundle(EMBEDDED_BUNDLE)
    model = bundle.face_model
    req = types.SimpleNamespace(texture_size=64, mesh_resolution=32, blendshapes=False, outputs=("glb",))
    shape = np.asarray(model.shape_prior_mean, np.float32) + 0.5
    verts = P.geo.decode_vertices(model, shape[None], np.zeros((1, model.n_expr)))[0]
    now = P._source(bundle, req, np.full((64, 64, 3), 0.5), None, verts, shape)
    later = P.FileSource.from_bytes(now.to_bytes())
    assert later.shape is not None and np.array_equal(later.shape, shape)
    glb = P._encode(bundle, now, {"glb"}, P._detailed(bundle, now, P.Timer()), P.Timer())["mesh.glb"]
    assert glb == P.make_files(bundle, now.to_bytes(), {"glb"}, P.Timer())["mesh.glb"]
    old = P.FileSource.from_bytes(P._source(bundle, req, np.full((64, 64, 3), 0.5), None, verts).to_bytes())
    assert old.shape is None
