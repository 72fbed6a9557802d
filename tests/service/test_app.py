"""The FastAPI service end to end on a tiny real bundle: /generate, results, health, metrics, bad input."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tiny_bundle, tmp_path_factory):
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path_factory.mktemp("results"), max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        yield c


def gen(client, **body):
    return client.post("/generate", json=body)


def test_health_models_and_docs(client):
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["capabilities"] == {"generate": True, "reconstruct": True}
    models = client.get("/models").json()
    assert models["manifest"]["name"] == "tiny-untrained" and "jawOpen" in models["expressions"]
    assert models["providers"]["albedo"][-1] == "CPUExecutionProvider"
    assert client.get("/openapi.json").json()["paths"]["/generate"]["post"]
    assert client.get("/docs").status_code == 200


def test_generate_returns_linked_artifacts(client):
    r = gen(client, seed=7, texture_size=256, mesh_resolution=64, expression={"jawOpen": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["id"]) == 64 and body["cached"] is False
    assert set(body["links"]) >= {"albedo.png", "displacement.png", "normal.png", "mesh.obj", "mesh.mtl", "mesh.glb"}
    assert body["codes"]["expression"] == {"jawOpen": 0.5} and len(body["codes"]["shape"]) == 150
    assert body["timings_ms"]["mapping"] >= 0 and body["timings_ms"]["geometry"] > 0
    albedo = Image.open(io.BytesIO(client.get(body["links"]["albedo.png"]).content))
    assert albedo.size == (256, 256) and albedo.mode == "RGB"
    disp = Image.open(io.BytesIO(client.get(body["links"]["displacement.png"]).content))
    assert disp.mode.startswith("I;16") or disp.mode == "I"
    glb = client.get(body["links"]["mesh.glb"])
    assert glb.headers["content-type"] == "model/gltf-binary" and glb.content[:4] == b"glTF"
    scene = trimesh.load(io.BytesIO(glb.content), file_type="glb", process=False)
    assert sum(len(g.vertices) for g in scene.geometry.values()) > 3000


def _all_files(client, body: dict) -> tuple[str, dict[str, bytes]]:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    links = r.json()["links"]
    return r.json()["id"], {name: client.get(url).content for name, url in sorted(links.items())}


def test_same_request_same_id_and_bytes_in_fresh_servers(tiny_bundle, tmp_path):
    """Determinism across servers: two apps with their own (empty) result folders and one secret compute the
    same request from scratch; ids and every file's bytes agree. A different seed changes both."""
    body = {"seed": 11, "texture_size": 256, "mesh_resolution": 64, "expression": {"jawOpen": 0.4}}
    runs = []
    for name in ("a", "b"):
        settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / name, result_secret="s" * 32, max_wait_ms=2.0)
        with TestClient(create_app(settings)) as c:
            runs.append(_all_files(c, body))
            if name == "b":
                other = _all_files(c, dict(body, seed=12))
    (id_a, files_a), (id_b, files_b) = runs
    assert id_a == id_b and len(id_a) == 64
    assert set(files_a) >= {"albedo.png", "mesh.glb", "mesh.obj", "displacement.png", "bundle.zip"}
    assert files_a == files_b
    assert other[0] != id_a and other[1]["mesh.glb"] != files_a["mesh.glb"]


def test_dynamic_batching_does_not_change_bytes(tiny_bundle, tmp_path):
    """Rows computed inside a batch of 8 equal the same rows computed alone (batch 1)."""
    import concurrent.futures

    seeds = list(range(100, 108))
    solo = {}
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "solo", max_batch=1, max_wait_ms=0.0)
    with TestClient(create_app(settings)) as c:
        for seed in seeds:
            r = c.post("/generate?format=png", json={"seed": seed, "outputs": ["albedo"], "texture_size": 256})
            solo[seed] = r.content
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "batched", max_batch=8, max_wait_ms=200.0)
    with TestClient(create_app(settings)) as c:
        before = _batch_count(c)

        def one(seed):
            body = {"seed": seed, "outputs": ["albedo"], "texture_size": 256}
            return seed, c.post("/generate?format=png", json=body).content

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            batched = dict(pool.map(one, seeds))
        calls = _batch_count(c) - before
    assert batched == solo
    assert calls < 2 * len(seeds)  # mapping + albedo graphs: fewer calls than rows means real batches ran


