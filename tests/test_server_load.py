"""Bounded load tests on loopback: every request gets a valid answer or a clean 503, never a hang.

The figures (throughput, latency percentiles, 503s, batch sizes) are printed for the
record; EMOVLM_KD_LOAD_REQUESTS changes the size of the main test (default 300).
"""

import base64
import http.client
import json
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass

import pytest
from test_server_support import live_server, sample_images

from emovlm_kd.apps.server.app import create_app
from emovlm_kd.apps.server.config import ServerConfig
from emovlm_kd.apps.server.metrics import percentile

REQUESTS = int(os.environ.get("EMOVLM_KD_LOAD_REQUESTS", "300"))
CLIENTS = 16
CLIENT_TIMEOUT_S = 120


@dataclass
class Outcome:
    status: int
    seconds: float
    problem: str | None  # why the answer is not a valid prediction or a clean 503


@pytest.fixture(scope="module")
def bodies(sample_root):
    return [json.dumps({"image": base64.b64encode(path.read_bytes()).decode()}) for path in sample_images(sample_root, 8)]


def check(status: int, headers: dict, body: bytes, labels) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {body[:80]!r}"
    if status == 200:
        if data.get("label") not in labels or abs(sum(data["probs"].values()) - 1) > 1e-3:
            return f"HTTP 200 without a valid prediction: {data}"
        return None
    if status == 503:
        if not headers.get("retry-after", "").isdigit() or data["error"]["code"] != "overloaded":
            return f"HTTP 503 without Retry-After or an overloaded error: {headers}, {data}"
        return None
    return f"HTTP {status}: {data}"


def hammer(base: str, bodies: list[str], requests: int, clients: int, labels) -> tuple[list[Outcome], float]:
    """`requests` POSTs to /v1/classify from `clients` threads, each on one keep-alive connection."""
    url = urllib.parse.urlsplit(base)
    outcomes: list[Outcome] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client():
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=CLIENT_TIMEOUT_S)
        while True:
            with lock:
                number = next(counter, None)
            if number is None:
                break
            began = time.perf_counter()
            try:
                connection.request("POST", "/v1/classify", bodies[number % len(bodies)], {"content-type": "application/json"})
                response = connection.getresponse()
                headers = {name.lower(): value for name, value in response.getheaders()}
                outcome = Outcome(response.status, 0.0, check(response.status, headers, response.read(), labels))
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = http.client.HTTPConnection(url.hostname, url.port, timeout=CLIENT_TIMEOUT_S)
                outcome = Outcome(0, 0.0, f"no answer: {error!r}")
            outcome.seconds = time.perf_counter() - began
            with lock:
                outcomes.append(outcome)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.perf_counter() - began


def report(title: str, outcomes: list[Outcome], seconds: float, metrics: dict) -> dict:
    answered = [o.seconds for o in outcomes if o.status == 200]
    figures = {
        "requests": len(outcomes),
        "ok": len(answered),
        "503": sum(o.status == 503 for o in outcomes),
        "seconds": round(seconds, 1),
        "throughput_rps": round(len(answered) / seconds, 1),
        "p50_ms": round(1000 * percentile(answered, 50)),
        "p95_ms": round(1000 * percentile(answered, 95)),
        "mean_batch": metrics["batches"]["mean_size"],
    }
    print(f"\n{title}: " + ", ".join(f"{key}={value}" for key, value in figures.items()), flush=True)
    return figures


def fetch_metrics(base: str) -> dict:
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("GET", "/metrics.json")
    return json.loads(connection.getresponse().read())


def test_load_every_request_gets_a_prediction_or_a_clean_503(model, bodies, capsys):
    app = create_app(model, ServerConfig(max_batch_size=8, max_wait_ms=10, queue_size=64))
    with live_server(app) as base:
        outcomes, seconds = hammer(base, bodies, REQUESTS, CLIENTS, model.taxonomy.labels)
        metrics = fetch_metrics(base)
    problems = [o.problem for o in outcomes if o.problem]
    assert len(outcomes) == REQUESTS and not problems, problems[:5]
    with capsys.disabled():
        figures = report(f"load ({CLIENTS} clients, queue 64)", outcomes, seconds, metrics)
    assert figures["ok"] + figures["503"] == REQUESTS and figures["ok"] > 0
    # Requests did share model calls.
    assert metrics["batches"]["mean_size"] > 1
    assert metrics["requests"]["/v1/classify"].get("200") == figures["ok"]


def test_overload_sheds_with_503_at_once_and_serves_the_rest(model, bodies, capsys):
    # A queue far smaller than the number of clients: some requests must be refused.
    app = create_app(model, ServerConfig(max_batch_size=4, max_wait_ms=5, queue_size=2))
    with live_server(app) as base:
        outcomes, seconds = hammer(base, bodies, 6 * CLIENTS, CLIENTS, model.taxonomy.labels)
        metrics = fetch_metrics(base)
    problems = [o.problem for o in outcomes if o.problem]
    assert not problems, problems[:5]
    with capsys.disabled():
        figures = report(f"overload ({CLIENTS} clients, queue 2)", outcomes, seconds, metrics)
    assert figures["503"] > 0 and figures["ok"] > 0
    refused = [o.seconds for o in outcomes if o.status == 503]
    # A refusal needs no model time: it comes back at once.
    assert percentile(refused, 95) < 1.0
