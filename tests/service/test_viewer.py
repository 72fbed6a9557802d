"""The web viewer in headless Chromium against a live server: generate a face, the canvas is not blank."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["tiny", "embedded"])
def live_server(request, tiny_bundle, tmp_path):
    """The service on a free port with the tests' tiny bundle (its encoder has a 'ws' output) or the embedded one
    (an albedo_latent graph instead)."""
    from service.settings import EMBEDDED_BUNDLE

    bundle = tiny_bundle if request.param == "tiny" else EMBEDDED_BUNDLE
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--bundle", str(bundle), "--log-level", "warning"],
        cwd=ROOT,
        env={"FACE_RESULTS_DIR": str(tmp_path / "results"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
                assert proc.poll() is None, "server exited"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_page_serves_and_is_offline(tiny_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(bundle=tiny_bundle, results_dir=tmp_path / "r"))) as client:
        page = client.get("/")
        if page.status_code == 503:
            pytest.skip("viewer assets missing: npm ci --prefix service/static")
        assert page.status_code == 200 and "importmap" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
        js = client.get("/static/viewer.js")
        assert js.status_code == 200 and "https://" not in js.text
        assert client.get("/static/node_modules/three/build/three.module.js").status_code == 200


@pytest.mark.slow
def test_viewer_generates_a_visible_head(live_server, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    node = shutil.which("node")
    if node is None or not (ROOT / "tools" / "node_modules" / "playwright-core").is_dir():
        pytest.skip("node or tools/node_modules/playwright-core missing (npm ci --prefix tools)")
    if not (ROOT / "service" / "static" / "node_modules" / "three").is_dir():
        pytest.skip("viewer assets missing: npm ci --prefix service/static")
    shot = tmp_path / "viewer.png"
    photo = ROOT / "tests" / "fixtures" / "photos" / "cc0-interfaces-002.jpg"  # a greyscale portrait
    out = subprocess.run(
        [node, str(ROOT / "tools" / "browser_test.mjs"), live_server + "/", str(shot), CHROMIUM, str(photo)],
        capture_output=True, text=True, timeout=360,
    )  # fmt: skip
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and report["loaded"], report
    # nothing failed in the page (a missing favicon was a 404 in every session's console)
    assert not [c for c in report["console"] if c.startswith(("error", "pageerror"))], report["console"]
    assert report["vertexCount"] > 10_000
    assert report["generatedOption"] is True  # both bundles have a latent for the photo (/models lists it)
    # then a greyscale photo: the status line says why its colours are not the person's
    assert report["reconstructed"] is True, report
    assert "greyscale photo" in report["status"] and "iris colour from the default" in report["status"], report
    artifacts = ROOT / "out" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "viewer.png")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    background = np.array([0x2A, 0x2E, 0x37], np.float64)  # scene background
    differs = np.abs(img - background).sum(-1) > 30
    assert 0.05 < differs.mean() < 0.9, differs.mean()  # a head covers part of the canvas
    assert img[differs].std() > 5  # and it is shaded/textured, not a flat silhouette