def _batch_count(client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("face_batch_size_count{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_format_returns_the_file(client):
    r = client.post("/generate?format=zip", json={"seed": 3, "texture_size": 256, "mesh_resolution": 64})
    assert r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert "mesh.obj" in names and "albedo.png" in names
    png = client.post(
        "/generate?format=png", json={"seed": 3, "texture_size": 256, "mesh_resolution": 64, "outputs": ["glb"]}
    )
    assert png.headers["content-type"] == "image/png"


def test_w_and_z_inputs(client):
    z = np.random.default_rng(0).standard_normal(32).tolist()
    r = gen(client, z=z, texture_size=256, mesh_resolution=64, outputs=["albedo"])
    assert r.status_code == 200 and set(r.json()["links"]) == {"albedo.png", "bundle.zip"}
    r = gen(client, w=[0.1] * 32, truncation=1.0, texture_size=256, mesh_resolution=64, outputs=["albedo"])
    assert r.status_code == 200


BAD_REQUESTS = [
    ({"seed": "abc"}, 422),
    ({"seed": -1}, 422),
    ({"seed": 2**40}, 422),
    ({"seed": 1.5}, 422),
    ({"seed": 1, "z": [0.0] * 32}, 422),
    ({"z": [0.0] * 31}, 422),
    ({"z": [0.0] * 5000}, 422),
    ({"z": "zeros"}, 422),
    ({"z": [None] * 32}, 422),
    ({"w": [0.0] * 33}, 422),
    ({"truncation": 5}, 422),
    ({"truncation": "high"}, 422),
    ({"expression": {"smile": 1.0}}, 422),
    ({"expression": {"jawOpen": 2.0}}, 422),
    ({"expression": {"jawOpen": "wide"}}, 422),
    ({"expression": ["jawOpen"]}, 422),
    ({"identity": [0.0] * 151}, 422),
    ({"identity": [100.0]}, 422),
    ({"identity": []}, 422),
    ({"texture_size": 100}, 422),
    ({"texture_size": 100000}, 422),
    ({"mesh_resolution": 4}, 422),
    ({"mesh_resolution": 5000}, 422),
    ({"outputs": ["fbx"]}, 422),
    ({"outputs": []}, 422),
    ({"unknown_field": 1}, 422),
    ({"blendshapes": "yes please"}, 422),
]


@pytest.mark.parametrize(("body", "status"), BAD_REQUESTS)
def test_bad_generate_requests_get_4xx_json(client, body, status):
    r = client.post("/generate", json=body)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


@pytest.mark.parametrize(
    ("raw", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 422),
        (b'{"z": [NaN' + b", 0.0" * 31 + b"]}", {"content-type": "application/json"}, 422),
        (b'{"seed": 1e400}', {"content-type": "application/json"}, 422),
        (b"seed=1", {"content-type": "application/x-www-form-urlencoded"}, 422),
        (b"[1, 2, 3]", {"content-type": "application/json"}, 422),
        (b" " * (11 * 1024 * 1024), {"content-type": "application/json"}, 413),
    ],
)
def test_malformed_bodies(client, raw, headers, status):
    r = client.post("/generate", content=raw, headers=headers)
    assert r.status_code == status, r.text[:200]
    assert "detail" in r.json()


def test_unknown_results_and_formats(client):
    assert client.get("/results/" + "0" * 64).status_code == 404
    assert client.get("/results/../../etc/passwd").status_code == 404
    assert client.get("/results/" + "0" * 64 + "/mesh.glb").status_code == 404
    assert client.get("/results/nothex/..%2F..%2Fetc%2Fpasswd").status_code == 404
    r = client.post("/generate?format=fbx", json={"seed": 1})
    assert r.status_code == 422 and "detail" in r.json()


def test_metrics_count_requests_and_stages(client):
    gen(client, seed=21, texture_size=256, mesh_resolution=64)
    text = client.get("/metrics").text
    assert 'face_requests_total{route="/generate",status="200"}' in text
    assert 'face_stage_seconds_count{stage="geometry"}' in text
    assert 'face_batch_size_count{graph="albedo"}' in text
    assert "face_model_info" in text and 'name="tiny-untrained"' in text


def test_manifest_problems_are_refused_at_start(tiny_bundle, tmp_path):
    import shutil

    from facecore.bundle import BundleError, load_bundle

    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["codes"]["shape"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="field 'codes.shape' is 99 but face_model.npz has 150"):
        load_bundle(broken)
    manifest["codes"]["shape"] = 150
    manifest["schema_version"] = 7
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="field 'schema_version' is 7"):
        load_bundle(broken)
    manifest["schema_version"] = 1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / "albedo.onnx").write_bytes(b"corrupt")
    with pytest.raises(BundleError, match=r"albedo.onnx: sha256 does not match field 'graphs.albedo.sha256'"):
        load_bundle(broken)
    (broken / "albedo.onnx").unlink()
    with pytest.raises(BundleError, match="field 'graphs.albedo.file' names albedo.onnx, which is missing"):
        load_bundle(broken)
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nothing")
    settings = Settings(bundle=broken, results_dir=tmp_path / "r")
    with pytest.raises(BundleError), TestClient(create_app(settings)):
        pass


