"""``albedogan`` batch CLI: the service's bytes without a server, per-file errors, resumable runs."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.cli import main, parse_seeds
from service.settings import EMBEDDED_BUNDLE, Settings

PHOTO = Path(__file__).resolve().parents[1] / "fixtures" / "photos" / "cc0-interfaces-001.jpg"
SMALL = ["--texture-size", "256", "--mesh-resolution", "64", "-q"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(bundle=EMBEDDED_BUNDLE, results_dir=tmp_path_factory.mktemp("results"), max_wait_ms=0.0)
    with TestClient(create_app(settings)) as c:
        yield c


def service_files(client, body: dict) -> dict[str, bytes]:
    names = [n for n in body["links"] if n != "bundle.zip"]  # the zip is made on request, not stored by the CLI
    return {n: client.get(f"/results/{body['id']}/{n}").content for n in names}


def cli_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "result.json"}


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("7, 2,3-4,3") == [2, 3, 4, 7]
    for bad in ("", "a", "5-2", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def test_generate_matches_the_service_and_resumes(client, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--seeds", "3-4", "--out", str(out), *SMALL]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed_0003", "seed_0004"]
    for seed in (3, 4):
        r = client.post("/generate", json={"seed": seed, "texture_size": 256, "mesh_resolution": 64})
        assert r.status_code == 200, r.text
        want = service_files(client, r.json())
        got = cli_files(out / f"seed_{seed:04d}")
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == want[name], name  # byte-identical to what the service stores
    record = json.loads((out / "seed_0003" / "result.json").read_text())
    assert record["request"]["seed"] == 3 and len(record["codes"]["shape"]) == 150 and len(record["key"]) == 64
    assert "2 done" in capsys.readouterr().out

    # a second run skips the finished folders without touching them; a new seed and an interrupted one are made
    stamp = (out / "seed_0003" / "mesh.glb").stat().st_mtime_ns
    (out / ".tmp-seed_0005-leftover").mkdir()  # what a killed run leaves: not a result
    assert main(["generate", "--seeds", "3-5", "--out", str(out), *SMALL]) == 0
    assert "1 done, 2 already done, 0 failed" in capsys.readouterr().out
    assert (out / "seed_0003" / "mesh.glb").stat().st_mtime_ns == stamp
    assert (out / "seed_0005" / "result.json").is_file()

    # other options make another result: the folder is redone, not skipped
    assert (
        main(["generate", "--seeds", "3", "--out", str(out), "--texture-size", "512", "--mesh-resolution", "64"]) == 0
    )
    assert Image.open(out / "seed_0003" / "albedo.png").size == (512, 512)


def test_generate_rejects_what_the_service_rejects(tmp_path, capsys):
    rc = main(["generate", "--seeds", "0", "--out", str(tmp_path), "--texture-size", "100000", "-q"])
    assert rc == 1 and "texture_size" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_reconstruct_a_folder_skips_bad_files_and_matches_the_service(client, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "portrait.jpg").write_bytes(PHOTO.read_bytes())
    (photos / "broken.jpg").write_bytes(b"not an image")
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 128, 128)).save(buf, "PNG")
    (photos / "blank.png").write_bytes(buf.getvalue())  # an image without a face
    (photos / "notes.txt").write_text("ignored: not a photo suffix")
    out = tmp_path / "out"

    assert main(["reconstruct", str(photos), "--out", str(out), *SMALL]) == 1  # some inputs failed
    err = capsys.readouterr().err
    assert "broken.jpg: image: not a readable" in err and "blank.png: image:" in err
    assert sorted(p.name for p in out.iterdir()) == ["portrait"]

    r = client.post(
        "/reconstruct",
        files={"image": ("face.jpg", PHOTO.read_bytes(), "image/jpeg")},
        data={"texture_size": "256", "mesh_resolution": "64"},
    )
    assert r.status_code == 200, r.text
    assert cli_files(out / "portrait") == service_files(client, r.json())
    record = json.loads((out / "portrait" / "result.json").read_text())
    assert record["face"] == r.json()["face"] and record["request"]["photo"] == "portrait.jpg"

    assert main(["reconstruct", str(photos / "portrait.jpg"), "--out", str(out), *SMALL]) == 0
    assert "0 done, 1 already done, 0 failed" in capsys.readouterr().out


def test_missing_input_and_bad_bundle(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    rc = main(["generate", "--seeds", "0", "--out", str(tmp_path / "o"), "--bundle", str(tmp_path), "-q"])
    assert rc == 2 and "error:" in capsys.readouterr().err


BLAS_THREADS = """
import ctypes, os, sys
import service.{entry}, numpy
threads = "?"  # numpy's own OpenBLAS, asked how many threads it runs (when its library is found)
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if "openblas" in path.lower() and ".so" in path and threads == "?":
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                threads = str(getattr(lib, name)())
                break
print(os.environ["OPENBLAS_NUM_THREADS"], threads)
"""


def test_the_server_runs_numpys_blas_on_one_thread_unless_told_otherwise():
    """The service's entry points (``python -m service``, ``albedogan``) set OPENBLAS_NUM_THREADS=1 before numpy
    loads (OpenBLAS's busy-waiting threads took the cores from onnxruntime: /generate p50 48 → 21 ms on a 2-core
    CPU), and numpy's OpenBLAS runs that many threads; a value the user set is kept."""
    import os
    import subprocess
    import sys

    for given, want, entry in ((None, "1", "__main__"), ("2", "2", "__main__"), (None, "1", "cli")):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if given is not None:
            env["OPENBLAS_NUM_THREADS"] = given
        code = BLAS_THREADS.format(entry=entry)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        variable, threads = out.stdout.split()
        assert variable == want and threads in (want, "?"), out.stdout
