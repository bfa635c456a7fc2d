"""Micro-batching: one worker thread owns the model, requests wait in a bounded queue.

Each request becomes a `Job` of one or more items (images, or image-and-prompt pairs).
The worker takes the oldest job, then keeps taking jobs of the same kind and option until
it holds `max_batch_size` items or `max_wait_s` has passed, and answers them all with one
call of that kind's handler. Every model call happens on this one thread, so the model
never sees two callers at once. A full queue refuses at once (`Overloaded`): overload is
answered with 503, never with a hang.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# (option, items) -> one result per item, in order; runs on the worker thread.
Handler = Callable[[Hashable, list], list]

# Put on the queue by `stop`; the worker exits when it takes it.
_STOP = object()


class Overloaded(Exception):
    """The queue is full (or the server is stopping); retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Job:
    kind: str
    option: Hashable
    items: list
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[str, Hashable]:
        # Only jobs with the same key can share a model call.
        return (self.kind, self.option)


class MicroBatcher:
    """Collects jobs from a bounded queue into batches for one worker thread."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.handlers = handlers
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # A job taken from the queue that could not join the batch being built; it opens
        # the next one. At most one, so the queue bound still holds.
        self._held: Job | object | None = None
        self._stopping = False
        # Recent seconds of model time per item, for Retry-After.
        self._seconds_per_item = 0.1
        self._thread = threading.Thread(target=self._work, name="emovlm-kd-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new jobs, fail the waiting ones, let the running batch finish."""
        self._stopping = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            # A request that already gave up has cancelled its future; it needs no answer.
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Overloaded("the server is shutting down; retry on another instance.", 1))
        # Full only if a submit raced the drain; the worker then never sees _STOP, but it
        # is a daemon thread and dies with the process.
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Jobs waiting for the model (not counting the batch being run)."""
        return self._queue.qsize() + (self._held is not None)

    def retry_after(self) -> int:
        # Seconds to work through a full queue at the recent pace, at least 1.
        return max(1, math.ceil(self.depth * self._seconds_per_item))

    def submit(self, kind: str, option: Hashable, items: list) -> Future:
        """Queue a job; its future gets the list of results. Raises `Overloaded` when full."""
        if self._stopping:
            raise Overloaded("the server is shutting down; retry on another instance.", 1)
        job = Job(kind, option, list(items))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                f"the server is busy ({self.queue_size} requests are waiting for the model); retry shortly.",
                self.retry_after(),
            ) from None
        return job.future

    def _work(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            self._run(jobs)

    def _collect(self) -> list[Job] | None:
        first = self._held if self._held is not None else self._queue.get()
        self._held = None
        if first is _STOP:
            return None
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                # After the wait, still take whatever is already queued.
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or job.key != first.key or size + len(job.items) > self.max_batch_size:
                self._held = job
                break
            batch.append(job)
            size += len(job.items)
        return batch

    def _run(self, jobs: list[Job]) -> None:
        # A job whose request timed out was cancelled; it costs no model time.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if jobs:
            self._answer(jobs)

    def _answer(self, jobs: list[Job]) -> None:
        kind, option = jobs[0].key
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        try:
            results = []
            # Only a single job larger than a batch gets here with more items; it runs in parts.
            for start in range(0, len(items), self.max_batch_size):
                results += self.handlers[kind](option, items[start : start + self.max_batch_size])
        except Exception as error:
            if len(jobs) > 1:
                # One request's input must not fail the requests batched with it: each alone.
                for job in jobs:
                    self._answer([job])
                return
            log.exception("the model failed on a job of %d %s items", len(items), kind)
            jobs[0].future.set_exception(error)
            return
        seconds = time.perf_counter() - started
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * seconds / len(items)
        if self.on_batch is not None:
            self.on_batch(len(items), seconds)
        offset = 0
        for job in jobs:
            job.future.set_result(results[offset : offset + len(job.items)])
            offset += len(job.items)
