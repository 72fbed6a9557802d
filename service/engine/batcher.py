"""Dynamic batching in front of a (blocking) model call: max batch, max wait, bounded queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]


class QueueFull(RuntimeError):
    """The batcher's queue is at its bound; the caller should answer 503 with Retry-After."""


class DynamicBatcher:
    """Collect concurrent requests into one call of ``fn``.

    ``fn`` takes and returns dicts of arrays whose first axis is the batch; requests submit arrays with
    their own leading batch (usually 1). The worker waits for the first request, then up to ``max_wait_s``
    for more, until ``max_batch`` rows — but not when no other request could come: given ``in_flight`` (how many
    requests are inside the service now), a batch that already holds as many calls as there are requests in
    flight runs at once (a lone request would otherwise wait ``max_wait_s`` at every graph it calls). It runs
    ``fn`` in a thread so the event loop stays free, and splits the outputs back. An exception in ``fn`` (or in
    concatenating or splitting a batch) fails only the requests of that batch; a worker that dies anyway is
    restarted by :meth:`ensure_running`.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[str, int, int], None] | None = None,
        in_flight: Callable[[], int] | None = None,
    ):
        self.name = name
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._in_flight = in_flight
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._stopping = False
        self.restarts = 0
        self.batch_s = 0.0  # moving average of one call of ``fn``

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, inputs: Arrays, deadline: float | None = None) -> dict[str, np.ndarray]:
        """The outputs of ``fn`` for ``inputs``; :class:`QueueFull` when the queue is at its bound or, given a
        ``deadline`` (event-loop time), when the batches ahead would not finish before it."""
        if self._queue is None:
            raise RuntimeError(f"batcher '{self.name}' is not started")
        self.ensure_running()
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"queue of '{self.name}' is full ({self.max_queue} waiting)")
        if deadline is not None and self._queue.qsize() >= self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            rounds = self._queue.qsize() // self.max_batch + 1
            if rounds * self.batch_s > left:
                raise QueueFull(f"queue of '{self.name}' would not reach this request within its deadline")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((dict(inputs), future))
        return await future

    @property
    def alive(self) -> bool:
        """Whether the worker task is running (False before start and after it died or stopped)."""
        return self._task is not None and not self._task.done()

    def ensure_running(self) -> bool:
        """Restart a dead worker (the queue and its waiting requests are kept); True if it was restarted."""
        if self._queue is None or self.alive or self._stopping:
            return False
        if self._task is not None and not self._task.cancelled() and self._task.exception() is not None:
            logger.error("worker of '%s' died (%r); restarting it", self.name, self._task.exception())
        self.restarts += 1
        self._task = asyncio.create_task(self._worker(), name=f"batcher-{self.name}")
        return True

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            items = [await self._queue.get()]
            try:
                await self._run(items)
            except asyncio.CancelledError:
                _fail(items, RuntimeError(f"batcher '{self.name}' stopped"))
                raise
            except Exception as exc:  # concatenation, callback, splitting: fail this batch, keep serving
                logger.exception("batch of '%s' failed", self.name)
                _fail(items, exc)

    async def _run(self, items: list) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        rows = _rows(items[0][0])
        deadline = loop.time() + self.max_wait_s
        while rows < self.max_batch:
            if self._queue.empty():
                if self._in_flight is not None and self._in_flight() <= sum(not f.done() for _, f in items):
                    break  # every request in flight is in this batch: nobody else could join it
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            items.append(item)
            rows += _rows(item[0])
        live = [(inp, fut) for inp, fut in items if not fut.done()]
        if not live:
            return
        batch = {k: np.concatenate([inp[k] for inp, _ in live]) for k in live[0][0]}
        if self._on_batch is not None:
            self._on_batch(self.name, rows, self._queue.qsize())
        t = loop.time()
        out = await loop.run_in_executor(self._executor, self._fn, batch)
        dt = loop.time() - t
        self.batch_s = dt if self.batch_s == 0.0 else 0.8 * self.batch_s + 0.2 * dt
        start = 0
        for inp, fut in live:
            n = _rows(inp)
            if not fut.done():
                fut.set_result({k: v[start : start + n] for k, v in out.items()})
            start += n


def _fail(items: list, exc: BaseException) -> None:
    for _, fut in items:
        if not fut.done():
            fut.set_exception(exc)


def _rows(inputs: Arrays) -> int:
    return int(next(iter(inputs.values())).shape[0])
