"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "face_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.stage_latency = Histogram(
            "face_stage_seconds",
            "Latency per pipeline stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "face_batch_size",
            "Rows per model call",
            ["graph"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_depth = Gauge("face_queue_depth", "Requests waiting per graph", ["graph"], registry=self.registry)
        self.model = Info("face_model", "The served bundle", registry=self.registry)
        self.refused = Counter(
            "face_refused", "Requests refused at admission (503) by stage or graph", ["stage"], registry=self.registry
        )
        self.worker_restarts = Counter(
            "face_worker_restarts", "Dynamic-batcher workers restarted after dying", ["graph"], registry=self.registry
        )
        self.abandoned = Counter(
            "face_abandoned", "Requests stopped because their client disconnected first", registry=self.registry
        )
        self.tmp_removed = Counter(
            "face_store_tmp_removed", "Abandoned temporary result folders removed", registry=self.registry
        )

    def on_batch(self, graph: str, rows: int, waiting: int) -> None:
        self.batch_size.labels(graph).observe(rows)
        self.queue_depth.labels(graph).set(waiting)
