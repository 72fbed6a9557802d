"""onnxruntime sessions for the bundle's graphs: CUDA when present, CPU otherwise, I/O checked vs manifest."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facecore.bundle import Bundle, BundleError, GraphSpec

logger = logging.getLogger(__name__)


def choose_providers(preferred: Sequence[str]) -> list[str]:
    """The preferred providers this onnxruntime build has, in order (CPU always last resort)."""
    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class GraphSession:
    """One ONNX graph: ``run({input: array}) -> {output: array}`` with float32 in and out."""

    def __init__(self, name: str, path: Path, spec: GraphSpec, providers: Sequence[str], threads: int = 0):
        self.name = name
        self.spec = spec
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting of the intra-op threads between (and after) model calls: several sessions, the stage
        # threads and the event loop share the cores, and spinning took CPU from all of them (64 clients on 2
        # cores: /generate throughput 4.1-4.9 → 6.7-9.1/s, /health/live p50 63-87 → 37-56 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load graph '{name}': {exc}") from exc
        got_in = {i.name: i.shape for i in self.session.get_inputs()}
        got_out = {o.name: o.shape for o in self.session.get_outputs()}
        for kind, want, got in (("inputs", spec.inputs, got_in), ("outputs", spec.outputs, got_out)):
            if set(want) != set(got):
                raise BundleError(
                    f"{path}: graph '{name}' has {kind} {sorted(got)}, manifest field 'graphs.{name}.{kind}' "
                    f"says {sorted(want)}"
                )
            for tensor, tspec in want.items():
                if len(got[tensor]) != len(tspec.shape):
                    raise BundleError(
                        f"{path}: {kind[:-1]} '{tensor}' of graph '{name}' has rank {len(got[tensor])}, manifest "
                        f"field 'graphs.{name}.{kind}.{tensor}.shape' has {len(tspec.shape)}"
                    )
        self.providers = self.session.get_providers()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        outputs = self.session.run(None, feeds)
        return {o.name: out for o, out in zip(self.session.get_outputs(), outputs, strict=True)}


def open_sessions(bundle: Bundle, providers: Sequence[str], threads: int = 0) -> dict[str, GraphSession]:
    """A session for every graph of the bundle."""
    chosen = choose_providers(providers)
    sessions = {
        name: GraphSession(name, bundle.graph_path(name), spec, chosen, threads)
        for name, spec in bundle.manifest.graphs.items()
    }
    logger.info("graphs %s on %s", sorted(sessions), chosen)
    return sessions


def inline_runner(sessions: Mapping[str, GraphSession]):  # noqa: ANN201 (service.pipeline.RunGraph)
    """``service.pipeline``'s ``run_graph`` on these sessions, in the caller's thread, one call at a time (offline
    use of the pipeline: calibration, fitting; the service batches across requests instead)."""

    async def run_graph(name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return sessions[name].run(inputs)

    return run_graph


def generated_albedos(sessions: Mapping[str, GraphSession], z: np.ndarray, chunk: int = 32) -> Iterator[np.ndarray]:
    """The bundle's AlbedoGAN at truncation 1 on latents ``z`` (N, z_dim), ``chunk`` at a time: (B, 3, R, R)
    float32 batches in the generator's [-1, 1] units, not clipped (offline evaluation and calibration; the service
    itself truncates and batches across requests)."""
    for start in range(0, len(z), chunk):
        ws = sessions["mapping"].run({"z": z[start : start + chunk]})["ws"]
        yield sessions["albedo"].run({"ws": ws})["albedo"]