def test_deferred_files_are_the_eager_bytes(tiny_bundle, tmp_path):
    """A JSON answer links every file but makes none: each output kind is made on the first fetch of one of its
    files; they, and the zip, are byte-identical to an eager encoding (``?format=zip`` makes everything at once)."""
    body = {"seed": 77, "texture_size": 256, "mesh_resolution": 72}
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "lazy", max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        c.post("/generate", json=dict(body, seed=76))  # the first OBJ at a mesh resolution tells its file names
        r = c.post("/generate", json=body).json()
        folder = tmp_path / "lazy" / r["id"]
        assert {"mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.glb", "albedo.png"} <= set(r["links"])
        assert sorted(p.name for p in folder.iterdir()) == [".source.npz", "meta.json"]
        assert c.get(f"/results/{r['id']}/.source.npz").status_code == 404  # internal, never served
        head = c.head(r["links"]["albedo.png"])  # made by the first request for it, a HEAD too
        assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "image/png"
        albedo = c.get(r["links"]["albedo.png"]).content
        assert int(head.headers["content-length"]) == len(albedo)
        assert (folder / "albedo.png").is_file() and not (folder / "mesh.glb").exists()  # one kind at a time
        lazy = {name: c.get(url).content for name, url in r["links"].items() if name != "bundle.zip"}
        lazy_zip = c.get(r["links"]["bundle.zip"]).content
        assert (folder / "mesh.obj").is_file() and lazy["albedo.png"] == albedo
        zip_first = c.get(c.post("/generate", json=dict(body, seed=78)).json()["links"]["bundle.zip"]).content
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "eager", max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        eager_zip = c.post("/generate?format=zip", json=body).content
        assert c.post("/generate?format=zip", json=dict(body, seed=78)).content == zip_first  # nothing made before
    eager = {
        n: zipfile.ZipFile(io.BytesIO(eager_zip)).read(n) for n in zipfile.ZipFile(io.BytesIO(eager_zip)).namelist()
    }
    assert lazy == eager and lazy_zip == eager_zip


