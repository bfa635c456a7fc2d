"""A loopback OpenAI-compatible chat-completions server with scripted failures, for tests.

Each request takes the next action of `script` (an HTTP status such as '429' or '500',
'timeout', 'garbage', 'no sections', 'leak', 'off-schema'); once the script is used up,
requests are answered properly, in a rotation of `styles` (by default the four heading
styles of `ANSWER_STYLES`, each ending in a line that names the emotion, as models do).
A request with a `response_format` is refused with `refusal_status` unless
`accepts_schema`; when accepted it is answered with JSON that fits the schema. The true
label is read back from the prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# name -> answer; the first is the shape that once left every record flagged.
ANSWER_STYLES = {
    "bold numbered": "**1. Key Elements**\n- a round face\n- a {colour} background\n\n"
    "**2. Reasoning**\nThe raised brows and open mouth set the mood.\n\n**3. Emotion**: {label}",
    "numbered bold": "1. **Key Elements**:\n   1. a round face\n   2. a {colour} background\n"
    "2. **Reasoning**: The eyes and mouth carry it.\n\nEmotion: {label}",
    "markdown headers": "Sure, here it is.\n\n### Key Elements\n* a round face on a {colour} ground\n\n"
    "## 2) Reasoning\nThe mouth shape decides it.\n\n**Emotion:** {label}",
    "dash and bold": "Key elements - a round face, {colour} tones\n"
    "**Reasoning:** the brows and mouth together set the tone.\nEmotion - {label}",
}


class FakeChatServer:
    """Start with `with FakeChatServer(...) as server:`; `server.base_url` ends in /v1."""

    def __init__(
        self, script=(), timeout_sleep: float = 1.0, delay: float = 0.0, styles=tuple(ANSWER_STYLES.values()),
        accepts_schema: bool = False, refusal_status: int = 400,
    ):
        self.script = list(script)
        self.styles = list(styles)
        self.accepts_schema = accepts_schema
        self.refusal_status = refusal_status
        self.refused = 0  # requests refused for their response_format; not in `requests`
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
                structured = "response_format" in body
                if structured and not server.accepts_schema:
                    with server._lock:
                        server.refused += 1
                    message = "response_format json_schema is not supported by this server"
                    self._send(server.refusal_status, {"error": {"message": message}})
                    return
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
                elif action == "off-schema":  # JSON, but with the wrong keys
                    self._send(200, _completion(json.dumps({"Key Elements": "a face", "Reasoning": "the mouth"})))
                elif structured:
                    answer = {"key_elements": ["a round face", f"a #{digest[:6]} background"],
                              "reasoning": "The raised brows and open mouth set the mood."}
                    self._send(200, _completion(json.dumps(answer)))
                else:
                    style = server.styles[server.requests % len(server.styles)]
                    self._send(200, _completion(style.format(colour=f"#{digest[:6]}", label=label.capitalize())))

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
