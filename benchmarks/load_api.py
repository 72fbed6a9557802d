"""Load, fault and latency scenarios against a real server on loopback; prints numbers.

    python benchmarks/load_api.py [--bundle PATH] [--scenario all|burst|bigupload|smallcap|latency]
                                  [--clients 64] [--seconds 60]

* burst: ``--clients`` clients send distinct default /generate bodies for ``--seconds``; statuses (5xx, 504,
  503 with/without Retry-After), latency of the 200s, and /health/live p50/p99 polled every 50 ms meanwhile,
  both from the clients' event loop (its own delays included) and from a separate process (the server's alone);
* bigupload: /generate p50/p95 at 4 clients alone, then with a 5000×5000 photo uploaded to /reconstruct over
  and over in parallel (the change in p95);
* smallcap: FACE_RESULTS_MAX_BYTES=5 MB, 8 writers + 4 readers of the links for 45 s: 5xx, truncated bodies;
* latency: /reconstruct (texture 512, the README's example) on the fixture photos and /generate with the
  default body at concurrency 1: p50/p95 and the mean per stage; then, after each /generate, the first GET of
  each of its files (files are made on their first fetch), p50 per file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from serve import ROOT, server

from service.settings import EMBEDDED_BUNDLE


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def live_probe(client: httpx.AsyncClient, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        try:
            await client.get("/health/live", timeout=30)
            out.append(time.perf_counter() - t)
        except httpx.HTTPError:
            out.append(30.0)
        await asyncio.sleep(0.05)


def _poll_live(url: str, stop, out) -> None:
    """:func:`live_probe` in a process of its own, with a blocking client; the latencies are put on ``out``."""
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                client.get("/health/live")
                latencies.append(time.perf_counter() - t)
            except httpx.HTTPError:
                latencies.append(30.0)
            time.sleep(0.05)
    out.put(latencies)


@contextlib.asynccontextmanager
async def live_probe_process(url: str):
    """/health/live polled every 50 ms while the block runs, from a separate process: the load's clients share
    this process's event loop, and its delays (seconds of JSON parsing for 64 clients) would count as the
    server's. Yields the list of latencies, filled when the block ends."""
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_poll_live, args=(url, stop, out), daemon=True)
    proc.start()
    latencies: list[float] = []
    try:
        yield latencies
    finally:
        stop.set()
        latencies.extend(await asyncio.to_thread(out.get, timeout=120))
        proc.join()


async def generate_loop(client, stop, seeds, stats, body=None) -> None:
    while not stop.is_set():
        seed = next(seeds)
        t = time.perf_counter()
        try:
            r = await client.post("/generate", json={"seed": seed, **(body or {})}, timeout=120)
        except httpx.HTTPError as exc:
            stats["errors"].append(repr(exc))
            continue
        dt = time.perf_counter() - t
        stats["status"][r.status_code] += 1
        if r.status_code == 200:
            stats["ok"].append(dt)
        elif r.status_code == 503:
            stats["retry_after"] += "retry-after" in r.headers
            await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 2.0))


def new_stats() -> dict:
    return {"status": collections.Counter(), "ok": [], "errors": [], "retry_after": 0}


def seed_counter(start: int):
    n = start
    while True:
        n += 1
        yield n


