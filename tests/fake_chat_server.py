"""A loopback OpenAI-compatible chat-completions server with scripted failures, for tests.

Each request takes the next action of `script` (an HTTP status such as '429' or '500',
'timeout', 'garbage', 'no sections', 'leak'); once the script is used up, requests are answered properly, in
a rotation of the heading styles models use. The true label is read back from the prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_STYLES = (
    "Key elements:\n- a round face\n- {colour} background\n\nReasoning:\nThe raised brows and open mouth set the mood.",
    "**Key Elements:**\n1. a round face\n2. a {colour} background\n\n**Reasoning:** The eyes and mouth carry it.",
    "Sure, here it is.\n\n## 1. Key elements\nA round face on a {colour} ground.\n\n"
    "## 2. Reasoning\nThe mouth shape decides it.",
    "1) KEY ELEMENTS - a round face, {colour} tones\n2) REASONING - the brows and mouth together set the tone.",
)


class FakeChatServer:
    """Start with `with FakeChatServer(...) as server:`; `server.base_url` ends in /v1."""

    def __init__(self, script=(), timeout_sleep: float = 1.0, delay: float = 0.0):
        self.script = list(script)
        self.timeout_sleep = timeout_sleep
        self.delay = delay
        self.requests = 0
        self.answered: Counter = Counter()  # image digest -> proper answers sent
        self.authorization: str | None = None
        # Requests after the first `hold_after` answers wait until `release` is set.
        self.hold_after: int | None = None
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _next(self, digest: str) -> tuple[str, int]:
        with self._lock:
            self.requests += 1
            action = self.script.pop(0) if self.script else "answer"
            served = sum(self.answered.values())
            if action == "answer":
                self.answered[digest] += 1
            return action, served

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text, image = (part for part in body["messages"][1]["content"])
                label = re.search(r"label is \"(\w+)\"", text["text"]).group(1)
                digest = hashlib.sha256(image["image_url"]["url"].encode()).hexdigest()
                server.authorization = self.headers.get("Authorization")
                action, served = server._next(digest)
                if server.hold_after is not None and served >= server.hold_after:
                    server.release.wait()
                time.sleep(server.delay)
                if action.isdigit():
                    self._send(int(action), {"error": {"message": f"injected {action}"}}, {"retry-after": "0"})
                elif action == "timeout":
                    time.sleep(server.timeout_sleep)
                    self._send(200, _completion("too late"))
                elif action == "garbage":
                    self._send_raw(200, b"<html>proxy error</html>")
                elif action == "no sections":
                    self._send(200, _completion("I would rather not structure my answer."))
                elif action == "leak":
                    self._send(200, _completion(f"Key elements: a face\nReasoning: it shows {label}."))
                else:
                    style = ANSWER_STYLES[server.requests % len(ANSWER_STYLES)]
                    self._send(200, _completion(style.format(colour=f"#{digest[:6]}")))

            def _send(self, status, payload, headers=None):
                self._send_raw(status, json.dumps(payload).encode(), headers)

            def _send_raw(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a time-out, or a killed process)
                    pass

        return Handler


def _completion(text: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
