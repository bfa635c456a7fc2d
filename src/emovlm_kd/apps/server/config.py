"""The serving settings; the `serve` command line is built from these fields and their help."""

from __future__ import annotations

from dataclasses import dataclass

from emovlm_kd.config import setting
from emovlm_kd.errors import UserError


@dataclass
class ServerConfig:
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = setting(8000, "port to listen on")
    model_name: str | None = setting(None, "model id shown by /v1/models (default: the run folder's name)")
    max_batch_size: int = setting(8, "most images in one model call")
    max_wait_ms: float = setting(10.0, "how long the first request of a batch waits for others")
    queue_size: int = setting(64, "requests that may wait for the model; beyond it requests get 503")
    request_timeout_s: float = setting(60.0, "a request not answered within this time gets 504")
    max_body_mb: float = setting(20.0, "largest request body accepted")
    max_images: int = setting(16, "most images in one classify request")
    max_image_pixels: int = setting(25_000_000, "largest image accepted, in pixels")
    max_tokens: int = setting(512, "longest chat completion, in tokens: the default, and the cap on larger requests")
    allow_url_images: bool = setting(False, "let chat and classify requests give images as http(s) URLs")
    url_max_mb: float = setting(10.0, "largest image fetched from a URL")
    url_timeout_s: float = setting(10.0, "time limit for fetching an image URL")
    api_key_env: str | None = setting(None, "require 'Authorization: Bearer <key>', the key read from this environment variable")

    def __post_init__(self):
        positive = ("max_batch_size", "queue_size", "request_timeout_s", "max_body_mb", "max_images",
                    "max_image_pixels", "max_tokens", "url_max_mb", "url_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{name} (--{name.replace('_', '-')}) must be above 0.", exit_code=2)
        if self.max_wait_ms < 0:
            raise UserError("max_wait_ms (--max-wait-ms) cannot be negative.", exit_code=2)
        if not 0 <= self.port <= 65535:
            raise UserError("port (--port) must be from 0 to 65535.", exit_code=2)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def url_max_bytes(self) -> int:
        return int(self.url_max_mb * 1024 * 1024)
