"""Admission control for the CPU stages (detection, unwrap, geometry, encoding): bounded and deadline-aware.

Each :class:`Stage` owns a fixed pool of worker threads (``concurrency``) and admits at most ``max_waiting``
more requests than it runs; beyond that, or when the work already ahead of a request cannot finish before the
request's deadline (estimated from the stage's recent service times), it raises :class:`QueueFull` at once —
the route answers 503 + Retry-After instead of a 504 after the timeout. Work that has not started when its
request is cancelled (timeout, client gone) is dropped from the pool's queue and never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.engine.batcher import QueueFull

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the event-loop time by which the current request must be answered (set by the routes; None = no deadline)
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class Stage:
    """A bounded pool of ``concurrency`` threads with at most ``max_waiting`` queued requests."""

    def __init__(self, name: str, concurrency: int, max_waiting: int, initial_estimate_s: float = 0.0, nice: int = 0):
        self.name = name
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.pending = 0  # admitted, not finished (running or waiting for a thread)
        self.service_s = initial_estimate_s  # moving average of one call's time
        self.refused = 0
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"stage-{name}", initializer=_lower_priority, initargs=(nice,)
        )

    def expected_wait_s(self) -> float:
        """Time until a request admitted now would finish: the rounds of work ahead of it plus its own."""
        return (self.pending // self.concurrency + 1) * self.service_s

    def admit(self) -> None:
        """Raise :class:`QueueFull` if this stage cannot take (or finish in time) one more request."""
        if self.pending >= self.concurrency + self.max_waiting:
            self.refused += 1
            raise QueueFull(f"stage '{self.name}' is full ({self.pending} requests admitted)")
        limit = deadline.get()
        if limit is not None and self.pending >= self.concurrency:
            left = limit - asyncio.get_running_loop().time()
            if self.expected_wait_s() > left:
                self.refused += 1
                raise QueueFull(
                    f"stage '{self.name}' is busy: the {self.pending} requests ahead would not finish within "
                    f"the request's remaining {max(left, 0):.1f} s"
                )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        self.admit()
        self.pending += 1
        loop = asyncio.get_running_loop()

        def timed() -> T:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                dt = time.perf_counter() - t
                loop.call_soon_threadsafe(self._observe, dt)

        future = self._executor.submit(contextvars.copy_context().run, timed)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _observe(self, dt: float) -> None:
        self.service_s = dt if self.service_s == 0.0 else 0.8 * self.service_s + 0.2 * dt

    def _release(self) -> None:
        self.pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Give the calling thread a lower CPU priority (Linux schedules threads one by one; elsewhere a no-op).

    The heavy stages (a 5000² photo's detection takes seconds of CPU) then yield the cores to the event loop,
    the model batchers and lighter requests when they compete, and run at full speed when nothing does.
    ``nice`` is added to the thread's niceness (inherited from the process): set as an absolute value it *raised*
    these threads above the event loop in a server started under ``nice`` (e.g. 10 → 2).
    """
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except (AttributeError, OSError):
        pass


class Stages:
    """The service's CPU stages by name; ``await stages.run(name, fn, *args)`` is the pipeline's ``run_stage``."""

    NAMES = ("detect", "texture", "geometry", "encode")
    #: thread niceness per stage: /reconstruct's photo stages yield to /generate and to the event loop
    NICE = {"detect": 10, "texture": 10, "geometry": 2, "encode": 2}

    def __init__(self, concurrency: dict[str, int], max_waiting: int):
        self.stages = {n: Stage(n, max(1, concurrency.get(n, 1)), max_waiting, nice=self.NICE[n]) for n in self.NAMES}

    async def run(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        return await self.stages[name].run(fn, *args)

    def retry_after_s(self) -> int:
        """A Retry-After hint: the longest stage's expected wait, at least one second."""
        return max(1, math.ceil(max((s.expected_wait_s() for s in self.stages.values()), default=1.0)))

    def shutdown(self) -> None:
        for s in self.stages.values():
            s.shutdown()


class Gate:
    """At most ``concurrency`` requests in their pipeline at once, at most ``max_waiting`` waiting for a place.

    The stages bound each kind of work; the gate bounds how many requests hold work in them, so that under
    overload a request is refused *before* it uses any CPU rather than after it did half its work and then
    ran out of time (work thrown away is throughput lost). A request is refused at once when the requests
    ahead of it would not leave before its deadline: each request's hold is predicted from the moving average of
    its *kind*'s (the routes name it: endpoint, answer, sizes; a kind not seen yet takes the average over all),
    as a 2048² zip holds its place hundreds of times longer than a JSON answer: with one average for all, light
    requests after heavy traffic were refused with a Retry-After of half a minute, and a burst of heavy ones after
    light traffic was admitted whole.
    """

    #: kinds whose hold is remembered (the least recently seen forgotten first)
    KINDS = 256

    def __init__(self, concurrency: int, max_waiting: int):
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.active = 0
        self.waiting = 0
        self.hold_s = 0.0  # the moving average of a request's hold, over every kind
        self._kind_hold: dict[Hashable, float] = {}
        self._ahead_s = 0.0  # the predicted holds of the requests inside and waiting
        self._semaphore: asyncio.Semaphore | None = None

    def predicted_s(self, kind: Hashable = None) -> float:
        """How long a request of ``kind`` is expected to hold its place."""
        return self._kind_hold.get(kind, self.hold_s)

    def expected_wait_s(self) -> float:
        """Time until a place frees for a request arriving now: the predicted work inside and waiting, shared."""
        if self.active + self.waiting < self.concurrency:
            return 0.0
        return self._ahead_s / self.concurrency

    @contextlib.asynccontextmanager
    async def enter(self, kind: Hashable = None):
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        if self.waiting >= self.max_waiting and self.active >= self.concurrency:
            raise QueueFull(f"stage 'requests' is full ({self.waiting} waiting, {self.active} running)")
        limit = deadline.get()
        loop = asyncio.get_running_loop()
        own = self.predicted_s(kind)
        if limit is not None and self.expected_wait_s() + own > limit - loop.time():
            raise QueueFull(
                f"stage 'requests' is busy: the {self.active + self.waiting} requests ahead would not leave room to "
                f"finish within the request's remaining {max(limit - loop.time(), 0):.1f} s"
            )
        self._ahead_s += own
        try:
            self.waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
            self.active += 1
            t = loop.time()
            learn = True
            try:
                yield
            except QueueFull:
                # refused by a stage just after the gate: it left within milliseconds, no measure of a request's
                # hold (a burst of those had collapsed the estimate, and the next burst of heavy requests was
                # admitted whole and refused at its deadline instead of at once)
                learn = False
                raise
            except asyncio.CancelledError:
                # stopped (its deadline, its client gone): it held the gate at least this long, which says
                # something only when that is longer than the prediction
                learn = loop.time() - t > own
                raise
            finally:
                self.active -= 1
                self._semaphore.release()
                if learn:
                    self._learn(kind, loop.time() - t)
        finally:
            self._ahead_s = self._ahead_s - own if self.active + self.waiting else 0.0

    def _learn(self, kind: Hashable, dt: float) -> None:
        self.hold_s = dt if self.hold_s == 0.0 else 0.8 * self.hold_s + 0.2 * dt
        known = self._kind_hold.pop(kind, None)
        self._kind_hold[kind] = dt if known is None else 0.8 * known + 0.2 * dt  # the most recent last
        if len(self._kind_hold) > self.KINDS:
            self._kind_hold.pop(next(iter(self._kind_hold)))
