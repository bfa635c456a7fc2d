"""Hostile clients of the server, beyond tests/test_server_*.py: clients that send very slowly,
a request the model fails on while batched with others, image URLs with the default
settings, and a soak of good and bad requests against `emovlm-kd serve` in its own
process, whose memory (RSS) must stay flat.

EMOVLM_KD_SOAK_REQUESTS sets the soak's size (default 360).
"""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from fastapi.testclient import TestClient
from reliability import tally
from test_server_support import live_server, sample_images

from emovlm_kd.apps.server.app import create_app
from emovlm_kd.apps.server.batching import MicroBatcher
from emovlm_kd.apps.server.config import ServerConfig

pytestmark = pytest.mark.reliability

SOAK_REQUESTS = int(os.environ.get("EMOVLM_KD_SOAK_REQUESTS", "360"))


@pytest.fixture(scope="module")
def png(sample_root) -> bytes:
    return sample_images(sample_root, 1)[0].read_bytes()


def classify(base: str, body: bytes, content_type: str = "application/json", timeout: float = 30) -> tuple[int, dict]:
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        connection.request("POST", "/v1/classify", body, {"content-type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def slow_client(base: str, headers_done: bool, outcome: list, pause: float = 0.25) -> None:
    """Sends a request a byte at a time; records (status or None, seconds) when answered or cut off."""
    url = urllib.parse.urlsplit(base)
    began = time.monotonic()
    status = None
    with socket.create_connection((url.hostname, url.port), timeout=30) as connection:
        head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
        try:
            if headers_done:
                connection.sendall(head + b"\r\n")
                trickle = b'{"image": "' + b"A" * 99_990
            else:
                trickle = head + b"X-Slow: " + b"a" * 1000
            connection.settimeout(pause)
            for byte in trickle:
                connection.sendall(bytes([byte]))
                try:
                    answer = connection.recv(4096)
                except TimeoutError:
                    continue
                if answer:
                    status = int(answer.split(b" ", 2)[1])
                break
        except OSError:  # the server closed the connection
            pass
    outcome.append((status, time.monotonic() - began))


def test_slow_clients_are_timed_out_without_blocking_others(model, png):
    config = ServerConfig(request_timeout_s=4.0, max_wait_ms=0)
    body = json.dumps({"image": base64.b64encode(png).decode()}).encode()
    with live_server(create_app(model, config)) as base:
        slow_bodies, slow_headers = [], []
        threads = [threading.Thread(target=slow_client, args=(base, True, slow_bodies)) for _ in range(8)]
        # Clients that never finish their headers: the app never sees them, but they must
        # not hold up anyone else either.
        threads += [threading.Thread(target=slow_client, args=(base, False, slow_headers), daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        answered = []
        for _ in range(6):
            began = time.monotonic()
            status, answer = classify(base, body)
            answered.append(time.monotonic() - began)
            assert status == 200 and answer["label"], answer
        for thread in threads[:8]:
            thread.join(30)
    tally["hostile_clients"] += 16
    tally["faults"] += 16
    # Everyone else was answered at the usual speed while the slow clients trickled, well
    # before the slow ones were cut off.
    assert max(answered) < 2.0, answered
    # A slow body is cut off at the request deadline with a 504.
    assert len(slow_bodies) == 8
    for status, seconds in slow_bodies:
        assert status == 504 and seconds < config.request_timeout_s + 2, slow_bodies


def test_a_request_the_model_fails_on_does_not_fail_those_batched_with_it():
    calls = []

    def handler(option, items):
        calls.append(list(items))
        if "poison" in items:
            raise ValueError("the processor cannot take this image")
        return [item.upper() for item in items]

    batcher = MicroBatcher({"classify": handler}, max_batch_size=8, max_wait_s=0.5, queue_size=8)
    batcher.start()
    try:
        futures = [batcher.submit("classify", None, [item]) for item in ("a", "poison", "b")]
        assert futures[0].result(10) == ["A"] and futures[2].result(10) == ["B"]
        with pytest.raises(ValueError, match="cannot take"):
            futures[1].result(10)
    finally:
        batcher.stop()
    assert calls[0] == ["a", "poison", "b"]  # they did share a call, then each ran alone
    tally["hostile_clients"] += 1
    tally["faults"] += 1


def test_image_urls_are_refused_by_default(model):
    with TestClient(create_app(model, ServerConfig())) as client:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:22/", "https://example.com/cat.jpg"):
            answer = client.post("/v1/classify", json={"image": url})
            tally["hostile_clients"] += 1
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "url_images_disabled"


# ---- soak: a real `emovlm-kd serve` process under a stream of good and bad requests -----


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def soak_requests(png: bytes) -> list[tuple[str, bytes, str, int]]:
    """(path, body, content type, expected status): mostly predictions, and every kind of
    bad request, each kind in its own proportion."""
    good = json.dumps({"image": base64.b64encode(png).decode()}).encode()
    boundary = "soakboundary"
    form = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{boundary}--\r\n".encode()
    bad = [
        ("/v1/classify", b'{"image": ', "application/json", 400),
        ("/v1/classify", b'{"image": "not base64!"}', "application/json", 400),
        ("/v1/classify", json.dumps({"image": base64.b64encode(png[:300]).decode()}).encode(), "application/json", 400),
        ("/v1/classify", b"image bytes", "text/plain", 415),
        ("/v1/classify", b'{"image": "' + b"A" * 300_000 + b'"}', "application/json", 413),
        ("/v1/classify", json.dumps({"image": "http://10.0.0.1/x.png"}).encode(), "application/json", 400),
        ("/v1/chat/completions", b'{"messages": 3}', "application/json", 400),
        ("/v1/nothing", b"{}", "application/json", 404),
    ]
    multipart = ("/v1/classify", form, f"multipart/form-data; boundary={boundary}", 200)
    return [("/v1/classify", good, "application/json", 200)] * 10 + [multipart] * 2 + bad


def settled_rss_kb(pid: int) -> int:
    """RSS once the server is idle: the least of a few readings, past any batch in flight."""
    readings = []
    for _ in range(5):
        time.sleep(0.1)
        readings.append(rss_kb(pid))
    return min(readings)


def test_soak_memory_stays_flat(trained, png, tmp_path):
    port = free_port()
    # A fixed mmap threshold: glibc then returns large freed blocks at once instead of keeping
    # some of them, which would make the resting RSS jump by a batch's worth between readings.
    # Being the user's own malloc setting, it also turns off `keep_freed_memory`, under which
    # the server rests at up to a few tens of MB more after a new peak (cpu_memory.py).
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", MALLOC_MMAP_THRESHOLD_="131072")
    command = [sys.executable, "-m", "emovlm_kd", "serve", "--run", str(trained[0]), "--port", str(port), "--max-body-mb", "0.1"]
    with open(tmp_path / "server.log", "w") as log:  # the server keeps its own copy of the file
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = urllib.parse.urlsplit(f"http://127.0.0.1:{port}")
    kinds = soak_requests(png)
    statuses: dict[int, int] = {}
    problems: list = []
    lock = threading.Lock()

    def client(counter):
        while (number := next(counter, None)) is not None:
            path, body, kind, expected = kinds[number % len(kinds)]
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            try:
                connection.request("POST", path, body, {"content-type": kind})
                response = connection.getresponse()
                answer = json.loads(response.read())
                status = response.status
            except (OSError, http.client.HTTPException, ValueError) as error:
                status, answer = 0, repr(error)
            finally:
                connection.close()
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status != expected:
                    problems.append((path, expected, status, str(answer)[:200]))

    rounds = 6
    rss = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            try:
                with socket.create_connection((url.hostname, port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        began = time.monotonic()
        # Rounds of requests from 6 clients at once; memory is read between rounds, at rest.
        for round_number in range(rounds):
            share = range(round_number * SOAK_REQUESTS // rounds, (round_number + 1) * SOAK_REQUESTS // rounds)
            counter = iter(share)
            threads = [threading.Thread(target=client, args=(counter,)) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            assert server.poll() is None, "the server died during the soak"
            rss.append(settled_rss_kb(server.pid))
        seconds = time.monotonic() - began
    finally:
        server.terminate()
        server.wait(30)
    bad = sum(kinds[number % len(kinds)][3] != 200 for number in range(SOAK_REQUESTS))
    tally["soak_requests"] += SOAK_REQUESTS
    tally["hostile_clients"] += bad
    tally["inputs"] += SOAK_REQUESTS
    tally["rejected"] += bad
    # The first round warms up (allocator arenas, model caches); a leak shows as the
    # later rounds' resting RSS climbing above the second's.
    growth = max(rss[2:]) - rss[1]
    tally["soak_rss_growth_kb"] = growth
    print(
        f"\nsoak: {SOAK_REQUESTS} requests in {seconds:.0f} s, statuses {dict(sorted(statuses.items()))}, "
        f"resting RSS per round (MB): {[round(kb / 1024) for kb in rss]}"
    )
    assert problems == [], problems[:5]
    assert growth < 16 * 1024, [round(kb / 1024) for kb in rss]
