"""Micro-batching with admission control, for the HTTP server.

One worker runs the model. Requests for the same key (adapter) that arrive while it is busy go to it
together, so 16 concurrent users cost a few batched calls instead of 16 calls queued behind a lock.
The queue is bounded: beyond it a request is refused at once (`Overloaded`: a 503 with Retry-After)
instead of piling up work. Every request has a deadline (`TimedOut`): a queued request past it is
dropped, and a running batch whose requests have all given up is stopped between two decoder layers
(`AdapterBank.use(interrupt=...)`), since a thread running a model call cannot be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from recpeft.serving.bank import Cancelled

# run(key, payloads, interrupt) -> one result per payload, in order; an Exception instance as a result
# fails that request alone. interrupt() raises Cancelled once nobody waits for the batch any more.
RunBatch = Callable[[Hashable, list[Any], Callable[[], None]], list[Any]]


class Overloaded(Exception):
    """The queue is full; try again in `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: int):
        self.queued, self.retry_after = queued, retry_after
        super().__init__(f"{queued} requests queued")


class TimedOut(Exception):
    """The request's deadline passed before its result was ready."""


@dataclass(eq=False)
class _Job:
    key: Hashable
    payload: Any
    size: int
    deadline: float
    future: asyncio.Future
    gave_up: bool = field(default=False)

    def dead(self, now: float) -> bool:
        return self.gave_up or now >= self.deadline


class MicroBatcher:
    """Queue model work, run it one batch at a time in a worker thread, hand each caller its result.

    max_queue: requests that may wait (beyond the running batch). timeout: seconds from arrival to
    result. batching=False runs one request per call (the same queue, limits and deadlines).
    max_batch: the most `size` units (candidates) in one batch; a larger request still runs, alone.
    """

    def __init__(self, run: RunBatch, *, max_queue: int = 32, timeout: float = 30.0, batching: bool = True,
                 max_batch: int = 512):
        if max_queue < 1 or timeout <= 0 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be >= 1 and timeout > 0")
        self.run, self.max_queue, self.timeout = run, max_queue, timeout
        self.batching, self.max_batch = batching, max_batch
        self._pending: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._job_seconds = 1.0  # moving average of model time per request: the Retry-After estimate
        self.stats = {"batches": 0, "requests": 0, "rejected": 0, "timed_out": 0, "interrupted": 0}

    @property
    def queued(self) -> int:
        return len(self._pending)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1, at most the timeout)."""
        wait = self._job_seconds * (len(self._pending) + len(self._running))
        return max(1, min(math.ceil(wait), math.ceil(self.timeout)))

    async def submit(self, key: Hashable, payload: Any, size: int = 1) -> Any:
        """The result of run(key, [payload, ...]) for this payload, batched with others of the same key."""
        self._start()
        if len(self._pending) >= self.max_queue:
            self.stats["rejected"] += 1
            raise Overloaded(len(self._pending), self.retry_after())
        job = _Job(key, payload, size, time.monotonic() + self.timeout, self._loop.create_future())
        self._pending.append(job)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:  # deadline passed, or the client left
            job.gave_up = True
            job.future.cancel()
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.stats["timed_out"] += 1
            raise TimedOut(f"no result within {self.timeout:g} s") from None

    async def close(self) -> None:
        """Give up every queued and running request and stop the worker (waits for the running batch to
        reach its next interruption point)."""
        for job in [*self._pending, *self._running]:
            job.gave_up = True
            job.future.cancel()
        self._pending.clear()
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (a test client's): start afresh
            self._loop, self._wake, self._pending, self._task = loop, asyncio.Event(), deque(), None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._work(), name="recpeft-micro-batcher")

    def _take(self) -> list[_Job]:
        """The oldest live request and, when batching, the later ones with its key that fit."""
        now = time.monotonic()
        while self._pending and self._pending[0].dead(now):
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        jobs, size = [first], first.size
        if self.batching:
            for job in list(self._pending):
                if job.key == first.key and not job.dead(now) and size + job.size <= self.max_batch:
                    self._pending.remove(job)
                    jobs.append(job)
                    size += job.size
        return jobs

    def _call(self, jobs: list[_Job]) -> list[Any]:
        """Runs in a worker thread: the batch, or each request alone when the batch failed as a whole
        (so one poisonous request cannot fail the others)."""
        def interrupt() -> None:
            now = time.monotonic()
            if all(j.dead(now) for j in jobs):
                raise Cancelled("every request of this batch gave up")

        key = jobs[0].key
        try:
            results = self.run(key, [j.payload for j in jobs], interrupt)
            if len(results) != len(jobs):
                raise RuntimeError(f"run() returned {len(results)} results for {len(jobs)} requests")
            return results
        except Cancelled:
            self.stats["interrupted"] += 1
            return [TimedOut("stopped: nobody waits for it")] * len(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
        return [self._call([j])[0] for j in jobs]

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            jobs = self._take()
            if not jobs:
                continue
            self._running = jobs
            start = time.monotonic()
            try:
                results = await anyio.to_thread.run_sync(self._call, jobs)
            except Exception as exc:  # noqa: BLE001 - a bug here must fail these requests, not the worker
                results = [exc] * len(jobs)
            finally:
                self._running = []
            self._job_seconds = 0.7 * self._job_seconds + 0.3 * (time.monotonic() - start) / len(jobs)
            self.stats["batches"] += 1
            self.stats["requests"] += len(jobs)
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
