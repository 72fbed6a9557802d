"""Dynamic batcher (batching, bounds, failure isolation) and the result store (atomic, capped, TTL)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from service.engine.batcher import DynamicBatcher, QueueFull
from service.store import ResultStore


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    calls = []

    def fn(batch):
        calls.append(len(batch["x"]))
        time.sleep(0.01)
        return {"y": batch["x"] * 2}

    async def main():
        b = DynamicBatcher("t", fn, max_batch=8, max_wait_s=0.05, max_queue=100)
        await b.start()
        outs = await asyncio.gather(*(b.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(20)))
        await b.stop()
        return outs

    outs = run(main())
    for i, o in enumerate(outs):
        np.testing.assert_array_equal(o["y"], np.full((1, 2), 2 * i))
    assert sum(calls) == 20 and max(calls) == 8 and len(calls) <= 4  # 8 + 8 + 4, not 20 calls


def test_a_batch_waits_only_while_another_request_could_join_it():
    """With the count of requests in flight: a lone request runs at once (it had waited max_wait_s at every graph:
    ~20 ms of a /generate's ~60), two in flight wait for each other within max_wait_s."""
    for in_flight, expected in ((1, [1, 1]), (2, [2])):
        calls = []

        def fn(batch, calls=calls):
            calls.append(len(batch["x"]))
            return {"y": batch["x"]}

        async def main(in_flight=in_flight, fn=fn):
            b = DynamicBatcher("t", fn, max_batch=8, max_wait_s=1.0, max_queue=10, in_flight=lambda: in_flight)
            await b.start()
            first = asyncio.create_task(b.submit({"x": np.ones((1, 1))}))
            await asyncio.sleep(0.2)  # the second request reaches this graph later
            await b.submit({"x": np.ones((1, 1))})
            await first
            await b.stop()

        run(main())
        assert calls == expected, (in_flight, calls)


def test_default_batching_is_none_on_the_cpu_and_8_rows_waiting_5_ms_with_a_gpu(tiny_bundle, tmp_path, monkeypatch):
    """Unset, the batchers' rows and wait follow where the graphs run (runtime.batching: on the CPU a batch holds its
    requests' other stages and a wait idles the graph); FACE_MAX_BATCH / FACE_MAX_WAIT_MS always win. Also through a
    real Runtime on this CPU."""
    from types import SimpleNamespace

    from service.engine.runtime import Runtime, batching
    from service.metrics import Metrics
    from service.settings import Settings

    cpu = {"a": SimpleNamespace(providers=["CPUExecutionProvider"])}
    gpu = {**cpu, "b": SimpleNamespace(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])}
    for name in ("FACE_MAX_BATCH", "FACE_MAX_WAIT_MS"):
        monkeypatch.delenv(name, raising=False)
    unset, explicit = Settings(), Settings(max_batch=16, max_wait_ms=2.5)
    assert batching(unset, cpu) == (1, 0.0)
    assert batching(unset, gpu) == (8, 5.0)
    assert batching(explicit, cpu) == batching(explicit, gpu) == (16, 2.5)
    assert batching(Settings(max_batch=4), cpu) == (4, 0.0)
    # a provider other than the CPU's that runs on the CPU (this onnxruntime build has Azure's) is no GPU
    azure = {"a": SimpleNamespace(providers=["AzureExecutionProvider", "CPUExecutionProvider"])}
    assert batching(unset, azure) == (1, 0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACE_MAX_BATCH", "16")
        mp.setenv("FACE_MAX_WAIT_MS", "7")
        assert (Settings().max_batch, Settings().max_wait_ms) == (16, 7.0)
    settings = Settings(bundle=tiny_bundle, results_dir=tmp_path, providers=("CPUExecutionProvider",))
    runtime = Runtime(settings, Metrics())
    assert (runtime.max_batch, runtime.max_wait_ms) == (1, 0.0)
    assert {(b.max_batch, b.max_wait_s) for b in runtime.batchers.values()} == {(1, 0.0)}


def test_queue_bound_and_failure_isolation():
    def fn(batch):
        if np.any(batch["x"] < 0):
            raise RuntimeError("bad row")
        time.sleep(0.05)
        return {"y": batch["x"]}

    async def main():
        b = DynamicBatcher("t", fn, max_batch=1, max_wait_s=0.0, max_queue=2)
        await b.start()
        first = asyncio.create_task(b.submit({"x": np.ones((1, 1))}))
        await asyncio.sleep(0.01)  # the worker is busy with the first request
        queued = [asyncio.create_task(b.submit({"x": np.ones((1, 1))})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit({"x": np.ones((1, 1))})
        await asyncio.gather(first, *queued)
        with pytest.raises(RuntimeError, match="bad row"):
            await b.submit({"x": -np.ones((1, 1))})
        ok = await b.submit({"x": np.ones((1, 1))})  # the batcher keeps serving after a failure
        await b.stop()
        return ok

    assert run(main())["y"].shape == (1, 1)


def test_store_is_atomic_capped_and_expires(tmp_path):
    store = ResultStore(tmp_path, max_bytes=2500, ttl_s=3600)
    ids = [f"{i:064x}" for i in range(4)]
    for i, rid in enumerate(ids):
        store.put(rid, {"a.bin": bytes(1000)}, {"i": i})
        os.utime(tmp_path / rid, (time.time() - 100 + i, time.time() - 100 + i))
    store.evict()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ids[2:]  # least recently used evicted down to the cap
    assert store.meta(ids[3]) == {"i": 3}
    assert store.path(ids[3], "a.bin").stat().st_size == 1000
    assert store.path(ids[3], "../x") is None and store.path("nothex", "a.bin") is None
    with pytest.raises(ValueError, match="64 hex"):
        store.put("abc", {}, {})
    with pytest.raises(ValueError, match="bad result file name"):
        store.put(f"{9:064x}", {"../evil": b""}, {})
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # failed write left nothing
    old = time.time() - 7200
    short = ResultStore(tmp_path, max_bytes=10**9, ttl_s=60)
    os.utime(tmp_path / ids[2], (old, old))
    short.evict()
    assert not (tmp_path / ids[2]).exists() and (tmp_path / ids[3]).exists()


def test_invalid_settings_stop_the_server_with_the_variable_named(monkeypatch, caplog):
    """``FACE_MAX_BATCH=`` (empty) or a word: exit status 2 and a line naming the variable, not a traceback."""
    import uvicorn

    from service.__main__ import main

    def never(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", never)
    for name, value in (("FACE_MAX_BATCH", ""), ("FACE_MAX_BATCH", "many"), ("FACE_API_KEYS", '["top-secret-key", ')):
        monkeypatch.setenv(name, value)
        caplog.clear()
        with caplog.at_level("ERROR"):
            assert main(["--port", "0"]) == 2
        assert f"invalid settings: {name}" in caplog.text, caplog.text
        assert "top-secret-key" not in caplog.text  # a value may be a key: never logged
        monkeypatch.delenv(name)
    monkeypatch.setenv("FACE_PROVIDERS", "notjson")  # a complex field pydantic-settings cannot parse
    with caplog.at_level("ERROR"):
        assert main(["--port", "0"]) == 2
    assert "providers" in caplog.text
