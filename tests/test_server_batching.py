"""The micro-batcher alone, with stand-in handlers: grouping, bounds, overload, time-outs."""

import contextlib
import threading
import time

import pytest

from emovlm_kd.apps.server.batching import MicroBatcher, Overloaded


class Recorder:
    """A handler that notes each batch it gets and answers item * 10; `gate` holds it."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, option, items):
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append((option, list(items)))
        return [item * 10 for item in items]


@contextlib.contextmanager
def busy_batcher(**settings):
    """A started batcher whose worker is held on a first job ([0]) until `recorder.gate` is set."""
    recorder = Recorder()
    options = {"max_batch_size": 4, "max_wait_s": 0.05, "queue_size": 16} | settings
    batcher = MicroBatcher({"double": recorder, "other": recorder}, **options)
    batcher.start()
    first = batcher.submit("double", None, [0])
    assert recorder.entered.wait(5)
    try:
        yield recorder, batcher
    finally:
        recorder.gate.set()
        batcher.stop()
    assert first.result(5) == [0]


def test_waiting_jobs_share_one_call_and_get_their_own_results():
    with busy_batcher() as (recorder, batcher):
        # While the worker is busy, five jobs queue up: 1 + 2 + 1 items fit a batch of 4,
        # the 2-item job opens the next batch.
        futures = [batcher.submit("double", None, items) for items in ([1], [2, 3], [4], [5, 6], [7])]
        assert batcher.depth == 5
        recorder.gate.set()
        assert [future.result(5) for future in futures] == [[10], [20, 30], [40], [50, 60], [70]]
    assert [items for _, items in recorder.batches] == [[0], [1, 2, 3, 4], [5, 6, 7]]


def test_jobs_of_another_kind_or_option_are_never_mixed():
    with busy_batcher() as (recorder, batcher):
        futures = [
            batcher.submit("double", True, [1]),
            batcher.submit("double", False, [2]),
            batcher.submit("other", True, [3]),
            batcher.submit("double", True, [4]),
        ]
        recorder.gate.set()
        assert [future.result(5) for future in futures] == [[10], [20], [30], [40]]
    # The held job opens the next batch, so the order of arrival is kept.
    assert recorder.batches[1:] == [(True, [1]), (False, [2]), (True, [3]), (True, [4])]


def test_a_job_larger_than_a_batch_runs_in_parts():
    with busy_batcher(max_batch_size=2) as (recorder, batcher):
        recorder.gate.set()
        assert batcher.submit("double", None, [1, 2, 3, 4, 5]).result(5) == [10, 20, 30, 40, 50]
    assert [items for _, items in recorder.batches] == [[0], [1, 2], [3, 4], [5]]


def test_a_full_queue_refuses_at_once_with_a_retry_time():
    with busy_batcher(queue_size=2) as (_, batcher):
        batcher.submit("double", None, [1])
        batcher.submit("double", None, [2])
        began = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            batcher.submit("double", None, [3])
        assert time.monotonic() - began < 0.5
        assert refused.value.retry_after >= 1 and "busy" in str(refused.value)


def test_a_cancelled_job_costs_no_model_call():
    with busy_batcher() as (recorder, batcher):
        abandoned = batcher.submit("double", None, [1])
        assert abandoned.cancel()  # what a request time-out does
        kept = batcher.submit("other", None, [2])
        recorder.gate.set()
        assert kept.result(5) == [20]
    assert [items for _, items in recorder.batches] == [[0], [2]]


def test_a_failing_batch_fails_its_jobs_and_the_worker_goes_on():
    calls = []

    def flaky(option, items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return items

    batcher = MicroBatcher({"flaky": flaky}, max_batch_size=4, max_wait_s=0, queue_size=4)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            batcher.submit("flaky", None, [1]).result(5)
        assert batcher.submit("flaky", None, [2]).result(5) == [2]
        assert batcher.alive
    finally:
        batcher.stop()
    assert not batcher.alive


def test_stopping_fails_waiting_jobs_and_refuses_new_ones():
    with busy_batcher() as (recorder, batcher):
        waiting = batcher.submit("double", None, [1])
        threading.Timer(0.2, recorder.gate.set).start()
        batcher.stop()
        with pytest.raises(Overloaded, match="shutting down"):
            waiting.result(1)
        with pytest.raises(Overloaded):
            batcher.submit("double", None, [2])
