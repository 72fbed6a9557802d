"""The service under hostile input and faults (issue 16's probe list).

Every case answers a 4xx with a JSON ``detail`` or a 503 with Retry-After — never a 500 — and the server is
ready afterwards. Faults (an unwritable results folder, a dead batcher worker, eviction under a tiny cap,
planted symlinks, crashed writers' temporary folders) are produced for real, not mocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import pipeline
from service.app import create_app
from service.engine.admission import Stage, deadline
from service.engine.batcher import DynamicBatcher, QueueFull
from service.settings import Settings
from service.store import ResultStore

PHOTO = Path(__file__).resolve().parents[1] / "fixtures" / "photos" / "cc0-interfaces-001.jpg"
SMALL = {"texture_size": 256, "mesh_resolution": 64}


@pytest.fixture(scope="module")
def client(tiny_bundle, tmp_path_factory):
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path_factory.mktemp("results"), max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        yield c


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def upload(client, data: bytes, **form):
    form = {k: str(v) for k, v in {**SMALL, **form}.items()}
    return client.post("/reconstruct", files={"image": ("x.png", data, "image/png")}, data=form)


def assert_refused(r, statuses=(413, 415, 422)):
    assert r.status_code in (*statuses, 503), (r.status_code, r.text[:300])
    assert r.status_code < 500 or r.headers.get("retry-after"), r.headers
    assert r.headers["content-type"].startswith("application/json") and "detail" in r.json(), r.text[:300]


def assert_ready(client):
    r = client.get("/health/ready")
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------- hostile images
IMAGES = [
    ("16x16", lambda: png(np.full((16, 16, 3), 120, np.uint8)), "auto"),
    ("31x200", lambda: png(np.full((200, 31, 3), 120, np.uint8)), "auto"),
    ("20000x20", lambda: png(np.full((20, 20000, 3), 120, np.uint8)), "auto"),
    ("20x20000", lambda: png(np.full((20000, 20, 3), 120, np.uint8)), "auto"),
    ("20000x20 cnn", lambda: png(np.full((20, 20000, 3), 120, np.uint8)), "cnn"),
    ("16x16 cnn", lambda: png(np.full((16, 16, 3), 120, np.uint8)), "cnn"),
    ("2000x40 cnn", lambda: png(np.full((40, 2000, 3), 120, np.uint8)), "cnn"),
    ("1x1", lambda: png(np.zeros((1, 1, 3), np.uint8)), "hog"),
    ("grey 16-bit", lambda: png(np.full((64, 64), 30000, np.uint16)), "auto"),
    ("palette", lambda: png(np.zeros((64, 64), np.uint8), "P"), "auto"),
    ("rgba", lambda: png(np.zeros((64, 64, 4), np.uint8)), "auto"),
]


@pytest.mark.parametrize(("name", "make", "detector"), IMAGES, ids=[i[0] for i in IMAGES])
def test_hostile_images_are_4xx(client, name, make, detector):
    assert_refused(upload(client, make(), detector=detector))
    assert_ready(client)


def test_sixteen_bit_grey_png_keeps_its_tones():
    grey = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    rgb = pipeline.decode_photo(png(grey), 10**6)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 120 <= rgb[0, 32, 0] <= 135  # not all white
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


# ------------------------------------------------------------------------------------------- hostile bodies
BODIES = [
    {"z": [3e38] * 32},
    {"z": [-3e38] * 32},
    {"w": [3e38] * 32},
    {"w": [-3e38] * 32},
    {"z": [1e39] * 32},
    {"z": [1e4] * 31 + [-1e4], "truncation": 1.5},  # the largest accepted: must still be 200, checked below
    {"seed": 7.0, "mesh_resolution": 64.0},  # integers as JSON Schema counts them: accepted, checked below
    {"seed": True},
    {"seed": "7"},
    {"seed": 7.5},
    {"texture_size": "512"},
    {"blendshapes": 1},
    {"z": [], "w": [], "outputs": []},
    {"outputs": ["glb", "glb", "fbx"]},
]


@pytest.mark.parametrize("body", BODIES, ids=[json.dumps(b)[:40] for b in BODIES])
def test_hostile_bodies(client, body):
    r = client.post("/generate", json={**SMALL, **body})
    if body.get("z", [0])[:1] == [1e4] or body.get("seed") == 7.0:
        assert r.status_code == 200, r.text  # extreme but representable latents, integral floats: accepted
    else:
        assert_refused(r)
    assert_ready(client)


def test_chunked_oversize_body_is_413(client):
    def chunks():
        for _ in range(12):
            yield b" " * (1024 * 1024)

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "detail" in r.json()
    form = b'--b\r\ncontent-disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
    r = client.post(
        "/reconstruct",
        content=iter([form] + [b"\0" * (1024 * 1024)] * 12),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and "detail" in r.json()
    small = iter([json.dumps({"seed": 5, **SMALL}).encode()])  # chunked and small: served
    assert client.post("/generate", content=small, headers={"content-type": "application/json"}).status_code == 200
    assert_ready(client)


# ------------------------------------------------------------------------------------------- damaged store
def test_damaged_meta_json_is_404_and_recomputed(client):
    runtime = client.app.state.runtime
    body = {"seed": 31, **SMALL}
    first = client.post("/generate", json=body).json()
    folder = runtime.store.root / first["id"]
    (folder / "meta.json").write_text("{}")
    assert client.get(f"/results/{first['id']}").status_code == 404
    again = client.post("/generate", json=body)  # recomputed and answered from memory
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    (folder / "meta.json").write_text("[1, 2")
    assert client.get(f"/results/{first['id']}").status_code == 404
    assert client.post("/generate?format=zip", json=body).status_code == 200
    assert_ready(client)


def test_symlinks_in_the_results_folder_are_never_followed(client, tmp_path):
    runtime = client.app.state.runtime
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text('{"files": [], "codes": {}, "bundle": {}, "timings_ms": {}}')
    old = time.time() - 5000
    os.utime(secret_file, (old, old))
    planted = "ab" * 32
    (runtime.store.root / planted).symlink_to(tmp_path, target_is_directory=True)
    assert client.get(f"/results/{planted}").status_code == 404
    assert client.get(f"/results/{planted}/secret.txt").status_code == 404
    real = client.post("/generate", json={"seed": 32, **SMALL}).json()["id"]
    (runtime.store.root / real / "leak.txt").symlink_to(secret_file)
    (runtime.store.root / real / "meta2.json").symlink_to(secret_file)
    assert client.get(f"/results/{real}/leak.txt").status_code == 404
    runtime.store.evict()
    assert secret_file.is_file() and abs(secret_file.stat().st_mtime - old) < 1  # not touched, not deleted
    (runtime.store.root / planted).unlink()
    assert_ready(client)


def test_unwritable_results_folder_is_503_and_not_ready(client, tmp_path):
    runtime = client.app.state.runtime
    root = runtime.store.root
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    runtime.store.root = blocker / "results"  # ENOTDIR for every write, even as root
    runtime._writable = (0.0, True)
    try:
        for url in ("/generate", "/generate?format=glb", "/generate?format=zip"):
            r = client.post(url, json={"seed": 33, **SMALL})
            assert r.status_code == 503 and r.headers["retry-after"] and "not writable" in r.json()["detail"]
        r = client.get("/health/ready")
        assert r.status_code == 503 and "not writable" in json.dumps(r.json())
    finally:
        runtime.store.root = root
        runtime._writable = (0.0, True)
    assert_ready(client)


# ------------------------------------------------------------------------------------------- tiny cap, races
def test_tiny_cap_no_5xx_no_truncation_and_over_cap_results_served(tiny_bundle, tmp_path):
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "r", results_max_bytes=1024 * 1024, max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        big = {"seed": 40, "texture_size": 512, "mesh_resolution": 256, "blendshapes": True}
        for _ in range(2):  # larger than the cap: answered directly every time, never "evicted; retry"
            r_glb = c.post("/generate?format=glb", json=big)
            assert r_glb.status_code == 200 and r_glb.content[:4] == b"glTF"
            assert len(r_glb.content) > settings.results_max_bytes
        r = c.post("/generate", json=big)  # files are made when fetched: one over the cap is answered from memory
        assert r.status_code == 200
        for _ in range(2):
            glb = c.get(r.json()["links"]["mesh.glb"])
            assert glb.status_code == 200 and glb.content == r_glb.content

        def writer(i):
            body = {"seed": 1000 + i, "texture_size": 256, "mesh_resolution": 64, "outputs": ["albedo", "glb"]}
            r = c.post("/generate", json=body)  # ~0.3 MB each: about three fit under the cap
            out = [r.status_code]
            if r.status_code == 200:
                for url in r.json()["links"].values():
                    f = c.get(url)
                    out.append(f.status_code)
                    if f.status_code == 200:
                        assert len(f.content) == int(f.headers["content-length"])
            return out

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = [s for row in pool.map(writer, range(18)) for s in row]
        assert statuses and all(s in (200, 404) for s in statuses), statuses
        assert statuses.count(200) > 18
        sizes = sum(f.stat().st_size for f in (tmp_path / "r").rglob("*") if f.is_file() and f.name != ".secret")
        assert sizes <= settings.results_max_bytes
        assert_ready(c)


def test_an_open_download_survives_eviction(tmp_path):
    store = ResultStore(tmp_path, max_bytes=10**9, ttl_s=3600)
    rid = "cd" * 32
    payload = os.urandom(3 << 20)
    store.put(rid, {"mesh.glb": payload}, {"k": 1})
    f, size = store.open(rid, "mesh.glb")
    head = f.read(1000)
    assert store.delete(rid) and store.open(rid, "mesh.glb") is None
    assert size == len(payload) and head + f.read() == payload  # the open handle still reads every byte
    f.close()


def test_crashed_writers_temporary_folders_are_removed_at_start_and_counted(tmp_path):
    host = socket.gethostname()[:32]
    dead = tmp_path / f".tmp-{host}-{2**22 + 12345}-abc"  # pid beyond pid_max: not running
    dead.mkdir()
    (dead / "mesh.glb").write_bytes(bytes(5000))
    foreign = tmp_path / ".tmp-otherhost-1-abc"  # another replica's write in progress: left alone
    foreign.mkdir()
    (foreign / "mesh.glb").write_bytes(bytes(3 << 20))
    store = ResultStore(tmp_path, max_bytes=4 << 20, ttl_s=3600)
    assert store.removed_tmp == 1 and not dead.exists() and foreign.exists()
    store.put("ef" * 32, {"a.bin": bytes(2 << 20)}, {})  # 3 MB in progress + 2 MB > 4 MB: the result goes
    assert not (tmp_path / ("ef" * 32)).exists()
    old = time.time() - 3600
    os.utime(foreign, (old, old))
    assert ResultStore(tmp_path, max_bytes=4 << 20, ttl_s=3600).removed_tmp == 1 and not foreign.exists()


# ------------------------------------------------------------------------------------------- workers
def test_dead_batcher_worker_is_not_ready_then_restarted(client):
    runtime = client.app.state.runtime
    batcher = runtime.batchers["albedo"]
    restarts = batcher.restarts
    client.portal.call(_kill, batcher)
    assert not batcher.alive
    r = client.get("/health/ready")
    assert r.status_code == 503 and "albedo" in json.dumps(r.json())
    assert batcher.alive and batcher.restarts == restarts + 1  # the check restarted it
    assert client.post("/generate", json={"seed": 34, **SMALL}).status_code == 200
    assert_ready(client)
    assert 'face_worker_restarts_total{graph="albedo"} 1.0' in client.get("/metrics").text


async def _kill(batcher):
    batcher._task.cancel()
    for _ in range(500):  # until the cancellation has landed (a loaded machine takes longer than one tick)
        if batcher._task.done():
            return
        await asyncio.sleep(0.01)


def test_errors_outside_the_model_call_fail_only_that_batch():
    calls = []

    def on_batch(name, rows, waiting):
        calls.append(rows)
        if len(calls) == 1:
            raise RuntimeError("metrics backend broke")

    async def main():
        b = DynamicBatcher("t", lambda batch: {"y": batch["x"] * 2}, 4, 0.0, 8, on_batch=on_batch)
        await b.start()
        with pytest.raises(RuntimeError, match="metrics backend"):
            await b.submit({"x": np.ones((1, 1))})
        with pytest.raises(ValueError):  # rows of different widths cannot be concatenated
            await asyncio.gather(b.submit({"x": np.ones((1, 1))}), b.submit({"x": np.ones((1, 2))}))
        ok = await b.submit({"x": np.ones((1, 1))})
        alive = b.alive
        await b.stop()
        return ok, alive

    ok, alive = asyncio.run(main())
    assert alive and ok["y"].tolist() == [[2.0]]


def test_stage_admission_bounds_and_deadline():
    async def main():
        stage = Stage("t", concurrency=1, max_waiting=1)
        running = [asyncio.create_task(stage.run(time.sleep, 0.2)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="full"):
            await stage.run(time.sleep, 0.0)  # one running, one waiting: the bound
        await asyncio.gather(*running)
        assert stage.pending == 0 and 0.15 < stage.service_s < 1.0
        first = asyncio.create_task(stage.run(time.sleep, 0.2))
        await asyncio.sleep(0.01)
        token = deadline.set(asyncio.get_running_loop().time() + 0.05)  # 0.05 s left, ~0.4 s of work ahead
        try:
            with pytest.raises(QueueFull, match="would not finish"):
                await stage.run(time.sleep, 0.0)
        finally:
            deadline.reset(token)
        await first
        cancelled = asyncio.create_task(stage.run(time.sleep, 0.2))
        ran = []
        queued = asyncio.create_task(stage.run(ran.append, 1))
        await asyncio.sleep(0.01)
        queued.cancel()  # cancelled before a thread took it: never runs
        await asyncio.sleep(0.3)
        await cancelled
        stage.shutdown()
        return ran, stage.pending

    ran, pending = asyncio.run(main())
    assert ran == [] and pending == 0


# ------------------------------------------------------------------------------------------- privacy
def test_result_ids_are_keyed_and_the_secret_persists(tiny_bundle, tmp_path):
    body = {"seed": 50, **SMALL}
    ids = []
    for results in ("a", "a", "b"):
        settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / results, warmup=False)
        with TestClient(create_app(settings)) as c:
            rid = c.post("/generate", json=body).json()["id"]
            runtime = c.app.state.runtime
            bundle = runtime.bundle
            req = pipeline.MeshRequest(
                seed=50, z=None, w=None, truncation=0.7, expression=np.zeros(bundle.face_model.n_expr, np.float32),
                identity=None, texture_size=256, mesh_resolution=64, outputs=tuple(sorted(pipeline.OUTPUT_KINDS)),
                blendshapes=False,
            )  # fmt: skip
            assert rid != req.key(bundle)  # not the public sha256 of digest + request
            assert rid == runtime.result_id(req.canonical(bundle))
            ids.append(rid)
    assert ids[0] == ids[1] != ids[2]  # restart keeps the secret (results_dir/.secret); another folder differs
    secret = tmp_path / "a" / ".secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes()) >= 32


def test_an_oversize_body_is_counted_keyed_and_readable_across_origins(tiny_bundle, tmp_path):
    """The body limit's 413 is an answer like any other: counted in the metrics, with the CORS headers a browser
    needs to read it; and a client without an API key is refused (401) before its body is read."""
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "r", api_keys="alpha", warmup=False,
                        cors_origins="https://viewer.example", max_upload_bytes=1024 * 1024)  # fmt: skip
    big = b" " * (2 * 1024 * 1024)
    with TestClient(create_app(settings)) as c:
        origin = {"Origin": "https://viewer.example", "content-type": "application/json"}
        r = c.post("/generate", content=big, headers={**origin, "X-API-Key": "alpha"})
        assert r.status_code == 413 and "detail" in r.json()
        assert r.headers.get("access-control-allow-origin") == "https://viewer.example"
        r = c.post("/generate", content=iter([big]), headers={**origin, "X-API-Key": "alpha"})  # chunked
        assert r.status_code == 413
        assert c.post("/generate", content=big, headers=origin).status_code == 401
        text = c.get("/metrics").text
        assert 'face_requests_total{route="unmatched",status="413"} 2.0' in text
        assert 'face_requests_total{route="unauthorised",status="401"} 1.0' in text


def test_api_keys_scope_results_and_delete(tiny_bundle, tmp_path):
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "r", api_keys="alpha,beta", warmup=False)
    with TestClient(create_app(settings)) as c:
        body = {"seed": 51, **SMALL}
        r = c.post("/generate", json=body)
        assert r.status_code == 401 and "detail" in r.json()
        assert c.post("/generate", json=body, headers={"X-API-Key": "gamma"}).status_code == 401
        assert c.get("/health/ready").status_code == 200 and c.get("/metrics").status_code == 200
        a1 = c.post("/generate", json=body, headers={"Authorization": "Bearer alpha"}).json()
        a2 = c.post("/generate", json=body, headers={"X-API-Key": "alpha"}).json()
        b1 = c.post("/generate", json=body, headers={"X-API-Key": "beta"}).json()
        assert a1["id"] == a2["id"] != b1["id"]
        assert a1["cached"] is False and a2["cached"] is True and b1["cached"] is False  # beta learns nothing
        url = f"/results/{a1['id']}"
        assert c.get(url).status_code == 401
        # another key holding the id (a log, a shared link) can neither read nor delete it: each key its own results
        beta = {"X-API-Key": "beta"}
        albedo = a1["links"]["albedo.png"]
        assert c.get(url, headers=beta).status_code == 404 and c.get(albedo, headers=beta).status_code == 404
        assert c.delete(url, headers=beta).status_code == 404
        assert c.get(albedo, headers={"X-API-Key": "alpha"}).status_code == 200
        assert c.get(f"{url}/meta.json", headers={"X-API-Key": "alpha"}).status_code == 404  # internal
        # a result stored before results had owners stays usable by whoever holds its id (as it was made)
        meta_path = tmp_path / "r" / a1["id"] / "meta.json"
        meta = json.loads(meta_path.read_text())
        assert meta.pop("owner")
        meta_path.write_text(json.dumps(meta))
        assert c.get(url, headers=beta).status_code == 200
        assert c.delete(url, headers={"X-API-Key": "alpha"}).status_code == 204
        assert c.get(url, headers={"X-API-Key": "alpha"}).status_code == 404
        assert c.delete(url, headers={"X-API-Key": "alpha"}).status_code == 404
        assert c.delete("/results/nothex", headers={"X-API-Key": "alpha"}).status_code == 404


def test_a_deleted_result_is_not_stored_again_by_work_begun_before(client, monkeypatch):
    """The fuzzer's use-after-free: request B computes, an identical request A finishes first and its client
    DELETEs the result; B, finishing later, must not store it again (a GET after the DELETE is a 404)."""
    real, release, calls = pipeline.generate, threading.Event(), []

    async def held_first(*args, **kwargs):
        calls.append(None)
        if len(calls) == 1:  # B: held until A's result is deleted
            await asyncio.to_thread(release.wait, 60)
        return await real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", held_first)
    body = {"seed": 36, **SMALL}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        b = pool.submit(client.post, "/generate", json=body)
        while not calls:
            time.sleep(0.01)
        a = client.post("/generate", json=body).json()
        assert client.delete(f"/results/{a['id']}").status_code == 204
        release.set()
        assert b.result().json()["id"] == a["id"]  # B is answered (its result was deleted after it began)
    assert client.get(f"/results/{a['id']}").status_code == 404
    assert client.get(a["links"]["albedo.png"]).status_code == 404
    assert client.post("/generate", json=body).status_code == 200  # asked again after the DELETE: stored again
    assert client.get(f"/results/{a['id']}").status_code == 200


def test_a_deleted_result_gets_no_files_added(tmp_path):
    store = ResultStore(tmp_path, max_bytes=10**9, ttl_s=3600)
    rid = "ef" * 32
    store.put(rid, {"a.png": b"1"}, {"files": ["a.png"]})
    assert store.delete(rid) and not (tmp_path / rid).exists()
    assert store.add(rid, "mesh.glb", b"late") is None and store.open(rid, "mesh.glb") is None
    assert store.put(rid, {"a.png": b"1"}, {}, since=time.monotonic() - 1) is None  # begun before the deletion
    assert store.put(rid, {"a.png": b"1"}, {}, since=time.monotonic()) is not None  # begun after it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------- metrics
def test_unexpected_errors_are_json_500s_and_counted(client, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(pipeline, "generate", broken)
    r = client.post("/generate", json={"seed": 35, **SMALL})
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert 'face_requests_total{route="/generate",status="500"} 1.0' in client.get("/metrics").text
    monkeypatch.undo()
    assert_ready(client)


def test_real_photo_still_reconstructs_after_the_probes(client):
    r = client.post(
        "/reconstruct",
        files={"image": ("a.jpg", PHOTO.read_bytes(), "image/jpeg")},
        data={k: str(v) for k, v in SMALL.items()},
    )
    assert r.status_code == 200, r.text
    assert_ready(client)


def test_large_photos_are_reduced_on_decoding():
    image = Image.open(PHOTO).convert("RGB").resize((5000, 3000))
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        rgb = pipeline.decode_photo(buf.getvalue(), 50_000_000)
        assert rgb.shape == (1229, 2048, 3), (fmt, rgb.shape)  # 3000 · 2048 / 5000, aspect kept


def test_a_zipped_bundle_leaves_no_temporary_folder(tiny_bundle, tmp_path, monkeypatch):
    import tempfile
    import zipfile

    from facecore.bundle import BundleError, load_bundle

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in Path(tiny_bundle).iterdir():
            zf.write(f, f"nested/tiny/{f.name}")
    for _ in range(2):
        assert load_bundle(archive).manifest.name == "tiny-untrained"
    assert len(list((tmp_path / "tmp").iterdir())) == 1  # the content-addressed folder only
    broken = tmp_path / "two.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("a/manifest.json", "{}")
        zf.writestr("b/manifest.json", "{}")
    with pytest.raises(BundleError, match="exactly one"):
        load_bundle(broken)
    assert len(list((tmp_path / "tmp").iterdir())) == 1


def test_openapi_states_the_bundles_limits(client):
    doc = client.get("/openapi.json").json()
    runtime = client.app.state.runtime
    body = doc["components"]["schemas"]["GenerateBody"]
    z = next(o for o in body["properties"]["z"]["anyOf"] if o.get("type") == "array")
    assert z["minItems"] == z["maxItems"] == runtime.bundle.manifest.codes.z_dim
    assert set(body["properties"]["expression"]["propertyNames"]["enum"]) == set(runtime.bundle.face_model.expr_names)
    assert body["properties"]["texture_size"]["maximum"] == runtime.settings.max_texture_size
    assert len(body["anyOf"]) == 3  # one latent at most
    seed = next(o for o in body["properties"]["seed"]["anyOf"] if o.get("type") == "integer")
    assert seed["minimum"] == 0 and seed["maximum"] == 2**32 - 1  # JSON Schema keywords, not pydantic's ge/le
    ops = doc["paths"]
    assert "model/gltf-binary" in ops["/generate"]["post"]["responses"]["200"]["content"]
    assert {"400", "413", "422", "503"} <= set(ops["/generate"]["post"]["responses"])
    assert "text/plain" in next(iter(ops["/metrics"]["get"]["responses"]["200"]["content"]))
    assert "delete" in ops["/results/{result_id}"]
    r = client.request("OPTIONS", "/results/" + "0" * 64)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    r = client.post("/generate", json={"z": [0.0] * z["minItems"], **SMALL})
    assert r.status_code == 422 and "direction" in r.json()["detail"]  # ruled out by the schema too
    form = {"outputs": " glb , obj", **SMALL}
    assert upload(client, Image.open(PHOTO).tobytes()[:10], **form).status_code in (415, 422)
    assert upload(client, b"x", outputs="glb,,obj").json()["detail"].startswith("outputs")


def test_heavy_stages_run_at_a_lower_cpu_priority():
    import threading

    def priority():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def main():
        stage = Stage("t", concurrency=1, max_waiting=0, nice=5)
        try:
            return await stage.run(priority)
        finally:
            stage.shutdown()

    mine = priority()
    assert asyncio.run(main()) == min(mine + 5, 19)


def test_only_requests_that_went_through_teach_the_gate_its_hold_time():
    """A request refused by a stage just after the gate (or failing) leaves within milliseconds; counted, a burst of
    them collapsed the gate's estimate and the next burst of heavy requests was admitted whole."""
    from service.engine.admission import Gate

    async def main():
        gate = Gate(concurrency=1, max_waiting=1)
        async with gate.enter():
            await asyncio.sleep(0.2)
        learnt = gate.hold_s
        for _ in range(5):
            with pytest.raises(QueueFull):
                async with gate.enter():
                    raise QueueFull("stage 'geometry' is full")
        return learnt, gate.hold_s, gate.active

    learnt, after, active = asyncio.run(main())
    assert learnt >= 0.19 and after == learnt and active == 0


