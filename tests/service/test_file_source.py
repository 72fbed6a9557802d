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
