"""Schema fuzzing and hand-made hostile uploads against a real server on loopback; prints the counts.

    python benchmarks/fuzz_api.py [--bundle PATH] [--examples 1000] [--photos DIR]

1. schemathesis (all checks, config in benchmarks/schemathesis.toml) on every operation of the served
   OpenAPI document: generated test cases, requests, server errors, contract violations;
2. /reconstruct with the fixture photos (valid) and broken variants of them (truncated, bit flips, tiny,
   extreme aspect, 16-bit, wrong type, pixel bombs): status counts, 5xx, and readiness after each.

The server runs with FACE_MAX_TEXTURE_SIZE=512 and FACE_MAX_MESH_RESOLUTION=256 so that valid bodies stay fast
(the document states those limits, so the fuzzer respects them).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from serve import ROOT, server

from service.settings import EMBEDDED_BUNDLE


def schemathesis(url: str, examples: int, workers: int, phases: str) -> dict:
    report = Path(tempfile.mkdtemp(prefix="fuzz-")) / "events.ndjson"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "benchmarks" / "schemathesis.toml"),
        "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(examples), "--workers", str(workers),
        "--seed", "16", "--request-timeout", "60", "--report", "ndjson", "--report-ndjson-path", str(report),
        "--no-color", "--continue-on-failure", "--phases", phases,
    ]  # fmt: skip
    t = time.perf_counter()
    # run where its example database (.schemathesis/) does not land in the checkout
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=report.parent)
    out = proc.stdout + proc.stderr
    statuses = collections.Counter(re.findall(r'"status_code":\s*(\d{3})', report.read_text()))
    keep = r"(Test cases|generated|Failures|ST\d{3}|Runtime Error|failures|passed)"
    summary = [ln[:200] for ln in out.splitlines() if re.search(keep, ln)]
    return {
        "exit": proc.returncode,
        "seconds": time.perf_counter() - t,
        "statuses": dict(sorted(statuses.items())),
        "requests": sum(statuses.values()),
        "summary": summary[-8:],
        "tail": "\n".join(ln[:200] for ln in out.splitlines()[-60:]) if proc.returncode else "",
    }


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = (40000).to_bytes(4, "big") + (40000).to_bytes(4, "big")  # IHDR claims 40000²
    return bytes(data)


def broken_variants(photo: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    out = [("truncated", photo[: len(photo) // 3]), ("header only", photo[:200]), ("empty", b"")]
    for i in range(4):
        flipped = bytearray(photo)
        for pos in rng.integers(100, len(photo), 20):
            flipped[pos] ^= 0xFF
        out.append((f"bit flips {i}", bytes(flipped)))
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    for size in ((16, 16), (31, 31), (20000, 20), (20, 20000), (2000, 40)):
        buf = io.BytesIO()
        image.resize(size).save(buf, "PNG")
        out.append((f"{size[0]}x{size[1]}", buf.getvalue()))
    grey = np.asarray(image.convert("L")).astype(np.uint16) * 257
    out += [("16-bit grey", _png(grey)), ("text", b"hello"), ("gif", _gif()), ("bomb", _bomb())]
    return out


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "GIF")
    return buf.getvalue()


def uploads(url: str, photos: list[Path]) -> dict:
    rng = np.random.default_rng(16)
    counts: collections.Counter = collections.Counter()
    server_errors, not_ready = [], 0
    with httpx.Client(base_url=url, timeout=120) as client:
        for path in photos:
            photo = path.read_bytes()
            cases = [("valid", photo)] + broken_variants(photo, rng)
            for detector in ("auto", "cnn"):
                for name, data in cases:
                    form = {"texture_size": "256", "mesh_resolution": "64", "detector": detector}
                    r = client.post("/reconstruct", files={"image": ("x", data, "image/jpeg")}, data=form)
                    counts[(name if name == "valid" else "broken", r.status_code)] += 1
                    if r.status_code >= 500 and r.status_code != 503:
                        server_errors.append((path.name, name, detector, r.status_code, r.text[:200]))
                    not_ready += client.get("/health/ready").status_code != 200
    return {"counts": dict(sorted(counts.items())), "server_errors": server_errors, "not_ready_after": not_ready}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    parser.add_argument("--examples", type=int, default=1000, help="schemathesis max examples per operation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "fixtures" / "photos")
    args = parser.parse_args()
    os.environ.update(FACE_MAX_TEXTURE_SIZE="512", FACE_MAX_MESH_RESOLUTION="256", FACE_MAX_QUEUE="256")
    with server(args.bundle, max_batch=8) as url:
        # the stateful phase (create → read → delete → read) runs on one worker: identical requests share one
        # result id by design, so another worker's identical POST between a DELETE and its check re-creates the
        # result, which the check would report as "deleted resource still available"
        runs = [
            schemathesis(url, args.examples, args.workers, "examples,coverage,fuzzing"),
            schemathesis(url, args.examples, 1, "stateful"),
        ]
        statuses = sum((collections.Counter(r["statuses"]) for r in runs), collections.Counter())
        fuzz = {
            "exit": max(r["exit"] for r in runs),
            "seconds": sum(r["seconds"] for r in runs),
            "statuses": dict(sorted(statuses.items())),
            "requests": sum(r["requests"] for r in runs),
            "summary": [line for r in runs for line in r["summary"]],
            "tail": "\n".join(r["tail"] for r in runs if r["tail"]),
        }
        up = uploads(url, sorted(args.photos.glob("*.jpg")))
        metrics = httpx.get(url + "/metrics").text
    served = collections.Counter()
    for m in re.finditer(r'face_requests_total\{route="[^"]*",status="(\d{3})"\} ([0-9.e+]+)', metrics):
        served[m.group(1)] += int(float(m.group(2)))
    print("## schemathesis (all checks)")
    print(f"requests with a response: {fuzz['requests']}  in {fuzz['seconds']:.0f} s  exit code {fuzz['exit']}")
    print(f"statuses: {fuzz['statuses']}")
    for line in fuzz["summary"]:
        print("  " + line.strip())
    if fuzz["tail"]:
        print(fuzz["tail"])
    print("\n## /reconstruct uploads (valid fixture photos and broken variants, detectors auto and cnn)")
    for (kind, status), n in up["counts"].items():
        print(f"{kind:>7} -> {status}: {n}")
    print(f"server errors: {len(up['server_errors'])}  readiness lost after a request: {up['not_ready_after']}")
    for e in up["server_errors"][:10]:
        print("  ", e)
    print(f"\n## the server's own count (face_requests_total by status): {dict(sorted(served.items()))}")
    fivexx = sum(n for s, n in served.items() if s.startswith("5") and s != "503")
    print(f"5xx other than 503: {fivexx}")
    return 0 if fuzz["exit"] == 0 and not up["server_errors"] and fivexx == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
