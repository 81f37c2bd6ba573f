"""Adaptive batching driven by events: a batch starts the moment the model is free, with
every request queued by then (up to a maximum), and runs on one thread of its own.

BentoML's batcher decides by polling: while a batch runs and requests wait, its
dispatcher loop wakes every millisecond, and on two cores that loop took most of one
core from the generator's thread pool (a batch of 8 ran 8 to 11 s in the service against
6.5 s alone). It also spends its first calls per API training a latency model, one
request at a time. Here nothing runs between batches but the event loop's own waiting.

A full queue and a request that waited past its deadline are refused with `QueueFull`,
which the service answers as 503 "overloaded", never run late for a client long gone.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The batcher refused a request: its queue is full or the request waited too long."""


@dataclass
class _Job(Generic[T, R]):
    enqueued: float
    item: T
    future: asyncio.Future


class Batcher(Generic[T, R]):
    """`run(items) -> results` (one result per item, in order) is called on `executor`,
    at most `concurrency` batches at a time (1 for a model that decodes one batch; an
    engine with its own scheduler, such as llama.cpp's slots, takes each request as it
    comes). `window_s` is how long a lone request waits for company when the model is
    idle; while a batch runs, requests gather by themselves."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], executor: Executor, max_batch: int = 8, max_queue: int = 64,
                 max_wait_s: float = 120.0, window_s: float = 0.01, key: Callable[[T], object] | None = None,
                 priority: Callable[[T], int] | None = None, concurrency: int = 1) -> None:
        if max_batch < 1 or max_queue < 1 or concurrency < 1:
            raise ValueError(f"max_batch ({max_batch}), max_queue ({max_queue}) and concurrency ({concurrency}) must be at least 1")
        self.concurrency, self._running, self._tasks = concurrency, 0, set()
        # Only items with equal keys share a batch (one generate call samples one way); the
        # others keep their place in the queue for the next one.
        self.run, self.executor, self.key = run, executor, key
        # A batch is led by the oldest job of the lowest priority value queued: a shadow's
        # copies run only when no client request waits.
        self.priority = priority
        self.max_batch, self.max_queue, self.max_wait_s, self.window_s = max_batch, max_queue, max_wait_s, window_s
        self._queue: collections.deque[_Job[T, R]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.batched = 0
        self.shed = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        if len(self._queue) >= self.max_queue:
            self.shed += 1
            raise QueueFull(f"{len(self._queue)} requests already queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._serve())
        job = _Job(time.monotonic(), item, loop.create_future())
        self._queue.append(job)
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # The caller went away: its slot is given back; a batch already running finishes.
            if job in self._queue:
                self._queue.remove(job)
            raise

    def _take(self) -> list[_Job[T, R]]:
        now, batch, later, first = time.monotonic(), [], collections.deque(), None
        lead = min((self.priority(job.item) for job in self._queue), default=0) if self.priority else 0
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():
                continue
            if now - job.enqueued > self.max_wait_s:
                self.shed += 1
                job.future.set_exception(QueueFull(f"waited {now - job.enqueued:.0f} s in the queue (limit {self.max_wait_s:.0f} s)"))
                continue
            key = self.key(job.item) if self.key else None
            if not batch and self.priority and self.priority(job.item) != lead:
                later.append(job)
                continue
            if not batch:
                first = key
            elif len(batch) >= self.max_batch or key != first:
                later.append(job)
                continue
            batch.append(job)
        self._queue.extend(later)
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue or self._running >= self.concurrency:
                continue
            if len(self._queue) < self.max_batch and self.window_s > 0:
                left = self.window_s - (time.monotonic() - self._queue[0].enqueued)
                if left > 0:
                    await asyncio.sleep(left)
            batch = self._take()
            if batch:
                self._running += 1
                task = loop.create_task(self._run(loop, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._queue and self._running < self.concurrency:
                self._wake.set()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Job[T, R]]) -> None:
        try:
            results = await loop.run_in_executor(self.executor, self.run, [job.item for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} returned {len(results)} results")
        except Exception as err:  # noqa: BLE001 - each caller gets the batch's error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
        else:
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
        finally:
            self._running -= 1
            self.batches += 1
            self.batched += len(batch)
            if self._queue:
                self._wake.set()