async def burst(url: str, clients: int, seconds: float) -> None:
    stats, live = new_stats(), []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 4)
    async with (
        httpx.AsyncClient(base_url=url, limits=limits) as client,
        httpx.AsyncClient(base_url=url) as probe,
        live_probe_process(url) as alone,
    ):
        seeds = seed_counter(10_000)
        tasks = [asyncio.create_task(generate_loop(client, stop, seeds, stats)) for _ in range(clients)]
        prober = asyncio.create_task(live_probe(probe, stop, live))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks, prober)
    n503 = stats["status"].get(503, 0)
    fivexx = sum(n for s, n in stats["status"].items() if s >= 500 and s != 503)
    print(f"## burst: {clients} clients x {seconds:.0f} s, default /generate body (texture 512, mesh 256, 5 outputs)")
    print(
        f"statuses {dict(stats['status'])}; 5xx other than 503: {fivexx}; 504: {stats['status'].get(504, 0)}; "
        f"503 with Retry-After: {stats['retry_after']}/{n503}; client errors {len(stats['errors'])}"
    )
    print(
        f"200s: {len(stats['ok'])} ({len(stats['ok']) / seconds:.2f}/s), latency p50 {pct(stats['ok'], 50):.2f} s, "
        f"p95 {pct(stats['ok'], 95):.2f} s"
    )
    for where, values in (("in the clients' event loop", live), ("from a process of its own", alone)):
        print(
            f"/health/live during the burst, {where}: n={len(values)}, p50 {pct(values, 50) * 1000:.1f} ms, "
            f"p99 {pct(values, 99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
        )


async def bigupload(url: str, seconds: float) -> None:
    rng = np.random.default_rng(0)
    photo = Image.open(ROOT / "tests" / "fixtures" / "photos" / "cc0-interfaces-001.jpg").convert("RGB")
    big = np.asarray(photo.resize((5000, 5000))).copy()
    big[::7, ::7] = rng.integers(0, 255, big[::7, ::7].shape)  # distinct content, so no cache hit
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    body = {"texture_size": 512, "mesh_resolution": 256}
    results = {}
    async with httpx.AsyncClient(base_url=url) as client:
        for label, upload in (("alone", False), ("with 5000² uploads", True)):
            stats, live = new_stats(), []
            stop = asyncio.Event()
            seeds = seed_counter(20_000 if upload else 30_000)
            tasks = [asyncio.create_task(generate_loop(client, stop, seeds, stats, body)) for _ in range(4)]
            tasks.append(asyncio.create_task(live_probe(client, stop, live)))
            uploads = collections.Counter()

            async def uploader(stop=stop, uploads=uploads):
                i = 0
                while not stop.is_set():
                    i += 1
                    # distinct bytes (no cache hit) at the default mesh size: the cost of the upload itself, not
                    # of a mesh resolution no request used before (its tables and an eager OBJ, ~1 s of CPU)
                    form = {"texture_size": "512", "detector": "auto"}
                    big = data + i.to_bytes(4, "little")
                    r = await client.post(
                        "/reconstruct", files={"image": ("big.jpg", big, "image/jpeg")}, data=form, timeout=120
                    )
                    uploads[r.status_code] += 1

            if upload:
                tasks.append(asyncio.create_task(uploader()))
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            results[label] = stats
            print(
                f"## bigupload, /generate x4 {label}: n={len(stats['ok'])}, p50 {pct(stats['ok'], 50):.3f} s, "
                f"p95 {pct(stats['ok'], 95):.3f} s, statuses {dict(stats['status'])}; /health/live p99 "
                f"{pct(live, 99) * 1000:.1f} ms" + (f"; uploads {dict(uploads)}" if upload else "")
            )
    a, b = (pct(results[k]["ok"], 95) for k in results)
    print(f"p95 change with the 5000² uploads: {100 * (b - a) / a:+.1f} %")


