"""The HTTP API in process (TestClient) on the trained tiny run: answers, every bad request, limits."""

import base64
import io
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_server_support import live_server, sample_images

from emovlm_kd.apps.cli import main
from emovlm_kd.apps.server.app import create_app
from emovlm_kd.apps.server.config import ServerConfig
from emovlm_kd.errors import UserError
from emovlm_kd.pipeline import Prediction
from emovlm_kd.run_folder import load_rgb

MODEL_ID = "tiny-run"


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServerConfig(model_name=MODEL_ID))) as client:
        yield client


@pytest.fixture(scope="module")
def pngs(sample_root):
    return [path.read_bytes() for path in sample_images(sample_root, 3)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + b64(data)


def assert_error(response, status: int, code: str, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"].endswith(".")
    assert "Traceback" not in response.text
    for word in words:
        assert word in error["message"]
    return error["message"]


def assert_prediction(result: dict, labels) -> None:
    assert result["label"] in labels
    for part in ("probs", "vlm", "head"):
        assert list(result[part]) == list(labels)
        assert sum(result[part].values()) == pytest.approx(1, abs=1e-4)
    assert result["probs"][result["label"]] == max(result["probs"].values())


# ---- answers --------------------------------------------------------------------------


def test_multipart_and_json_give_the_library_prediction(client, model, pngs):
    expected = model.predict_images([load_rgb(pngs[0])])[0]
    uploaded = client.post("/v1/classify", files={"file": ("smile.png", pngs[0], "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    assert body["image"] == "smile.png" and "explanation" not in body
    assert_prediction(body, model.taxonomy.labels)
    assert body["label"] == expected.label
    for part in ("probs", "vlm", "head"):
        assert body[part] == pytest.approx(getattr(expected, part), abs=1e-4)
    for reference in (b64(pngs[0]), data_url(pngs[0])):
        sent = client.post("/v1/classify", json={"image": reference})
        assert sent.status_code == 200 and sent.json()["image"] == "image"
        assert sent.json()["probs"] == pytest.approx(body["probs"], abs=1e-4)


def test_batches_answer_each_image_in_order(client, model, pngs):
    singles = [client.post("/v1/classify", json={"image": b64(png)}).json() for png in pngs]
    batch = client.post("/v1/classify", json={"images": [b64(png) for png in pngs]})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [result["image"] for result in results] == ["images[0]", "images[1]", "images[2]"]
    for single, result in zip(singles, results):
        assert result["label"] == single["label"]
        assert result["probs"] == pytest.approx(single["probs"], abs=1e-3)
    files = [("files", (f"{n}.png", png, "image/png")) for n, png in enumerate(pngs)]
    uploaded = client.post("/v1/classify", files=files).json()["results"]
    assert [r["image"] for r in uploaded] == ["0.png", "1.png", "2.png"]
    assert [r["label"] for r in uploaded] == [r["label"] for r in results]


def test_explain_adds_a_sentence_from_form_json_or_query(client, pngs):
    answers = [
        client.post("/v1/classify", files={"file": ("a.png", pngs[0])}, data={"explain": "true"}),
        client.post("/v1/classify?explain=1", files={"file": ("a.png", pngs[0])}),
        client.post("/v1/classify", json={"image": b64(pngs[0]), "explain": True}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json()["explanation"], str)
    assert len({answer.json()["explanation"] for answer in answers}) == 1  # greedy: the same every time


def test_odd_but_valid_images_are_read(client, model):
    # Transparent, greyscale and 1-pixel images all become usable RGB images.
    for mode, size in (("RGBA", (40, 30)), ("L", (50, 50)), ("RGB", (1, 1))):
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, format="PNG")
        answer = client.post("/v1/classify", json={"image": b64(buffer.getvalue())})
        assert answer.status_code == 200, answer.text
        assert_prediction(answer.json(), model.taxonomy.labels)


# ---- bad requests: a 4xx with one sentence, never a 500 ---------------------------------


def test_bad_classify_requests_say_what_is_wrong(client, pngs):
    post = client.post
    assert_error(post("/v1/classify", json={"image": "not base64 at all!"}), 400, "invalid_base64", "base64")
    assert_error(post("/v1/classify", json={"image": b64(b"hello, world")}), 400, "invalid_image", "not an image")
    assert_error(post("/v1/classify", json={"image": b64(pngs[0][:200])}), 400, "invalid_image", "truncated")
    assert_error(post("/v1/classify", json={"image": "data:image/png,abc"}), 400, "invalid_data_url", "base64")
    assert_error(post("/v1/classify", json={"image": ""}), 400, "invalid_image")
    assert_error(post("/v1/classify", json={"image": 42}), 400, "invalid_image", "string")
    assert_error(post("/v1/classify", json={}), 400, "missing_image", "image")
    assert_error(post("/v1/classify", json={"images": []}), 400, "invalid_parameter", "non-empty list")
    assert_error(post("/v1/classify", json={"images": [b64(pngs[0])] * 17}), 400, "too_many_images", "at most 16")
    assert_error(post("/v1/classify", json={"image": b64(pngs[0]), "images": []}), 400, "invalid_parameter", "not both")
    assert_error(post("/v1/classify", json={"image": b64(pngs[0]), "explain": "maybe"}), 400, "invalid_parameter", "explain")
    assert_error(post("/v1/classify", json=[1, 2]), 400, "invalid_json", "object")
    malformed = post("/v1/classify", content=b'{"image": ', headers={"content-type": "application/json"})
    assert_error(malformed, 400, "invalid_json", "not valid JSON")
    binary = post("/v1/classify", content=b"\xff\xfe\x00garbage", headers={"content-type": "application/json"})
    assert_error(binary, 400, "invalid_json")
    assert_error(post("/v1/classify", content=b"x", headers={"content-type": "text/plain"}), 415, "unsupported_media_type", "text/plain")
    assert_error(post("/v1/classify", content=b"x"), 415, "unsupported_media_type")
    assert_error(post("/v1/classify", data={"explain": "true"}, files={"other": ("a.png", pngs[0])}), 400, "missing_image", "'file'")
    assert_error(post("/v1/classify", data={"file": "text"}, files={"x": ("a", b"")}), 400, "invalid_image", "file upload")
    both = post("/v1/classify", files=[("file", ("a.png", pngs[0])), ("files", ("b.png", pngs[0]))])
    assert_error(both, 400, "invalid_parameter", "not both")
    two = post("/v1/classify", files=[("file", ("a.png", pngs[0])), ("file", ("b.png", pngs[0]))])
    assert_error(two, 400, "invalid_parameter", "'files'")
    assert_error(post("/v1/classify", files={"file": ("notes.txt", b"just text")}), 400, "invalid_image", "notes.txt")
    no_boundary = post("/v1/classify", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert_error(no_boundary, 400, "invalid_multipart", "boundary")
    broken = post("/v1/classify", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert_error(broken, 400, "invalid_multipart")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed")
    assert_error(client.get("/v1/nothing"), 404, "not_found", "/v1/classify")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300),
    kind=st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=b", "image/png", ""]),
    path=st.sampled_from(["/v1/classify", "/v1/chat/completions"]),
)
def test_arbitrary_bodies_get_a_4xx_never_a_500(client, body, kind, path):
    response = client.post(path, content=body, headers={"content-type": kind} if kind else {})
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "image_url", "url", "model", "messages", "n", "max_tokens", "image", "images", "explain"]), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_values, path=st.sampled_from(["/v1/classify", "/v1/chat/completions"]))
def test_arbitrary_json_gets_a_4xx_never_a_500(client, payload, path):
    response = client.post(path, json=payload)
    assert 400 <= response.status_code < 500, response.text


def test_bodies_above_the_limit_get_413_declared_or_streamed(model):
    with TestClient(create_app(model, ServerConfig(max_body_mb=0.01))) as small:
        declared = small.post("/v1/classify", json={"image": "A" * 20_000})
        assert_error(declared, 413, "body_too_large", "0.01 MB")

        def chunks():
            yield b'{"image": "'
            for _ in range(20):
                yield b"A" * 1000
            yield b'"}'

        streamed = small.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert_error(streamed, 413, "body_too_large")
        multipart = small.post("/v1/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert_error(multipart, 413, "body_too_large")
        assert small.get("/health").status_code == 200


# ---- OpenAI-compatible chat, in process (the official client is in test_server_openai) --


def chat(image_url=None, text="Which emotion does this image evoke?", **extra) -> dict:
    content = [{"type": "text", "text": text}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **extra}


def test_chat_answers_greedily_with_usage(client, pngs):
    first = client.post("/v1/chat/completions", json=chat(data_url(pngs[0]), max_tokens=12))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = client.post("/v1/chat/completions", json=chat(data_url(pngs[0]), max_tokens=12, temperature=1.5))
    assert again.json()["choices"][0]["message"] == choice["message"]


def test_max_tokens_above_the_cap_is_lowered_to_it(model, pngs):
    with TestClient(create_app(model, ServerConfig(model_name=MODEL_ID, max_tokens=3))) as capped:
        answer = capped.post("/v1/chat/completions", json=chat(data_url(pngs[0]), max_tokens=100_000))
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] <= 3


def test_bad_chat_requests_say_what_is_wrong(client, pngs):
    post = lambda body: client.post("/v1/chat/completions", json=body)
    image = data_url(pngs[0])
    assert_error(post(chat()), 400, "invalid_image_count", "0 images")
    two = chat(image)
    two["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": image}})
    assert_error(post(two), 400, "invalid_image_count", "2 images")
    assert_error(post(chat(image, text="  ")), 400, "invalid_parameter", "no text")
    assert_error(post(chat(image) | {"model": "gpt-4o"}), 404, "model_not_found", MODEL_ID)
    assert_error(post(chat(image, n=2)), 400, "invalid_parameter", "n must be 1")
    assert_error(post(chat(image, max_tokens=0)), 400, "invalid_parameter", "at least 1")
    assert_error(post(chat(image, max_tokens="ten")), 400, "invalid_parameter")
    assert_error(post(chat(image, tools=[{"type": "function"}])), 400, "invalid_parameter", "tools")
    assert_error(post({"model": MODEL_ID}), 400, "invalid_parameter", "messages")
    assert_error(post({"messages": [{"role": "robot", "content": "hi"}]}), 400, "invalid_parameter", "role")
    audio = {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
    assert_error(post(audio), 400, "invalid_parameter", "input_audio")
    assert_error(post(chat("data:image/png;base64,@@@")), 400, "invalid_base64")
    assert_error(post(chat(data_url(b"GIF89a-nope"))), 400, "invalid_image")
    assert_error(post(chat("https://example.com/cat.jpg")), 400, "url_images_disabled", "--allow-url-images")
    form = client.post("/v1/chat/completions", files={"file": ("a.png", pngs[0])})
    assert_error(form, 415, "unsupported_media_type", "application/json")


def test_url_images_when_enabled_still_refuse_private_addresses(model):
    with TestClient(create_app(model, ServerConfig(model_name=MODEL_ID, allow_url_images=True))) as client:
        for url in ("http://127.0.0.1:9/x.png", "http://localhost/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]/x.png", "http://10.1.2.3/x.png"):
            answer = client.post("/v1/chat/completions", json=chat(url))
            assert_error(answer, 400, "forbidden_image_url", "private")
            assert_error(client.post("/v1/classify", json={"image": url}), 400, "forbidden_image_url")
        assert_error(client.post("/v1/chat/completions", json=chat("http://no-such-host.invalid/x.png")), 400, "invalid_image_url", "resolved")


def test_models_list_and_retrieve(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == [MODEL_ID]
    assert client.get(f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID
    assert_error(client.get("/v1/models/other"), 404, "model_not_found")


# ---- page, health, metrics, API key ---------------------------------------------------


def test_web_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # No CDN: nothing is loaded from another host.
    for marker in ("src=\"http", "href=\"http", "src='http", "href='http", "@import", "//cdn"):
        assert marker not in page.text
    assert 'name="viewport"' in page.text


def test_health_and_metrics_report_counts_latencies_and_queue(client, pngs):
    assert client.get("/health").json() == {"status": "ok", "model": MODEL_ID, "queue_depth": 0}
    client.post("/v1/classify", json={"image": b64(pngs[1])})
    client.post("/v1/classify", json={"image": "!"})
    report = client.get("/metrics.json").json()
    counts = report["requests"]["/v1/classify"]
    assert counts["200"] >= 1 and counts["400"] >= 1
    latency = report["latency"]["/v1/classify"]
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert report["queue_depth"] == 0 and report["queue_size"] == 64
    assert report["batches"]["count"] >= 1 and report["batches"]["mean_size"] >= 1


def scrape(client) -> dict:
    """`/metrics` parsed as Prometheus parses it: {family name: family}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def sample_value(families: dict, sample: str, **labels) -> float:
    """The value of one sample, 0 when its series does not exist yet."""
    values = [s.value for family in families.values() for s in family.samples if s.name == sample and s.labels == labels]
    return values[0] if values else 0.0


def test_prometheus_metrics_count_requests_latencies_batches_and_model_time(model, pngs):
    # An app of its own, so that the counts start from zero.
    with TestClient(create_app(model, ServerConfig())) as client:
        before = scrape(client)
        for png in pngs:
            assert client.post("/v1/classify", json={"image": b64(png)}).status_code == 200
        assert_error(client.post("/v1/classify", json={"image": "!"}), 400, "invalid_base64")
        after = scrape(client)
        text = client.get("/metrics")
        openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    # The text format shows each counter's and histogram's `_created` time as a gauge of its own.
    assert {name: family.type for name, family in after.items() if not name.endswith("_created")} == {
        "emovlm_kd_requests": "counter",
        "emovlm_kd_request_duration_seconds": "histogram",
        "emovlm_kd_queue_depth": "gauge",
        "emovlm_kd_batch_size": "histogram",
        "emovlm_kd_model_seconds": "histogram",
    }
    classify = {"route": "/v1/classify"}
    assert sample_value(after, "emovlm_kd_requests_total", **classify, status="200") == 3
    assert sample_value(after, "emovlm_kd_requests_total", **classify, status="400") == 1
    assert sample_value(before, "emovlm_kd_request_duration_seconds_count", **classify) == 0
    assert sample_value(after, "emovlm_kd_request_duration_seconds_count", **classify) == 4
    assert sample_value(after, "emovlm_kd_request_duration_seconds_bucket", **classify, le="+Inf") == 4
    # The bad request never reaches the model: three images, in one to three calls.
    batches = sample_value(after, "emovlm_kd_batch_size_count")
    assert sample_value(before, "emovlm_kd_batch_size_count") == 0 and 1 <= batches <= 3
    assert sample_value(after, "emovlm_kd_batch_size_sum") == 3
    assert sample_value(after, "emovlm_kd_model_seconds_count") == batches
    assert sample_value(after, "emovlm_kd_model_seconds_sum") > 0
    assert sample_value(after, "emovlm_kd_queue_depth") == 0


def test_apps_in_one_process_keep_their_own_metrics(model, pngs):
    with TestClient(create_app(model, ServerConfig())) as first, TestClient(create_app(model, ServerConfig())) as second:
        assert first.post("/v1/classify", json={"image": b64(pngs[0])}).status_code == 200
        ok = {"route": "/v1/classify", "status": "200"}
        assert sample_value(scrape(first), "emovlm_kd_requests_total", **ok) == 1
        assert sample_value(scrape(second), "emovlm_kd_requests_total", **ok) == 0


def test_api_key_guards_the_api_but_not_page_or_health(model, monkeypatch, pngs):
    monkeypatch.setenv("EMOVLM_TEST_KEY", "s3cret")
    with TestClient(create_app(model, ServerConfig(api_key_env="EMOVLM_TEST_KEY"))) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = client.get("/v1/models", headers=headers)
            assert_error(refused, 401, "invalid_api_key", "Bearer")
            assert refused.headers["www-authenticate"] == "Bearer"
        assert_error(client.post("/v1/classify", json={"image": b64(pngs[0])}), 401, "invalid_api_key")
        for path in ("/metrics", "/metrics.json"):
            assert_error(client.get(path), 401, "invalid_api_key")
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.post("/v1/classify", json={"image": b64(pngs[0])}, headers=good).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    monkeypatch.delenv("EMOVLM_TEST_KEY")
    with pytest.raises(UserError, match="EMOVLM_TEST_KEY"):
        create_app(model, ServerConfig(api_key_env="EMOVLM_TEST_KEY"))


# ---- overload and time-outs, with a stand-in model held by the test ------------------------


class HeldModel:
    """Stands in for EmoVLMKD: answers a batch only once `release` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def predict_images(self, images, explain=False):
        self.calls += 1
        assert self.release.wait(30)
        return [Prediction(image="", label="joy", probs={"joy": 1.0}, vlm={"joy": 1.0}, head={"joy": 1.0}) for _ in images]


def _post_json(base: str, body: dict, timeout: float = 30):
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    connection.request("POST", "/v1/classify", json.dumps(body), {"content-type": "application/json"})
    response = connection.getresponse()
    answer = (response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read()))
    connection.close()
    return answer


def test_overload_answers_503_with_retry_after_at_once(pngs):
    held = HeldModel()
    app = create_app(held, ServerConfig(queue_size=2, max_batch_size=1, max_wait_ms=0))
    body = {"image": b64(pngs[0])}
    with live_server(app) as base:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_post_json(base, body))) for _ in range(3)]
        threads[0].start()
        deadline = time.monotonic() + 20
        while held.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for thread in threads[1:]:
            thread.start()
        while _health(base)["queue_depth"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        began = time.monotonic()
        status, headers, refused = _post_json(base, body)
        assert time.monotonic() - began < 2
        assert status == 503 and headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
        assert refused["error"]["code"] == "overloaded"
        held.release.set()
        for thread in threads:
            thread.join(30)
    assert sorted(status for status, _, _ in answers) == [200, 200, 200]


def _health(base: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(base + "/health", timeout=10) as response:
        return json.loads(response.read())


def test_a_slow_model_gives_504_and_skips_abandoned_jobs(pngs):
    held = HeldModel()
    app = create_app(held, ServerConfig(request_timeout_s=0.5, max_batch_size=1, max_wait_ms=0))
    body = {"image": b64(pngs[0])}
    with TestClient(app) as client:
        began = time.monotonic()
        assert_error(client.post("/v1/classify", json=body), 504, "timeout", "0.5 s")
        assert_error(client.post("/v1/classify", json=body), 504, "timeout")
        assert time.monotonic() - began < 5
        held.release.set()
        time.sleep(0.3)
        # The second job was still queued when its request gave up: it never ran.
        assert held.calls == 1
        assert client.get("/health").json()["status"] == "ok"


def test_a_model_failure_is_a_json_500_without_traceback(pngs):
    class BrokenModel:
        def predict_images(self, images, explain=False):
            raise RuntimeError("CUDA out of memory")

    with TestClient(create_app(BrokenModel(), ServerConfig()), raise_server_exceptions=False) as client:
        answer = client.post("/v1/classify", json={"image": b64(pngs[0])})
        assert_error(answer, 500, "internal_error", "log")
        assert "CUDA" not in answer.text


# ---- command line -----------------------------------------------------------------------


def test_serve_command_errors_are_one_sentence(capsys, tmp_path, monkeypatch):
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert "(--max-batch-size) must be above 0" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    assert main(["serve", "--run", str(tmp_path)]) == 1
    assert "pip install 'emovlm-kd[serve]'" in capsys.readouterr().err


def test_a_taken_port_or_a_wrong_host_is_said_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import socket

    from emovlm_kd.pipeline import EmoVLMKD

    def loads(*args, **kwargs):
        raise AssertionError("the model loaded although the server cannot listen")

    monkeypatch.setattr(EmoVLMKD, "from_pretrained", loads)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(tmp_path), "--port", str(port)]) == 1
    assert capsys.readouterr().err == (f"error: port {port} is in use by another program; stop it, or choose another "
                                       "--port (0: any free one).\n")
    # 192.0.2.1 is kept for documentation: no machine has it.
    assert main(["serve", "--run", str(tmp_path), "--host", "192.0.2.1"]) == 1
    assert capsys.readouterr().err == ("error: --host 192.0.2.1 is not an address of this machine; use 127.0.0.1, "
                                       "or 0.0.0.0 to listen on every interface.\n")
    assert main(["serve", "--run", str(tmp_path), "--host", "no-such-host.invalid"]) == 2
    assert capsys.readouterr().err.startswith("error: --host no-such-host.invalid is not an address this machine "
                                              "knows (")


def test_serve_command_builds_the_app_from_its_flags(trained, monkeypatch, capsys):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets: started.update(
        app=server.config.app, addresses=[listener.getsockname() for listener in sockets]))
    run_dir = trained[0]
    assert main(["serve", "--run", str(run_dir), "--port", "0", "--queue-size", "5", "--allow-url-images"]) == 0
    [(host, port)] = started["addresses"]
    # --port 0: a free port, and the printed address is the one it got.
    assert host == "127.0.0.1" and port > 0
    assert f"on http://127.0.0.1:{port}/ " in capsys.readouterr().out
    with TestClient(started["app"]) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == run_dir.name
        assert client.get("/metrics.json").json()["queue_size"] == 5
        # --allow-url-images is on: a loopback URL is refused for its address, not for being a URL.
        assert_error(client.post("/v1/classify", json={"image": "http://127.0.0.1/x.png"}), 400, "forbidden_image_url")
