"""Service benchmark over real HTTP on loopback; prints tables.

    python benchmarks/serve.py [--bundle PATH] [--requests 30] [--photos DIR] [--baseline-rev REV] [--readme]

* /generate and /reconstruct latency p50/p95 at concurrency 1 (every request distinct: no cache hits),
  with the mean time per pipeline stage from the responses;
* /generate throughput at concurrency 1, 4, 16, 64, with dynamic batching (max batch 16; the service's default
  wait, and a 5 ms wait) and without (max batch 1), each against a fresh server;
* ONNX (onnxruntime) vs eager PyTorch for the same graphs at the same batch in this process;
* ``--baseline-rev REV``: /generate against the embedded bundle of git revision REV (e.g. bundle 1.0's, 9f7484e),
  paired: both servers up, each seed sent to both in alternating order, so drift in the machine's load hits both.

``--readme`` writes the latency table into the README's ``serve-latency`` block and, for the embedded bundle,
its model card's ``latency`` block (numbers are never typed by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from baseline import BUNDLE_1_0, baseline_from_git
from readme import table, write_block

ROOT = Path(__file__).resolve().parents[1]
GEN_BODY: dict = {}  # the API's defaults: texture 512, mesh 256, all five outputs


@contextmanager
def server(bundle: Path, max_batch: int, wait_ms: float | None = None):
    """A service on ``bundle`` on a free loopback port, ``max_batch`` rows per graph call; ``wait_ms`` None: the
    service's default wait for a batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, FACE_MAX_BATCH=str(max_batch), FACE_MAX_QUEUE="256")
    env.pop("FACE_MAX_WAIT_MS", None)
    if wait_ms is not None:
        env["FACE_MAX_WAIT_MS"] = str(wait_ms)
    env["FACE_RESULTS_DIR"] = tempfile.mkdtemp(prefix="bench-results-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--bundle", str(bundle), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise SystemExit(f"the server for {bundle} exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def timed_requests(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], float, list[dict]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    answers: list[dict] = []
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(body: dict) -> None:
            async with sem:
                t = time.perf_counter()
                r = await client.post(url + "/generate", json=body)
                latencies.append(time.perf_counter() - t)
                r.raise_for_status()
                answers.append(r.json())

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    return latencies, wall, answers


def stage_means(answers: list[dict]) -> dict[str, float]:
    """Mean ms per stage over all answers; a stage a request skipped counts 0 (e.g. the encoding that only the
    first request at a mesh resolution does, or the CNN detector)."""
    stages: dict[str, float] = {}
    for a in answers:
        for k, v in a["timings_ms"].items():
            stages[k] = stages.get(k, 0.0) + v
    return {k: v / len(answers) for k, v in stages.items()}


def bench_generate(bundle: Path, n: int, seed0: int) -> dict:
    with server(bundle, max_batch=16) as url:
        bodies = [dict(GEN_BODY, seed=seed0 + i) for i in range(n)]
        lat, _, answers = asyncio.run(timed_requests(url, bodies, 1))
    out = {"n": n, "p50": 1000 * pct(lat, 50), "p95": 1000 * pct(lat, 95), "stages": stage_means(answers)}
    print(f"\n/generate at concurrency 1 ({n} distinct seeds, the default body: texture 512, mesh 256, all outputs):")
    print(f"  p50 {out['p50']:.0f} ms   p95 {out['p95']:.0f} ms")
    print("  mean per stage (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in out["stages"].items()))
    return out


def bench_generate_paired(bundle: Path, baseline: Path, n: int, seed0: int) -> dict:
    """/generate latency of ``bundle`` and ``baseline`` on the same seeds, interleaved (A B, B A, …)."""

    async def run(urls: dict[str, str]) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
        lat: dict[str, list[float]] = {k: [] for k in urls}
        answers: dict[str, list[dict]] = {k: [] for k in urls}
        async with httpx.AsyncClient(timeout=300) as client:
            for url in urls.values():  # warm-up: the first request at a mesh size builds its topology
                (await client.post(url + "/generate", json=dict(GEN_BODY, seed=seed0 - 1))).raise_for_status()
            for i in range(n):
                order = list(urls) if i % 2 == 0 else list(urls)[::-1]
                for key in order:
                    t = time.perf_counter()
                    r = await client.post(urls[key] + "/generate", json=dict(GEN_BODY, seed=seed0 + i))
                    lat[key].append(time.perf_counter() - t)
                    r.raise_for_status()
                    answers[key].append(r.json())
        return lat, answers

    with server(bundle, max_batch=16) as url, server(baseline, max_batch=16) as base_url:
        lat, answers = asyncio.run(run({"this": url, "baseline": base_url}))
    this, base = (1000 * np.asarray(lat[k]) for k in ("this", "baseline"))
    out = {
        "n": n,
        "p50": float(np.median(this)),
        "baseline_p50": float(np.median(base)),
        "paired_ratio": float(np.median(this / base)),
        # where the difference is: the mean time per pipeline stage of each (a stage one of them lacks counts 0)
        "stages": stage_means(answers["this"]),
        "baseline_stages": stage_means(answers["baseline"]),
    }
    print(f"\n/generate, paired with the baseline bundle ({n} seeds, each to both servers, alternating order):")
    print(f"  p50 this {out['p50']:.0f} ms, baseline {out['baseline_p50']:.0f} ms; "
          f"median per-seed ratio this / baseline {out['paired_ratio']:.2f}")  # fmt: skip
    print("  mean per stage (ms), this / baseline: " + stage_pairs(out["stages"], out["baseline_stages"]))
    return out


def stage_pairs(this: dict[str, float], base: dict[str, float]) -> str:
    """``stage a / b, …`` over the stages of either (in this one's order), 0 where one has no such stage."""
    names = list(this) + [k for k in base if k not in this]
    return ", ".join(f"{k} {this.get(k, 0.0):.1f} / {base.get(k, 0.0):.1f}" for k in names)


def bench_throughput(bundle: Path, n: int, seed0: int) -> dict[int, dict[str, float]]:
    """/generate requests/s at concurrency 1-64: dynamic batching (max 16) taking what is queued, batching that
    also waits 5 ms for requests in flight (the GPU default's wait), none (the CPU default)."""
    configs = {"batching, no wait": (16, 0.0), "batching, 5 ms wait": (16, 5.0), "no batching": (1, 0.0)}
    print("\n/generate throughput (requests/s), distinct seeds:")
    print(f"  {'concurrency':>11} | " + " | ".join(f"{k:>22}" for k in configs))
    results: dict[int, dict[str, float]] = {}
    for j, (name, (max_batch, wait_ms)) in enumerate(configs.items()):
        with server(bundle, max_batch=max_batch, wait_ms=wait_ms) as url:
            for conc in (1, 4, 16, 64):
                count = max(n, conc * 2)
                bodies = [dict(GEN_BODY, seed=seed0 + 100_000 * (j + 1) + 1000 * conc + i) for i in range(count)]
                _, wall, _ = asyncio.run(timed_requests(url, bodies, conc))
                results.setdefault(conc, {})[name] = count / wall
    for conc, r in results.items():
        print(f"  {conc:>11} | " + " | ".join(f"{r[k]:>22.2f}" for k in configs))
    for name in list(configs)[:2]:
        ratios = [r[name] / r["no batching"] for r in results.values()]
        print(f"  {name} / no batching: {min(ratios):.2f}-{max(ratios):.2f}×")
    return results


RECONSTRUCT_BODY = {"texture_size": "512"}  # the README's example; the rest at the service's defaults


def bench_reconstruct(bundle: Path, photos: Path, n: int, albedo: str = "photo") -> dict | None:
    """/reconstruct with the README's body (and ``albedo``) at concurrency 1: p50/p95 of the latency and of each
    stage, and per photo (the detector used tells which photos needed the CNN)."""
    from PIL import Image

    files = sorted(photos.glob("*.jpg"))
    if not files:
        print(f"\n/reconstruct: no photos in {photos}; skipped")
        return None
    rows: list[tuple[str, float, dict]] = []
    with server(bundle, max_batch=16) as url:
        with httpx.Client(timeout=300) as client:
            for i in range(n):
                img = Image.open(files[i % len(files)]).convert("RGB")
                px = np.asarray(img).copy()
                px[0, 0] = (i * 37) % 256  # a distinct upload every time: no cache hits
                buf = io.BytesIO()
                Image.fromarray(px).save(buf, "JPEG", quality=92)
                t = time.perf_counter()
                r = client.post(
                    url + "/reconstruct",
                    files={"image": ("p.jpg", buf.getvalue(), "image/jpeg")},
                    data={**RECONSTRUCT_BODY, "albedo": albedo},
                )
                if r.status_code == 200:
                    rows.append((files[i % len(files)].stem, time.perf_counter() - t, r.json()))
    body = ", ".join(f"{k} {v}" for k, v in {**RECONSTRUCT_BODY, "albedo": albedo}.items())
    print(f"\n/reconstruct at concurrency 1 ({n} uploads of {len(files)} photos; {body}, the rest default):")
    if not rows:
        print("  no request succeeded")
        return None
    lat = [s for _, s, _ in rows]
    print(f"  p50 {1000 * pct(lat, 50):.0f} ms   p95 {1000 * pct(lat, 95):.0f} ms   ({len(rows)}/{n} succeeded)")
    stages: dict[str, list[float]] = {}
    for _, _, answer in rows:
        for k, v in answer["timings_ms"].items():
            stages.setdefault(k, []).append(v)
    print("  per stage, p50 / p95 / mean (ms): " + ", ".join(
        f"{k} {pct(v, 50):.0f} / {pct(v, 95):.0f} / {statistics.mean(v):.0f}" for k, v in stages.items()
    ))  # fmt: skip
    for name in sorted({name for name, _, _ in rows}):
        mine = [(s, a) for n_, s, a in rows if n_ == name]
        detectors = sorted({a["face"]["detector"] for _, a in mine})
        detect_ms = statistics.mean(a["timings_ms"]["detect"] for _, a in mine)
        print(f"  {name}: mean {1000 * statistics.mean(s for s, _ in mine):.0f} ms, detector {'/'.join(detectors)}, "
              f"detect {detect_ms:.0f} ms")  # fmt: skip
    return {
        "albedo": albedo,
        "n": len(rows),
        "photos": len(files),
        "p50": 1000 * pct(lat, 50),
        "p95": 1000 * pct(lat, 95),
        "stages": stage_means([answer for _, _, answer in rows]),
    }


def bench_onnx_vs_eager(bundle: Path, repeat: int = 5) -> list[tuple[int, float, float]]:
    import onnx
    import onnxruntime as ort
    import torch

    from models.stylegan2 import Generator, GeneratorConfig
    from training.export import AlbedoGraph

    manifest = json.loads((bundle / "manifest.json").read_text())
    G = Generator.from_config(GeneratorConfig.from_dict(manifest["generator_config"])).eval()
    path = bundle / manifest["graphs"]["albedo"]["file"]
    # the same computation: the blocks the graph runs (a block that draws nothing is exported without its weights)
    names = {i.name for i in onnx.load(str(path)).graph.initializer}
    runs = [r for r in G.synthesis.block_resolutions if any(n.startswith(f"synthesis.b{r}.") for n in names)]
    eager = AlbedoGraph(G, draw_until=max(runs, default=G.synthesis.img_resolution))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    print("\nAlbedoGAN synthesis, ONNX vs eager PyTorch (same config, this process, CPU), ms per call:")
    print(f"  {'batch':>5} | {'eager':>8} | {'onnxruntime':>11} | speed-up")
    rows = []
    for batch in (1, 8):
        ws = torch.randn(batch, G.num_ws, G.w_dim)
        times_e, times_o = [], []
        with torch.no_grad():
            eager(ws)
            sess.run(None, {"ws": ws.numpy()})
            for _ in range(repeat):
                t = time.perf_counter()
                eager(ws)
                times_e.append(time.perf_counter() - t)
                t = time.perf_counter()
                sess.run(None, {"ws": ws.numpy()})
                times_o.append(time.perf_counter() - t)
        e, o = 1000 * min(times_e), 1000 * min(times_o)
        print(f"  {batch:>5} | {e:>8.1f} | {o:>11.1f} | {e / o:.2f}×")
        rows.append((batch, e, o))
    return rows


def main() -> None:
    from facecore.bundle import load_bundle
    from service.settings import EMBEDDED_BUNDLE

    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "fixtures" / "photos")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--reconstruct-only", action="store_true", help="only /reconstruct, --requests uploads")
    parser.add_argument(
        "--baseline-rev", default=None, help=f"/generate paired with this git revision's bundle (1.0: {BUNDLE_1_0})"
    )
    parser.add_argument("--readme", action="store_true", help="write the latency table into the README (and card)")
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    print(f"bundle {manifest['name']} {manifest['version']} ({args.bundle}); CPU cores: {os.cpu_count()}")
    seed0 = int(time.time()) % 1_000_000 * 1000
    gen = None
    recs: list[dict] = []
    paired = None
    throughput = None
    if not args.reconstruct_only:
        gen = bench_generate(args.bundle, args.requests, seed0)
        if args.baseline_rev:
            with tempfile.TemporaryDirectory() as tmp:
                baseline = baseline_from_git(args.baseline_rev, Path(tmp))
                base_version = json.loads((baseline / "manifest.json").read_text())["version"]
                paired = {"rev": args.baseline_rev, "version": base_version,
                          **bench_generate_paired(args.bundle, baseline, args.requests, seed0 + 200)}  # fmt: skip
    if "encoder" in manifest["graphs"]:
        n = args.requests if args.reconstruct_only else max(6, args.requests // 3)
        modes = ["photo", "generated"] if load_bundle(args.bundle).generated_reconstruct else ["photo"]
        recs = [r for r in (bench_reconstruct(args.bundle, args.photos, n, mode) for mode in modes) if r]
    else:
        print("\n/reconstruct: this bundle has no encoder graph; skipped")
    if not args.reconstruct_only:
        if not args.skip_throughput:
            throughput = bench_throughput(args.bundle, args.requests, seed0 + 500)
        bench_onnx_vs_eager(args.bundle)
    if args.readme:
        write_latency(args.bundle, gen, recs, paired, throughput)


def latency_table(gen: dict | None, recs: list[dict]) -> str:
    def stages(d: dict) -> str:
        return ", ".join(f"{k} {v:.0f}" for k, v in d["stages"].items())

    rows = []
    if gen:
        rows.append((f"/generate, default body (texture 512, mesh 256, all outputs), {gen['n']} distinct seeds",
                     f"{gen['p50']:.0f} ms", f"{gen['p95']:.0f} ms", stages(gen)))  # fmt: skip
    for rec in recs:
        body = ", ".join(f"{k} {v}" for k, v in {**RECONSTRUCT_BODY, "albedo": rec["albedo"]}.items())
        rows.append((f"/reconstruct ({body}), {rec['n']} uploads of {rec['photos']} fixture photos",
                     f"{rec['p50']:.0f} ms", f"{rec['p95']:.0f} ms", stages(rec)))  # fmt: skip
    header = ("endpoint, concurrency 1, HTTP on loopback", "p50", "p95", "stages (mean ms over all requests)")
    return table(header, rows)


def write_latency(
    bundle: Path,
    gen: dict | None,
    recs: list[dict],
    paired: dict | None = None,
    throughput: dict[int, dict[str, float]] | None = None,
) -> None:
    from service.settings import EMBEDDED_BUNDLE

    command = "python benchmarks/serve.py" + (f" --baseline-rev {paired['rev']}" if paired else "") + " --readme"
    text = f"On this {os.cpu_count()}-core CPU (`{command}`):\n\n" + latency_table(gen, recs)
    if paired:
        text += (
            f"\n\n/generate against bundle {paired['version']} (git {paired['rev']}) in the same run, {paired['n']} "
            f"other seeds sent to both servers in alternating order after a warm-up: p50 {paired['p50']:.0f} ms "
            f"(this bundle) vs {paired['baseline_p50']:.0f} ms, median per-seed ratio {paired['paired_ratio']:.2f}; "
            f"mean per stage (ms), this / that bundle: {stage_pairs(paired['stages'], paired['baseline_stages'])}."
        )
    if throughput:
        cells = {k: [r[k] for r in throughput.values()] for k in next(iter(throughput.values()))}
        none = cells.pop("no batching")
        spans = [
            f"{k} {min(v):.0f}-{max(v):.0f} ({min(np.divide(v, none)):.2f}-{max(np.divide(v, none)):.2f}× of none "
            "at the same concurrency)"
            for k, v in cells.items()
        ] + [f"none {min(none):.0f}-{max(none):.0f}"]
        text += (
            f"\n\n/generate throughput at concurrency {', '.join(map(str, throughput))} (requests/s, lowest-highest; "
            f"dynamic batching up to 16): {'; '.join(spans)}. So on the CPU the service batches nothing by default "
            "(`FACE_MAX_BATCH` / `FACE_MAX_WAIT_MS` unset: 1 row and no wait on the CPU, 8 rows and 5 ms with a GPU)."
        )
    write_block("serve-latency", text)
    print("wrote the README's serve-latency block")
    if bundle.resolve() == Path(EMBEDDED_BUNDLE).resolve():
        write_block("latency", text, bundle / "MODEL_CARD.md")
        print("wrote the model card's latency block")


if __name__ == "__main__":
    main()
