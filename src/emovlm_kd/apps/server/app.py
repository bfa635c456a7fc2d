"""The FastAPI app: classification API, OpenAI-compatible chat, web page, health and metrics.

`create_app(model, config)` serves an already loaded `EmoVLMKD`. All model calls go
through one `MicroBatcher` worker thread; request handlers only parse, wait and answer.
`serve_in_thread(app)` runs an app on a free loopback port of this process (the tests and
`bench --serve` do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client.exposition import choose_encoder
from starlette.exceptions import HTTPException

from emovlm_kd import __version__
from emovlm_kd.apps.server.batching import MicroBatcher, Overloaded
from emovlm_kd.apps.server.config import ServerConfig
from emovlm_kd.apps.server.errors import ApiError, error_body, error_response
from emovlm_kd.apps.server.metrics import Metrics, RecordMetrics
from emovlm_kd.apps.server.payloads import (
    ImageReader,
    read_chat_request,
    read_classify_request,
    read_json_object,
)
from emovlm_kd.apps.server.security import LimitBody, check_bearer, read_api_key
from emovlm_kd.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ChatAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int


def model_handlers(model) -> dict:
    """The batch functions the worker thread runs: (option, items) -> one result per item."""

    def classify(explain: bool, images: list) -> list:
        return model.predict_images(images, explain=explain)

    def chat(max_tokens: int, pairs: list) -> list[ChatAnswer]:
        adapter = model.adapter
        inputs = adapter.encode([image for image, _ in pairs], [prompt for _, prompt in pairs])
        texts = adapter.generate(inputs, max_new_tokens=max_tokens)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()  # [B]: without left padding
        # The adapter returns text only; its tokens are counted again, which can differ from
        # the generated ones by a token or so, never beyond the limit.
        completion_tokens = [min(max_tokens, len(adapter.tokenizer(text, add_special_tokens=False).input_ids)) for text in texts]
        return [ChatAnswer(text, int(prompt_tokens[row]), completion_tokens[row]) for row, text in enumerate(texts)]

    return {"classify": classify, "chat": chat}


def create_app(model, config: ServerConfig) -> FastAPI:
    """The app serving `model` (an `EmoVLMKD`); the worker thread runs while the app's lifespan does."""
    api_key = read_api_key(config.api_key_env)
    model_id = config.model_name or "emovlm-kd"
    metrics = Metrics()
    reader = ImageReader(config)
    page = (resources.files(__package__) / "static" / "index.html").read_text(encoding="utf-8")
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(
            model_handlers(model),
            max_batch_size=config.max_batch_size,
            max_wait_s=config.max_wait_ms / 1000,
            queue_size=config.queue_size,
            on_batch=metrics.record_batch,
        )
        batcher.start()
        app.state.batcher = batcher
        metrics.watch_queue(lambda: batcher.depth)
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="EmoVLM-KD", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    app.add_middleware(LimitBody, max_bytes=config.max_body_bytes)
    app.add_middleware(RecordMetrics, metrics=metrics)  # outermost: sees every response

    def require_key(request: Request) -> None:
        if api_key is not None:
            check_bearer(request.headers.get("authorization"), api_key)

    async def on_model(request: Request, kind: str, option, items: list) -> list:
        try:
            future = request.app.state.batcher.submit(kind, option, items)
        except Overloaded as busy:
            raise ApiError(503, str(busy), "overloaded", headers={"Retry-After": str(busy.retry_after)}) from None
        try:
            return await asyncio.wrap_future(future)
        except Overloaded as busy:  # the server began shutting down while the job waited
            raise ApiError(503, str(busy), "overloaded", headers={"Retry-After": str(busy.retry_after)}) from None

    async def within_deadline(coroutine):
        # The whole request (body upload, decoding, queue wait, model) shares one deadline;
        # on time-out the queued job is cancelled and costs no model time.
        try:
            return await asyncio.wait_for(coroutine, config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                f"the request was not answered within {config.request_timeout_s:g} s; retry later or with fewer images.",
                "timeout",
            ) from None

    @app.get("/", include_in_schema=False)
    async def web_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        batcher = request.app.state.batcher
        body = {"status": "ok" if batcher.alive else "down", "model": model_id, "queue_depth": batcher.depth}
        return JSONResponse(body, 200 if batcher.alive else 503)

    protected = APIRouter(dependencies=[Depends(require_key)])

    @protected.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        # The format the scraper asks for in Accept (OpenMetrics), else Prometheus text.
        encode, content_type = choose_encoder(request.headers.get("accept"))
        return Response(encode(metrics.registry), media_type=content_type)

    @protected.get("/metrics.json")
    async def metrics_summary(request: Request) -> dict:
        return metrics.snapshot(request.app.state.batcher.depth, config.queue_size)

    @protected.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @protected.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict:
        if name != model_id:
            raise ApiError(404, f"model {name[:80]!r} is not served here; use {model_id!r}.", "model_not_found")
        return model_card()

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "emovlm-kd"}

    @protected.post("/v1/classify")
    async def classify(request: Request) -> dict:
        return await within_deadline(classify_request(request))

    async def classify_request(request: Request) -> dict:
        parsed = await read_classify_request(request, reader)
        predictions = await on_model(request, "classify", parsed.explain, parsed.images)
        results = []
        for name, prediction in zip(parsed.names, predictions):
            result = {"image": name, "label": prediction.label, "probs": prediction.probs, "vlm": prediction.vlm, "head": prediction.head}
            if parsed.explain:
                result["explanation"] = prediction.explanation
            results.append(result)
        return {"results": results} if parsed.batch else results[0]

    @protected.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await within_deadline(chat_request(request))

    async def chat_request(request: Request):
        chat = read_chat_request(await read_json_object(request), model_id, config.max_tokens)
        image = await reader.read_reference(chat.image_reference, "the image_url")
        (answer,) = await on_model(request, "chat", chat.max_tokens, [(image, chat.prompt)])
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        finish = "length" if answer.completion_tokens >= chat.max_tokens else "stop"
        usage = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }
        if chat.stream:
            return StreamingResponse(_stream_chunks(completion_id, model_id, answer.text, finish, usage), media_type="text/event-stream")
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": finish}],
            "usage": usage,
        }

    app.include_router(protected)
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: a free port), for uvicorn to serve on. Bound before
    the model loads, so that a taken port or a wrong address is said in one sentence at once."""
    import errno

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise UserError(f"--host {host} is not an address this machine knows ({error.strerror}); use 127.0.0.1, or "
                        "0.0.0.0 to listen on every interface.", exit_code=2) from None
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} is in use by another program; stop it, or choose another --port "
                              "(0: any free one).",
            errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 to "
                                 "listen on every interface.",
            errno.EACCES: f"port {port} needs administrator rights; choose a --port above 1023.",
        }
        raise UserError(reasons.get(error.errno, f"cannot listen on {host} port {port} ({error.strerror}); choose "
                                                 "another --host or --port."), exit_code=1) from None
    return listener


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, start_timeout_s: float = 30.0):
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    listener = listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {start_timeout_s:g} s on port {port}.")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


def _stream_chunks(completion_id: str, model_id: str, text: str, finish: str, usage: dict):
    # The answer is generated whole, then sent as server-sent events in OpenAI's chunk
    # format, so that clients asking for a stream work unchanged.
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None, **extra) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": text}, None)
    yield chunk({}, finish, usage=usage)
    yield "data: [DONE]\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # Raised by routing (404, 405) and by multipart parsing (400).
        if error.status_code == 404:
            message, code = f"there is no {request.url.path}; the API is /v1/classify, /v1/chat/completions and /v1/models.", "not_found"
        elif error.status_code == 405:
            message, code = f"{request.method} is not allowed on {request.url.path}.", "method_not_allowed"
        elif error.status_code == 400:
            message, code = f"the multipart body cannot be read ({error.detail}); send a well-formed multipart/form-data upload.", "invalid_multipart"
        else:
            message, code = str(error.detail), "http_error"
        return JSONResponse(error_body(error.status_code, message, code), error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "the server failed on this request; its log has the details.", "internal_error"), 500)
