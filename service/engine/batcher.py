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
    for more, until ``max_batch`` rows; it runs ``fn`` in a thread so the event loop stays free, and splits
    the outputs back. An exception in ``fn`` fails only the requests of that batch.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[str, int, int], None] | None = None,
    ):
        self.name = name
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, inputs: Arrays) -> dict[str, np.ndarray]:
        if self._queue is None:
            raise RuntimeError(f"batcher '{self.name}' is not started")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"queue of '{self.name}' is full ({self.max_queue} waiting)")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((dict(inputs), future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            items = [await self._queue.get()]
            rows = _rows(items[0][0])
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_batch:
                if self._queue.empty():
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
                continue
            batch = {k: np.concatenate([inp[k] for inp, _ in live]) for k in live[0][0]}
            if self._on_batch is not None:
                self._on_batch(self.name, rows, self._queue.qsize())
            try:
                out = await loop.run_in_executor(self._executor, self._fn, batch)
            except Exception as exc:  # fail this batch's requests, keep serving
                logger.exception("batch of '%s' failed", self.name)
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for inp, fut in live:
                n = _rows(inp)
                if not fut.done():
                    fut.set_result({k: v[start : start + n] for k, v in out.items()})
                start += n


def _rows(inputs: Arrays) -> int:
    return int(next(iter(inputs.values())).shape[0])
