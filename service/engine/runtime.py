"""The served state: bundle + sessions + one dynamic batcher per graph + result store + metrics."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Mapping

import numpy as np

from facecore.bundle import Bundle, load_bundle
from service.engine import admission
from service.engine.admission import Gate, Stages
from service.engine.batcher import DynamicBatcher
from service.engine.sessions import GraphSession, open_sessions
from service.metrics import Metrics
from service.settings import Settings
from service.store import ResultStore, load_or_create_secret

logger = logging.getLogger(__name__)


#: the batchers' defaults (rows per call, wait in ms) when some graph runs on a GPU provider, where one call serves a
#: batch for about the price of one request (not measured here: no GPU)
GPU_BATCHING = (8, 5.0)
#: ... and when every graph runs on the CPU, where batching measured slower than none (:func:`batching`)
CPU_BATCHING = (1, 0.0)
#: onnxruntime's providers that run a graph on a GPU (others, e.g. Azure or OpenVINO's CPU device, count as the CPU)
GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)


def batching(settings: Settings, sessions: Mapping[str, GraphSession]) -> tuple[int, float]:
    """(max_batch, max_wait_ms): the settings', or where unset the defaults for where the graphs run. On the CPU a
    batch costs its rows' time (AlbedoGAN at batch 8: ~8 × batch 1) and holds all its requests' other stages until
    it is done, and a wait for requests in flight idles the graph (``benchmarks/serve.py``'s throughput table, in
    the README: /generate at concurrency 1-64 with and without batching, with and without a wait)."""
    on_gpu = any(s.providers and s.providers[0] in GPU_PROVIDERS for s in sessions.values())
    rows, wait_ms = GPU_BATCHING if on_gpu else CPU_BATCHING
    return (
        rows if settings.max_batch is None else settings.max_batch,
        wait_ms if settings.max_wait_ms is None else settings.max_wait_ms,
    )


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.bundle: Bundle = load_bundle(settings.bundle)
        self.sessions: dict[str, GraphSession] = open_sessions(
            self.bundle, settings.providers, settings.intra_op_threads
        )
        self.max_batch, self.max_wait_ms = batching(settings, self.sessions)
        self.batchers = {
            name: DynamicBatcher(
                name,
                session.run,
                self.max_batch,
                self.max_wait_ms / 1000.0,
                settings.max_queue,
                on_batch=metrics.on_batch,
                in_flight=lambda: self.gate.active,
            )
            for name, session in self.sessions.items()
        }
        self.store = ResultStore(settings.results_dir, settings.results_max_bytes, settings.results_ttl_s)
        metrics.tmp_removed.inc(self.store.removed_tmp)
        secret = settings.result_secret
        self.secret: bytes = (
            secret.get_secret_value().encode() if secret is not None else load_or_create_secret(settings.results_dir)
        )
        self.stages = Stages(
            {
                "detect": settings.detect_concurrency,
                "texture": settings.texture_concurrency,
                "geometry": settings.geometry_concurrency,
                "encode": settings.encode_concurrency,
            },
            settings.max_stage_queue,
        )
        self.gate = Gate(settings.max_inflight, settings.max_queue)
        self.ready = False
        self._writable = (0.0, True)
        self._watchdog: asyncio.Task | None = None
        m = self.bundle.manifest
        metrics.model.info({"name": m.name, "version": m.version, "digest": self.bundle.digest[:16]})

    async def start(self) -> None:
        for b in self.batchers.values():
            await b.start()
        self._watchdog = asyncio.create_task(self._watch(), name="batcher-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for b in self.batchers.values():
            await b.stop()
        self.stages.shutdown()

    async def _watch(self, period_s: float = 1.0) -> None:
        """Restart dead batcher workers (readiness reports them until then)."""
        while True:
            await asyncio.sleep(period_s)
            for b in self.batchers.values():
                if b.ensure_running():
                    self.metrics.worker_restarts.labels(b.name).inc()

    async def run_graph(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self.batchers[name].submit(inputs, admission.deadline.get())

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: the longer of the request gate's and the stages' expected waits."""
        return max(self.stages.retry_after_s(), math.ceil(self.gate.expected_wait_s()))

    async def run_stage(self, name: str, fn, *args):
        """A CPU stage of the pipeline under admission control (see :mod:`service.engine.admission`)."""
        return await self.stages.run(name, fn, *args)

    def result_id(self, canonical: bytes, scope: str = "") -> str:
        """The id of a result: HMAC-SHA256 of the canonical request under the server secret (and the client's
        scope, e.g. its API key), so that nobody without the secret can predict another client's ids."""
        return hmac.new(self.secret, scope.encode() + b"\0" + canonical, hashlib.sha256).hexdigest()

    async def problems(self) -> list[str]:
        """Why the service cannot serve right now (empty when it can): dead batcher workers, unwritable store."""
        out = []
        for b in self.batchers.values():
            if not b.alive:
                out.append(f"worker of graph '{b.name}' is not running (restarting)")
                if b.ensure_running():
                    self.metrics.worker_restarts.labels(b.name).inc()
        checked, ok = self._writable
        if time.monotonic() - checked > 1.0:
            ok = await asyncio.to_thread(self.store.writable)
            self._writable = (time.monotonic(), ok)
        if not ok:
            out.append(f"results folder {self.store.root} is not writable")
        return out