async def smallcap(url: str, seconds: float) -> None:
    stats = collections.Counter()
    stop = asyncio.Event()
    links: list[str] = []
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=16)) as client:
        seeds = seed_counter(40_000)

        async def writer():
            while not stop.is_set():
                body = {"seed": next(seeds), "texture_size": 512, "mesh_resolution": 128}
                r = await client.post("/generate", json=body, timeout=120)
                stats[f"POST {r.status_code}"] += 1
                if r.status_code == 200:
                    links.extend(r.json()["links"].values())

        async def reader():
            i = 0
            while not stop.is_set():
                if not links:
                    await asyncio.sleep(0.05)
                    continue
                i += 1
                link = links[-1 - (i % min(len(links), 8))]  # the newest result's files: mostly still stored
                try:
                    async with client.stream("GET", link, timeout=120) as r:
                        n = 0
                        async for chunk in r.aiter_raw():
                            n += len(chunk)
                    stats[f"GET {r.status_code}"] += 1
                    if r.status_code == 200 and n != int(r.headers["content-length"]):
                        stats["truncated"] += 1
                except httpx.HTTPError:
                    stats["truncated"] += 1

        tasks = [asyncio.create_task(writer()) for _ in range(8)] + [asyncio.create_task(reader()) for _ in range(4)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    fivexx = sum(n for k, n in stats.items() if k.split()[-1].startswith("5") and not k.endswith("503"))
    print(f"## smallcap: 5 MB cap, 8 writers + 4 readers x {seconds:.0f} s: {dict(sorted(stats.items()))}")
    print(f"5xx other than 503: {fivexx}; truncated bodies: {stats['truncated']}")


async def latency(url: str, n_generate: int) -> None:
    photos = sorted((ROOT / "tests" / "fixtures" / "photos").glob("*.jpg"))
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for name, calls in (
            ("reconstruct (texture 512)", [("rec", p) for p in photos] * 2),
            ("generate (default body)", [("gen", 50_000 + i) for i in range(n_generate)]),
        ):
            times, stages, statuses = [], collections.defaultdict(list), collections.Counter()
            fetches = collections.defaultdict(list)  # file → seconds of its first GET (files made on first fetch)
            for i, (kind, arg) in enumerate(calls):
                t = time.perf_counter()
                if kind == "rec":  # the README's example; trailing bytes make each upload distinct (no cache hit)
                    data = arg.read_bytes() + i.to_bytes(4, "little")
                    r = await client.post(
                        "/reconstruct", files={"image": ("p.jpg", data, "image/jpeg")}, data={"texture_size": "512"}
                    )
                else:
                    r = await client.post("/generate", json={"seed": arg})
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    times.append(time.perf_counter() - t)
                    for k, v in r.json()["timings_ms"].items():
                        stages[k].append(v)
                    # bundle.zip last: its first GET makes every file not made yet
                    links = sorted(r.json()["links"].items(), key=lambda item: item[0] == "bundle.zip")
                    for file, link in links if kind == "gen" else ():
                        t = time.perf_counter()
                        if (await client.get(link)).status_code == 200:
                            fetches[file].append(time.perf_counter() - t)
            per_stage = ", ".join(f"{k} {statistics.mean(v):.0f}" for k, v in sorted(stages.items()))
            print(
                f"## {name}: n={len(times)} statuses {dict(statuses)}: p50 {pct(times, 50) * 1000:.0f} ms, "
                f"p95 {pct(times, 95) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; stage means (ms): {per_stage}"
            )
            if fetches:
                per_file = ", ".join(f"{k} {pct(v, 50) * 1000:.0f}" for k, v in sorted(fetches.items()))
                print(f"   first GET of each file afterwards, p50 (ms): {per_file}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    parser.add_argument("--scenario", default="all", choices=["all", "burst", "bigupload", "smallcap", "latency"])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    todo = ["latency", "burst", "bigupload", "smallcap"] if args.scenario == "all" else [args.scenario]
    for scenario in todo:
        env = {"FACE_MAX_QUEUE": "256"}
        if scenario == "smallcap":
            env["FACE_RESULTS_MAX_BYTES"] = str(5 * 1024 * 1024)
        os.environ.update(env)
        with server(args.bundle, max_batch=8) as url:
            if scenario == "burst":
                asyncio.run(burst(url, args.clients, args.seconds))
            elif scenario == "bigupload":
                asyncio.run(bigupload(url, min(args.seconds, 30.0)))
            elif scenario == "smallcap":
                asyncio.run(smallcap(url, min(args.seconds, 45.0)))
            else:
                asyncio.run(latency(url, 12))
        os.environ.pop("FACE_RESULTS_MAX_BYTES", None)
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
