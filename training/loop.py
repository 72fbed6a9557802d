"""The one training-loop skeleton every training stage runs (AlbedoGAN pretraining, shape, alternate descent).

A stage subclasses :class:`TrainingLoop` and supplies its procedure: :meth:`~TrainingLoop.train_step` (one step,
returning its JSON log), what a checkpoint holds (:meth:`~TrainingLoop.modules`,
:meth:`~TrainingLoop.optimizers`, :meth:`~TrainingLoop.checkpoint_extra`, :meth:`~TrainingLoop.check_resumable`,
:meth:`~TrainingLoop.restore`) and optional hooks (start, periodic work, scalars, the end). The loop owns the
plumbing that is the same for every stage: resume from the latest checkpoint, the TensorBoard writer and the
``losses.jsonl`` step log (one line per step, with its ``seconds``), the progress bar, periodic and final
checkpoints (rank 0 writes, every rank waits), stopping early at ``max_steps`` with a checkpoint so a later
invocation resumes, and the end-of-schedule hook. Killed at any moment, a run loses at most one checkpoint
interval of work.

Also the per-step random streams (:func:`derive_seed`): every random draw of a step is a function of
``(seed, step, rank, stream)``, which is what makes resuming exact.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import latest_checkpoint, load_checkpoint, open_run_logs, save_checkpoint
from training.distributed import DistInfo, barrier

logger = logging.getLogger(__name__)


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy ``SeedSequence`` hashing of their 64-bit words)."""
    words: list[int] = []
    for v in values:
        v = int(v)
        words += [v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return ((int(state[1]) << 32) | int(state[0])) & ((1 << 63) - 1)


@dataclass(frozen=True)
class LoopSchedule:
    """When the loop does what.

    Attributes:
        total: steps of the whole schedule (the end hook runs when the run reaches it).
        max_steps: stop this invocation at this step (time slicing, tests); None = run to ``total``.
        log_every: TensorBoard scalars interval (steps).
        checkpoint_every: checkpoint interval (steps); also at the end of the schedule.
        checkpoint_on_stop: checkpoint when ``max_steps`` stops the run between intervals.
        keep_checkpoints: checkpoints kept on disk.
        progress: show the progress bar (rank 0).
        desc: the progress bar's label.
    """

    total: int
    max_steps: int | None
    log_every: int
    checkpoint_every: int
    checkpoint_on_stop: bool
    keep_checkpoints: int
    progress: bool
    desc: str

    @classmethod
    def of(cls, config: Any, total: int, desc: str) -> LoopSchedule:
        """The schedule of a stage configuration that has the fields above (but ``total`` and ``desc``)."""
        names = ("max_steps", "log_every", "checkpoint_every", "checkpoint_on_stop", "keep_checkpoints", "progress")
        return cls(total=total, desc=desc, **{name: getattr(config, name) for name in names})


class TrainingLoop:
    """Base of every stage's trainer: subclasses set ``out``, ``info``, ``device`` and ``loop`` (a
    :class:`LoopSchedule`), then call :meth:`run_loop`."""

    out: Path
    info: DistInfo
    device: torch.device
    loop: LoopSchedule
    step: int = 0
    writer: Any = None

    # -- what a stage supplies -----------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """Run step ``self.step``; return its JSON-compatible log (``losses.jsonl``)."""
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """The modules a checkpoint holds."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers a checkpoint holds."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-compatible state beside the tensors (configuration, histories, counters)."""
        return {}

    def check_resumable(self, path: Path, extra: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if the checkpoint at ``path`` cannot continue under this configuration."""

    def restore(self, extra: Mapping[str, Any]) -> None:
        """Restore the non-tensor state of a loaded checkpoint (``self.step`` is already set)."""

    def on_start(self) -> None:
        """Once, at the start of a fresh (not resumed) run, after the logs are open."""

    def on_logs_open(self) -> None:
        """After the writer is open (fresh or resumed), on rank 0."""

    def log_scalars(self, window: list[dict[str, Any]], seconds: float) -> None:
        """Every ``log_every`` steps: the step logs since the last call and the seconds their steps took."""

    def progress_postfix(self, log: Mapping[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {}

    def after_step(self, log: Mapping[str, Any], final: bool) -> None:
        """After every step (``self.step`` already counts it): samples, images, evaluation."""

    def on_schedule_end(self) -> None:
        """Once the schedule is complete (after the final checkpoint): export, final evaluation."""

    # -- checkpoints ---------------------------------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> None:
        """Checkpoint step ``self.step`` (rank 0 writes; every rank waits)."""
        if self.info.is_main:
            save_checkpoint(
                self.ckpt_dir,
                self.step,
                self.modules(),
                self.optimizers(),
                self.checkpoint_extra(),
                self.loop.keep_checkpoints,
            )
        barrier(self.info)

    def resume(self) -> bool:
        """Load the latest checkpoint of the run folder, if any. Returns whether one was loaded."""
        path = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir.is_dir() else None
        if path is None:
            return False
        self.check_resumable(path, json.loads((path / "meta.json").read_text())["extra"])
        step, extra = load_checkpoint(path, self.modules(), self.optimizers(), map_location=self.device)
        self.step = step
        self.restore(extra)
        return True

    # -- the loop ------------------------------------------------------------------------------------------------

    def run_loop(self) -> tuple[bool, list[dict[str, Any]]]:
        """Resume, train to ``max_steps`` or the end of the schedule. Returns (schedule done, this call's logs)."""
        from tqdm import tqdm

        sched = self.loop
        resumed = self.resume()
        if self.info.is_main:
            self.writer = open_run_logs(self.out, self.step, resumed)
            self.on_logs_open()
        if not resumed:
            self.on_start()
        stop = sched.total if sched.max_steps is None else min(sched.total, sched.max_steps)
        bar = tqdm(
            total=sched.total,
            initial=self.step,
            disable=not (self.info.is_main and sched.progress),
            unit="step",
            dynamic_ncols=True,
            desc=sched.desc,
        )
        logs: list[dict[str, Any]] = []
        window: list[dict[str, Any]] = []
        seconds = 0.0  # time spent in training steps since the last scalars (not in samples, metrics, saving)
        try:
            while self.step < stop:
                t0 = time.perf_counter()
                log = self.train_step()
                dt = time.perf_counter() - t0
                seconds += dt
                log["seconds"] = dt
                logs.append(log)
                window.append(log)
                if self.info.is_main:
                    with open(self.out / "losses.jsonl", "a") as fh:
                        fh.write(json.dumps(log) + "\n")
                self.step += 1
                bar.update(1)
                bar.set_postfix(self.progress_postfix(log))
                final = self.step == sched.total
                if self.step % sched.log_every == 0 or self.step == stop:
                    self.log_scalars(window, seconds)
                    window, seconds = [], 0.0
                self.after_step(log, final)
                if self.step % sched.checkpoint_every == 0 or final:
                    self.save()
        finally:
            bar.close()
        done = self.step >= sched.total
        if done:
            self.on_schedule_end()
        elif sched.checkpoint_on_stop and self.step % sched.checkpoint_every != 0:
            self.save()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        return done, logs