def test_a_format_answer_from_a_stored_result_is_made_under_the_encoding_stage(tiny_bundle, tmp_path, monkeypatch):
    """``?format=`` for a result a JSON answer stored without its files makes the file in the encoding stage, under
    its bounds: refused at once (503, Retry-After) while the stage is full. It had been made in asyncio's default
    thread pool, outside every bound and the request's time limit (60 such zips took 26-49 s, 0 refused)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service import pipeline

    release, entered = threading.Event(), threading.Event()
    real = pipeline.make_files

    def blocking(bundle, source, kinds, timer):
        if "albedo" in kinds:  # the download holding the encoding stage
            entered.set()
            release.wait(30)
        return real(bundle, source, kinds, timer)

    monkeypatch.setattr(pipeline, "make_files", blocking)
    body = {"seed": 9, "texture_size": 256, "mesh_resolution": 64}
    settings = Settings(
        bundle=tiny_bundle, results_dir=tmp_path / "r", encode_concurrency=1, max_stage_queue=0, max_wait_ms=2.0
    )
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(1) as pool:
        links = c.post("/generate", json=body).json()["links"]
        held = pool.submit(c.get, links["albedo.png"])
        assert entered.wait(30)
        busy = c.post("/generate?format=glb", json=body)
        release.set()
        assert held.result().status_code == 200
        assert busy.status_code == 503 and busy.headers["retry-after"], busy.text
        assert "encode" in busy.json()["detail"]
        served = c.post("/generate?format=glb", json=body)  # the stage free again: made and served
        assert served.status_code == 200 and served.content == c.get(links["mesh.glb"]).content
        # a file the result has not is no work: 404 at once, even while the stage is full
        held = pool.submit(c.get, c.post("/generate", json=dict(body, seed=10)).json()["links"]["albedo.png"])
        entered.clear()
        release.clear()
        assert entered.wait(30)
        missing = c.get(links["albedo.png"].replace("albedo.png", "nothing.png"))
        release.set()
        assert missing.status_code == 404 and held.result().status_code == 200


def test_concurrent_first_fetches_make_a_kind_once(tiny_bundle, tmp_path, monkeypatch):
    """Eight clients asking at once for the not-yet-made GLB of one result: one makes it, the others wait and are
    served the stored file (before, several made their own copy)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service import pipeline

    made: list[set] = []
    real = pipeline.make_files
    barrier = threading.Barrier(8, timeout=30)

    def counting(bundle, source, kinds, timer):
        made.append(set(kinds))
        return real(bundle, source, kinds, timer)

    monkeypatch.setattr(pipeline, "make_files", counting)
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "r", max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        url = c.post("/generate", json={"seed": 5, "texture_size": 256, "mesh_resolution": 64}).json()["links"]
        made.clear()

        def fetch(_):
            barrier.wait()
            return c.get(url["mesh.glb"])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(fetch, range(8)))
    assert all(a.status_code == 200 for a in answers)
    assert len({a.content for a in answers}) == 1
    assert made == [{"glb"}]


def test_result_files_answer_ranges_and_conditional_requests(tiny_bundle, tmp_path):
    """A result file's bytes never change (content-addressed): strong ETag, 304 on If-None-Match, byte ranges
    (206 with Content-Range; a suffix; past the end clipped; beyond it 416), If-Range, and the whole file for what
    is not one range; stored files and files answered from memory alike."""
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path / "r", max_wait_ms=2.0)
    with TestClient(create_app(settings)) as c:
        links = c.post("/generate", json={"seed": 12, "texture_size": 256, "mesh_resolution": 64}).json()["links"]
        url = links["mesh.glb"]
        whole = c.get(url)
        assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
        etag, data, size = whole.headers["etag"], whole.content, len(whole.content)
        assert etag.startswith('"') and c.get(url).headers["etag"] == etag
        assert c.get(url, headers={"if-none-match": etag}).status_code == 304
        assert c.get(url, headers={"if-none-match": '"other"'}).content == data
        for header, first, last in (
            ("bytes=0-99", 0, 99),
            ("bytes=100-", 100, size - 1),
            ("bytes=-50", size - 50, size - 1),
            (f"bytes=10-{size + 1000}", 10, size - 1),
        ):
            part = c.get(url, headers={"range": header})
            assert part.status_code == 206, header
            assert part.content == data[first : last + 1], header
            assert part.headers["content-range"] == f"bytes {first}-{last}/{size}", header
            assert int(part.headers["content-length"]) == last - first + 1
        beyond = c.get(url, headers={"range": f"bytes={size}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
        for ignored in ("bytes=0-1,5-9", "items=0-9", "bytes=9-3"):  # answered whole
            assert c.get(url, headers={"range": ignored}).content == data, ignored
        assert c.get(url, headers={"range": "bytes=0-9", "if-range": etag}).status_code == 206
        assert c.get(url, headers={"range": "bytes=0-9", "if-range": '"stale"'}).content == data
        zipped = c.get(links["bundle.zip"], headers={"range": "bytes=0-3"})  # made now, from memory or stored
        assert zipped.status_code == 206 and zipped.content == b"PK\x03\x04"