def test_the_gate_predicts_each_kind_of_request_by_its_own_hold():
    """With a heavy request inside (its kind holds ~0.3 s), a light one (~0.01 s) still fits a 0.35 s deadline
    and another heavy one does not; one average over both kinds (~0.16 s) had refused neither, and after heavy
    traffic had refused light requests that would have finished in time."""
    from service.engine.admission import Gate

    async def main():
        gate = Gate(concurrency=1, max_waiting=4)

        async def hold(kind, s):
            async with gate.enter(kind):
                await asyncio.sleep(s)

        await hold("heavy", 0.3)
        await hold("light", 0.01)
        assert gate.predicted_s("heavy") >= 0.29 and gate.predicted_s("light") < 0.05
        assert gate.predicted_s("unseen") == gate.hold_s  # a kind not seen yet: the average over all
        inside = asyncio.create_task(hold("heavy", 0.3))
        await asyncio.sleep(0.01)
        assert 0.25 < gate.expected_wait_s() < 0.35
        token = deadline.set(asyncio.get_running_loop().time() + 0.35)
        try:
            with pytest.raises(QueueFull, match="would not leave room"):
                async with gate.enter("heavy"):
                    pass
            async with gate.enter("light"):  # waits for the heavy one, then runs: within the deadline
                pass
        finally:
            deadline.reset(token)
        await inside
        return gate.active, gate.waiting, gate.expected_wait_s()

    assert asyncio.run(main()) == (0, 0, 0.0)


