"""The served state: bundle + sessions + one dynamic batcher per graph + result store + metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from facecore.bundle import Bundle, load_bundle
from service.engine.batcher import DynamicBatcher
from service.engine.sessions import GraphSession, open_sessions
from service.metrics import Metrics
from service.settings import Settings
from service.store import ResultStore

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.bundle: Bundle = load_bundle(settings.bundle)
        self.sessions: dict[str, GraphSession] = open_sessions(
            self.bundle, settings.providers, settings.intra_op_threads
        )
        self.batchers = {
            name: DynamicBatcher(
                name,
                session.run,
                settings.max_batch,
                settings.max_wait_ms / 1000.0,
                settings.max_queue,
                on_batch=metrics.on_batch,
            )
            for name, session in self.sessions.items()
        }
        self.store = ResultStore(settings.results_dir, settings.results_max_bytes, settings.results_ttl_s)
        self.ready = False
        m = self.bundle.manifest
        metrics.model.info({"name": m.name, "version": m.version, "digest": self.bundle.digest[:16]})

    async def start(self) -> None:
        for b in self.batchers.values():
            await b.start()

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()

    async def run_graph(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self.batchers[name].submit(inputs)
