"""`emovlm-kd bench --serve`: the HTTP server under concurrent clients, against `predict_images`.

The real app (`apps.server.create_app`) serves the benchmark's model from this process on a
free loopback port, its micro-batches capped at our best batch size. `CLIENTS` threads, each
on one keep-alive connection, post JPEGs as base64 JSON to /v1/classify, one image per
request as most clients send them. The same JPEGs, decoded beforehand, go through
`predict_images` in batches of that size. Both ways are timed in pairs, back to back (see
`paired_ratio`): `serve_ratio` is the server's images per second over `predict_images`'
(1.0: serving costs the model nothing).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
import urllib.parse

from emovlm_kd.analysis.measure import paired_ratio

CLIENTS = 16
REQUESTS_PER_CLIENT = 2
CLIENT_TIMEOUT_S = 300


def serve_figures(models, images: list, config, batch_size: int) -> dict:
    """Server throughput over `predict_images` throughput, both at `batch_size` images a call,
    or at half the clients where that is less.

    Each client waits for its answer before it sends again, so with a batch as large as the
    number of clients the next batch can only gather while the last one's answers travel
    back: the model idles and the batches come out half full (on `bench`, batch 16: mean 8.3
    images, serve_ratio 0.78). Half the clients lets one batch queue while another runs, as a
    server sized for its load would be.
    """
    batch_size = min(batch_size, CLIENTS // 2)
    from emovlm_kd.apps.server.app import create_app, serve_in_thread
    from emovlm_kd.apps.server.config import ServerConfig
    from emovlm_kd.images import load_image
    from emovlm_kd.run_folder import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE

    requests = CLIENTS * REQUESTS_PER_CLIENT
    jpegs = [_jpeg(images[index % len(images)]) for index in range(requests)]
    bodies = [json.dumps({"image": base64.b64encode(jpeg).decode()}) for jpeg in jpegs]
    decoded = [load_image(jpeg, min_side=MIN_IMAGE_SIDE, max_aspect_ratio=MAX_ASPECT_RATIO) for jpeg in jpegs]
    server_config = ServerConfig(max_batch_size=batch_size, queue_size=2 * requests)
    labels = set(models.taxonomy.labels)

    def predict(indices: list[int]) -> None:
        for start in range(0, len(indices), batch_size):
            models.pipeline.predict_images([decoded[index] for index in indices[start : start + batch_size]])

    with serve_in_thread(create_app(models.pipeline, server_config)) as base:
        address = urllib.parse.urlsplit(base)

        served = []  # wall seconds of every round of requests, the warm-up's included

        def serve(indices: list[int]) -> None:
            started = time.perf_counter()
            _post_concurrently(address.hostname, address.port, [bodies[index] for index in indices], labels)
            served.append(time.perf_counter() - started)

        ratio, predict_seconds, serve_seconds = paired_ratio(predict, serve, [list(range(requests))], config.repeats)
        batches = _get_json(address.hostname, address.port, "/metrics.json")["batches"]
    return {
        "serve": {
            "clients": CLIENTS,
            "requests": requests,
            "batch_size": batch_size,
            "max_wait_ms": server_config.max_wait_ms,
            "server_images_per_second": 1 / serve_seconds,
            "predict_images_per_second": 1 / predict_seconds,
            "mean_batch_size": batches["mean_size"],
            # The share of the server's time its model was busy: below 1, the model waited
            # for requests (batching, decoding, HTTP); near 1, what the server costs is CPU
            # time its request handling took from the model.
            "model_busy": batches["model_seconds"] / sum(served),
        },
        "serve_ratio": ratio,
    }


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _post_concurrently(host: str, port: int, bodies: list[str], labels: set[str]) -> None:
    """POST every body to /v1/classify from `CLIENTS` threads; raises if any answer is no prediction."""
    pending = iter(bodies)
    lock = threading.Lock()
    problems = []

    def client():
        connection = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT_S)
        try:
            while True:
                with lock:
                    body = next(pending, None)
                if body is None:
                    return
                connection.request("POST", "/v1/classify", body, {"content-type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200 or json.loads(answer).get("label") not in labels:
                    problems.append(f"HTTP {response.status}: {answer[:200]!r}")
        except (OSError, http.client.HTTPException) as error:
            problems.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if problems:
        raise RuntimeError(f"the server failed {len(problems)} benchmark requests, the first: {problems[0]}")


def _get_json(host: str, port: int, path: str) -> dict:
    connection = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT_S)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()