def test_request_gate_refuses_before_any_work_when_it_could_not_finish():
    from service.engine.admission import Gate

    async def main():
        gate = Gate(concurrency=1, max_waiting=1)

        async def hold(s):
            async with gate.enter():
                await asyncio.sleep(s)

        await hold(0.2)  # learns that a request holds its place ~0.2 s
        first = asyncio.create_task(hold(0.2))
        await asyncio.sleep(0.01)
        token = deadline.set(asyncio.get_running_loop().time() + 0.3)  # 0.2 ahead + 0.2 own > 0.3 left
        try:
            with pytest.raises(QueueFull, match="would not leave room"):
                async with gate.enter():
                    pass
        finally:
            deadline.reset(token)
        second = asyncio.create_task(hold(0.0))  # no deadline: waits its turn
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="full"):  # one running, one waiting: the bound
            async with gate.enter():
                pass
        await asyncio.gather(first, second)
        return gate.active, gate.waiting

    assert asyncio.run(main()) == (0, 0)


def test_a_request_whose_client_disconnected_stops(tiny_bundle, tmp_path, monkeypatch):
    """A client that gives up (a read timeout, then perhaps a retry) closes its connection: its request is cancelled
    at once, freeing its place, and counted (face_abandoned); it had computed to the end (16 of 30 abandoned
    heavy requests were still made and stored, and the next real request was refused)."""
    import socket

    import httpx
    import uvicorn

    started, stopped = threading.Event(), threading.Event()
    real = pipeline.generate

    async def slow(*args, **kwargs):
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return await real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", slow)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings(bundle=tiny_bundle, results_dir=tmp_path / "r", warmup=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if server.started:
                break
            time.sleep(0.05)
        t = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/generate", json={"seed": 3, **SMALL}, timeout=httpx.Timeout(10, read=0.5))
        assert started.is_set() and stopped.wait(10), "the abandoned request kept running"
        assert time.monotonic() - t < 5
        assert "face_abandoned_total 1.0" in httpx.get(f"{url}/metrics").text
        assert app.state.runtime.gate.active == 0
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_pixel_bomb_png_is_refused_before_it_is_decoded(monkeypatch):
    """The pixel limit is checked on the header: reading the EXIF first (for the upright size) had made Pillow
    decode a 9000 × 9000 PNG whole (~240 MB, 0.4 s) before refusing it."""
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    Image.new("RGB", (9000, 9000), (90, 90, 90)).save(buf, "PNG")

    def no_decode(self, *args, **kwargs):
        raise AssertionError("decoded before the pixel check")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    with pytest.raises(pipeline.PhotoError, match="exceeds the limit") as info:
        pipeline.decode_photo_sized(buf.getvalue(), 25_000_000)
    assert info.value.status == 413
