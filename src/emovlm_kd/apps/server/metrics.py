"""Request counts, latency percentiles and batch sizes, kept in memory for `/metrics`."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict, deque

# Paths counted by name; any other path is counted as "other", so that scanners probing
# random URLs cannot grow the table.
ROUTES = ("/", "/health", "/metrics", "/v1/classify", "/v1/chat/completions", "/v1/models")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Metrics:
    """Thread-safe counters; latencies are the last `window` requests of each route."""

    def __init__(self, window: int = 4096):
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._statuses: dict[str, Counter] = defaultdict(Counter)
        self._latencies: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._batches = 0
        self._batched_items = 0
        self._model_seconds = 0.0

    @staticmethod
    def route(path: str) -> str:
        if path.startswith("/v1/models"):
            return "/v1/models"
        return path if path in ROUTES else "other"

    def record_request(self, path: str, status: int, seconds: float) -> None:
        route = self.route(path)
        with self._lock:
            self._statuses[route][str(status)] += 1
            self._latencies[route].append(seconds)

    def record_batch(self, items: int, seconds: float) -> None:
        with self._lock:
            self._batches += 1
            self._batched_items += items
            self._model_seconds += seconds

    def snapshot(self, queue_depth: int, queue_size: int) -> dict:
        with self._lock:
            latency = {
                route: {
                    "count": len(values),
                    **{f"p{q}_ms": round(1000 * percentile(list(values), q), 1) for q in (50, 95, 99)},
                }
                for route, values in self._latencies.items()
            }
            return {
                "uptime_s": round(time.monotonic() - self._started, 1),
                "queue_depth": queue_depth,
                "queue_size": queue_size,
                "requests": {route: dict(counts) for route, counts in self._statuses.items()},
                "latency": latency,
                "batches": {
                    "count": self._batches,
                    "items": self._batched_items,
                    "mean_size": round(self._batched_items / self._batches, 2) if self._batches else 0.0,
                    "model_seconds": round(self._model_seconds, 3),
                },
            }


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
