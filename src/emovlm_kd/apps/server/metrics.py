"""Request counts, latencies, queue depth, batch sizes and model time, kept in memory.

`/metrics` gives them in the Prometheus text format; `/metrics.json` gives a summary for
people, with latency percentiles over each route's recent requests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Paths counted by name; any other path is counted as "other", so that scanners probing
# random URLs cannot grow the table (nor the number of Prometheus series).
ROUTES = ("/", "/health", "/metrics", "/metrics.json", "/v1/classify", "/v1/chat/completions", "/v1/models")

# From a classify batch of a few milliseconds up to a chat answer near the default 60 s time-out.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Items per model call: up to --max-batch-size, or a whole request larger than a batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Metrics:
    """Thread-safe metrics of one app, in a registry of its own so that several apps in one
    process never share series; latencies for the percentiles are the last `window`
    requests of each route."""

    def __init__(self, window: int = 4096):
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "emovlm_kd_requests", "HTTP responses by route and status code.", ["route", "status"], registry=self.registry
        )
        self._request_seconds = Histogram(
            "emovlm_kd_request_duration_seconds", "Time from request to response, by route.", ["route"],
            buckets=SECONDS_BUCKETS, registry=self.registry,
        )
        self._queue_depth = Gauge("emovlm_kd_queue_depth", "Requests waiting for the model.", registry=self.registry)
        self._batch_size = Histogram(
            "emovlm_kd_batch_size", "Items (images or chat prompts) per model call.",
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )
        self._model_seconds = Histogram(
            "emovlm_kd_model_seconds", "Seconds per model call; the sum is the time spent in the model.",
            buckets=SECONDS_BUCKETS, registry=self.registry,
        )
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._latencies: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))

    @staticmethod
    def route(path: str) -> str:
        if path.startswith("/v1/models"):
            return "/v1/models"
        return path if path in ROUTES else "other"

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from `depth` at every scrape."""
        self._queue_depth.set_function(depth)

    def record_request(self, path: str, status: int, seconds: float) -> None:
        route = self.route(path)
        self._requests.labels(route, str(status)).inc()
        self._request_seconds.labels(route).observe(seconds)
        with self._lock:
            self._latencies[route].append(seconds)

    def record_batch(self, items: int, seconds: float) -> None:
        self._batch_size.observe(items)
        self._model_seconds.observe(seconds)

    def snapshot(self, queue_depth: int, queue_size: int) -> dict:
        """The summary served as JSON; counts and sums are read back from the registry."""
        with self._lock:
            latency = {
                route: {
                    "count": len(values),
                    **{f"p{q}_ms": round(1000 * percentile(list(values), q), 1) for q in (50, 95, 99)},
                }
                for route, values in self._latencies.items()
            }
        batches = int(self.registry.get_sample_value("emovlm_kd_batch_size_count"))
        items = int(self.registry.get_sample_value("emovlm_kd_batch_size_sum"))
        return {
            "uptime_s": round(time.monotonic() - self._started, 1),
            "queue_depth": queue_depth,
            "queue_size": queue_size,
            "requests": self._counts_by_route(),
            "latency": latency,
            "batches": {
                "count": batches,
                "items": items,
                "mean_size": round(items / batches, 2) if batches else 0.0,
                "model_seconds": round(self.registry.get_sample_value("emovlm_kd_model_seconds_sum"), 3),
            },
        }

    def _counts_by_route(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for sample in self._requests.collect()[0].samples:
            if sample.name.endswith("_total"):  # the counter also has `_created` samples
                counts[sample.labels["route"]][sample.labels["status"]] = int(sample.value)
        return dict(counts)


class RecordMetrics:
    """ASGI middleware: counts every HTTP response by route and status, with its latency."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.record_request(scope["path"], status, time.perf_counter() - started)
