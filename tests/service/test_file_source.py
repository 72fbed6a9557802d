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


def test_a_stored_source_reads_back_exactly_and_an_older_npz_still_reads():
    """FileSource's stored layout (header + raw arrays: /generate stores one per request, its .npz took ~4× longer
    to write): every field reads back; an .npz stored by an older service still reads; a truncated source or one
    whose header names another dtype is refused with a ValueError, not read as garbage."""
    import io
    import json

    import pytest

    rng = np.random.default_rng(1)
    source = P.FileSource(
        "a" * 64,
        rng.integers(0, 65536, (32, 32, 3)).astype(np.uint16),
        rng.normal(size=(16, 16)).astype(np.float32).astype(np.float64),
        rng.normal(size=(50, 3)).astype(np.float32).astype(np.float64),
        128,
        32,
        True,
        ("albedo", "glb"),
        rng.normal(size=7).astype(np.float32),
    )
    data = source.to_bytes()
    back = P.FileSource.from_bytes(data)
    for name in ("albedo_steps", "disp", "verts", "shape"):
        assert np.array_equal(getattr(back, name), getattr(source, name)), name
    assert back.albedo_steps.dtype == np.uint16 and back.disp.dtype == np.float64
    assert (back.bundle_digest, back.texture_size, back.mesh_resolution, back.blendshapes, back.outputs) == (
        "a" * 64, 128, 32, True, ("albedo", "glb"),
    )  # fmt: skip
    header = {k: getattr(source, k) for k in P.FileSource._HEADER}
    buf = io.BytesIO()
    np.savez(
        buf,
        albedo=source.albedo_steps,
        disp=source.disp.astype(np.float32),
        verts=source.verts.astype(np.float32),
        header=np.frombuffer(json.dumps(header).encode(), np.uint8),
    )
    older = P.FileSource.from_bytes(buf.getvalue())
    assert np.array_equal(older.albedo_steps, source.albedo_steps) and older.shape is None
    assert np.array_equal(older.disp, source.disp) and np.array_equal(older.verts, source.verts)
    assert (older.texture_size, older.outputs) == (128, ("albedo", "glb"))
    with pytest.raises(ValueError, match="bytes"):
        P.FileSource.from_bytes(data[:-8])
    with pytest.raises(ValueError, match="dtype"):
        P.FileSource.from_bytes(data.replace(b'"<u2"', b'"|O8"', 1))
    with pytest.raises(ValueError, match="shape"):
        P.FileSource.from_bytes(data.replace(b"[16, 16]", b"[-1, 16]", 1))
    for damaged in (b"", data[:12], data.replace(b'"outputs"', b'"outputz"', 1), b"PK\x03\x04 not a zip"):
        with pytest.raises(ValueError):
            P.FileSource.from_bytes(damaged)


def test_generates_displacement_map_is_kept_for_its_expression(monkeypatch):
    """/generate's displacement map (no detail code) depends on the expression alone: asked again for the same
    one, it is the same map without running the graph; another expression runs it; a photo's (its own detail
    code) always runs it."""
    import asyncio

    from service.engine.sessions import inline_runner, open_sessions

    bundle = load_bundle(EMBEDDED_BUNDLE)
    inner = inline_runner(open_sessions(bundle, ["CPUExecutionProvider"], 1))
    calls = []

    async def run_graph(name, inputs):
        calls.append(name)
        return await inner(name, inputs)

    monkeypatch.setattr(P, "_DETAIL_FREE", {})
    neutral = np.zeros(bundle.face_model.n_expr)
    smile = neutral.copy()
    smile[0] = 0.8
    maps = []
    for expression in (neutral, neutral, smile, neutral):
        maps.append(asyncio.run(P._displacement(bundle, run_graph, None, expression, None, P.Timer())))
    assert calls.count("displacement") == 2  # the neutral map once, the smile's once
    assert maps[0] is maps[1] is maps[3] and not maps[0].flags.writeable
    assert list(P._DETAIL_FREE)[-1][1] == neutral.astype(np.float32)[None].tobytes()  # the last used is kept last
    assert not np.array_equal(maps[0], maps[2])
    detail = np.zeros(bundle.manifest.codes.detail)
    for _ in range(2):
        asyncio.run(P._displacement(bundle, run_graph, detail, neutral, np.zeros(3), P.Timer()))
    assert calls.count("displacement") == 4
