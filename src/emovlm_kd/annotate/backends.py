"""Who writes the annotations: any OpenAI-compatible chat endpoint, or a local VLM.

A backend answers one (image, prompt) at a time and sorts its failures: `TransientError`
is worth retrying (rate limit, server error, time-out, dropped connection),
`RequestFailed` is not (the endpoint refused this image), and `UserError` stops the run
(wrong key, wrong URL or model name), since every other image would fail the same way.

The endpoint backend asks for JSON that fits `ANNOTATION_SCHEMA` (structured outputs);
an endpoint that refuses `response_format` is asked in plain text from then on.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from dataclasses import dataclass

from PIL import Image

from emovlm_kd.annotate.config import AnnotateConfig
from emovlm_kd.annotate.prompts import ANNOTATION_SCHEMA, ANNOTATION_SYSTEM_PROMPT
from emovlm_kd.errors import UserError

log = logging.getLogger("emovlm_kd")

# Stands in for the key of servers that want none (vLLM, Ollama, LM Studio); the client needs one.
NO_API_KEY = "no-key"
# OpenAI's structured outputs; strict, so the model can only write JSON that fits the schema.
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "annotation", "strict": True, "schema": ANNOTATION_SCHEMA},
}


@dataclass(frozen=True)
class Answer:
    text: str
    # The answer stopped at max_tokens, so its last section may be cut short.
    truncated: bool = False
    # It was asked for as JSON fitting ANNOTATION_SCHEMA.
    structured: bool = False


class TransientError(Exception):
    """A failure that may pass if the same request is sent again later."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """A failure of one image that sending the same request again will not fix."""


class _SchemaRefused(Exception):
    """The endpoint refused a request for its `response_format`."""


def fit_image(image: Image.Image, max_side: int) -> Image.Image:
    """`image` downscaled (aspect kept) so its longer side is at most `max_side`."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def image_data_url(image: Image.Image) -> str:
    """An RGB image as a base64 JPEG data URL, the form every compatible endpoint accepts."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def api_key_from_env(variable: str | None) -> str:
    """The API key in `variable`; without one named, OPENAI_API_KEY if set, else no key."""
    if variable is None:
        return os.environ.get("OPENAI_API_KEY") or NO_API_KEY
    key = os.environ.get(variable, "").strip()
    if not key:
        raise UserError(
            f"environment variable {variable} (from --api-key-env) is not set; export your API key in it, "
            "or leave out --api-key-env for a server that needs no key."
        )
    return key


class OpenAICompatibleBackend:
    """Chat completions with the image as a data URL: OpenAI, vLLM, Ollama, LM Studio, ..."""

    def __init__(self, config: AnnotateConfig):
        try:
            import openai
        except ImportError:
            raise UserError(
                "the openai backend needs the openai package; install it with: pip install 'emovlm-kd[annotate]'."
            ) from None
        self._openai = openai
        self.model = config.model
        self.base_url = config.base_url
        self.max_workers = config.concurrency
        self.max_tokens = config.max_tokens
        self.temperature = config.temperature
        self.timeout = config.timeout
        # Retries are ours (seeded jitter, configurable delays), so the client makes none.
        api_key = api_key_from_env(config.api_key_env)
        self.client = openai.OpenAI(base_url=config.base_url, api_key=api_key, timeout=config.timeout, max_retries=0)
        # Until the endpoint refuses response_format; then plain text for the rest of the run.
        self.structured = True

    def describe(self, image: Image.Image, prompt: str) -> Answer:
        messages = [
            {"role": "system", "content": ANNOTATION_SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                ],
            },
        ]
        if not self.structured:
            return self._complete(messages, structured=False)
        try:
            return self._complete(messages, structured=True)
        except _SchemaRefused as refusal:
            # Remembered only once plain text gets through: a refusal of this image is no refusal of schemas.
            answer = self._complete(messages, structured=False)
            if self.structured:
                self.structured = False
                log.warning("annotate: the endpoint refused response_format (%s); parsing text answers", refusal)
            return answer

    def _complete(self, messages: list[dict], structured: bool) -> Answer:
        openai = self._openai
        extra = {"response_format": RESPONSE_FORMAT} if structured else {}
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature, **extra
            )
        except openai.APITimeoutError:
            raise TransientError(f"no answer within {self.timeout:g} s") from None
        except openai.APIConnectionError as error:
            raise TransientError(f"cannot reach {self.base_url} ({error.__cause__ or error})") from None
        except openai.APIStatusError as error:
            if structured and _refuses_schema(error):
                raise _SchemaRefused(_message(error)) from None
            raise self._status_error(error) from None
        except (openai.APIResponseValidationError, json.JSONDecodeError) as error:
            # A proxy's error page or a cut connection; the next try usually gets through.
            raise TransientError(f"malformed response from the endpoint ({error})") from None
        choice = response.choices[0] if response.choices else None
        text = choice.message.content if choice is not None and choice.message is not None else None
        if not isinstance(text, str) or not text.strip():
            reason = choice.finish_reason if choice is not None else "no choices"
            raise RequestFailed(f"the model returned no text (finish reason: {reason})")
        return Answer(text, truncated=choice.finish_reason == "length", structured=structured)

    def _status_error(self, error) -> Exception:
        status = error.status_code
        detail = _message(error)
        if status in (408, 409, 429) or status >= 500:
            return TransientError(f"HTTP {status}: {detail}", retry_after=_retry_after(error.response))
        if status in (401, 403):
            return UserError(
                f"{self.base_url} refused the API key (HTTP {status}); put a valid key in an environment "
                "variable and pass its name with --api-key-env."
            )
        if status == 404:
            return UserError(
                f"{self.base_url} has no chat completions for model {self.model!r} (HTTP 404); check --model "
                "and --base-url (it usually ends in /v1)."
            )
        if status == 413:
            return RequestFailed("the image is too large for the endpoint (HTTP 413); lower --max-image-side")
        return RequestFailed(f"the endpoint refused the request (HTTP {status}: {detail})")


class LocalVLMBackend:
    """Greedy generation with a VLM preset, hub id or folder through our adapter; no API.

    The name is checked at once; the model is loaded on the first image, so a run with
    nothing left to do never loads it.
    """

    max_workers = 1  # one model in memory; torch already uses every core

    def __init__(self, config: AnnotateConfig, adapter=None):
        from emovlm_kd.models.registry import resolve_vlm

        self.preset = resolve_vlm(config.model)
        self.adapter = adapter
        self.model = config.model
        self.max_tokens = config.max_tokens
        self.seed = config.seed

    def describe(self, image: Image.Image, prompt: str) -> Answer:
        if self.adapter is None:
            from emovlm_kd.models.registry import load_vlm

            self.adapter = load_vlm(self.preset, seed=self.seed)
        inputs = self.adapter.encode([image], [prompt])
        # Greedy decoding is deterministic, so an empty answer is kept (flagged), not retried.
        return Answer(self.adapter.generate(inputs, max_new_tokens=self.max_tokens)[0])


def make_backend(config: AnnotateConfig):
    """The backend the config names."""
    if config.backend == "local":
        return LocalVLMBackend(config)
    return OpenAICompatibleBackend(config)


def _refuses_schema(error) -> bool:
    # Servers without structured outputs answer 400 or 422, or name the field they reject.
    return error.status_code in (400, 422) or "response_format" in _message(error).lower()


def _message(error) -> str:
    return _short(getattr(error, "message", "") or str(error))


def _retry_after(response) -> float | None:
    headers = getattr(response, "headers", None) or {}
    for header, seconds in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[header]) * seconds
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
