"""Reading requests: JSON bodies, multipart uploads, base64 and data-URL images, chat messages.

Every way a request can be malformed ends in an `ApiError` (4xx) whose message says what
to send instead; nothing a client sends reaches the model unchecked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from emovlm_kd.apps.server.config import ServerConfig
from emovlm_kd.apps.server.errors import ApiError
from emovlm_kd.apps.server.security import fetch_image_url
from emovlm_kd.images import ImageError, load_image
from emovlm_kd.run_folder import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE

_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json_object(request: Request) -> dict:
    """The body as a JSON object; 415 for another content type, 400 for malformed JSON."""
    kind = content_type(request)
    if kind != "application/json":
        raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json' (got {kind or 'no content type'}).", "unsupported_media_type")
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError as error:
        raise ApiError(400, f"the request body is not valid JSON ({error}); send one JSON object.", "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not a JSON {type(data).__name__}.", "invalid_json")
    return data


def parse_flag(value, where: str) -> bool:
    """A JSON boolean, or a form/query word such as true, false, 1, 0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise ApiError(400, f"{where} must be true or false, not {str(value)[:40]!r}.", "invalid_parameter")


def decode_base64(reference: str, where: str) -> bytes:
    """Bytes of base64 text or of a `data:<type>;base64,<data>` URL (URL-safe alphabet and
    missing padding are accepted)."""
    text = reference.strip()
    if text[:5].lower() == "data:":
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ApiError(400, f"{where} is a data URL without base64 data; write it as data:image/png;base64,<data>.", "invalid_data_url")
    text = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            f"{where} is not valid base64; send the image file's bytes base64-encoded, or a data URL (data:image/png;base64,...).",
            "invalid_base64",
        ) from None


class ImageReader:
    """Turns what a request carries (bytes, base64, data URLs, http(s) URLs when allowed)
    into RGB images; decoding runs in threads so the event loop stays free."""

    def __init__(self, config: ServerConfig):
        self.config = config

    async def decode(self, data: bytes, where: str) -> Image.Image:
        try:
            return await asyncio.to_thread(
                load_image, data, max_pixels=self.config.max_image_pixels, min_side=MIN_IMAGE_SIDE, max_aspect_ratio=MAX_ASPECT_RATIO
            )
        except ImageError as error:
            raise ApiError(400, f"{where}: {error}", "invalid_image") from None

    async def read_reference(self, reference, where: str) -> Image.Image:
        if not isinstance(reference, str) or not reference.strip():
            raise ApiError(400, f"{where} must be a non-empty string: base64 image data or a data URL.", "invalid_image")
        if reference.lstrip()[:8].lower().startswith(("http://", "https://")):
            if not self.config.allow_url_images:
                raise ApiError(
                    400,
                    f"{where} is an http(s) URL, and image URLs are off on this server; send the image as a data URL "
                    "(data:image/png;base64,...), or start the server with --allow-url-images.",
                    "url_images_disabled",
                )
            data = await asyncio.to_thread(
                fetch_image_url, reference.strip(), max_bytes=self.config.url_max_bytes, timeout_s=self.config.url_timeout_s
            )
        else:
            data = decode_base64(reference, where)
        return await self.decode(data, where)


# ---- /v1/classify ---------------------------------------------------------------------


@dataclass
class ClassifyRequest:
    names: list[str]
    images: list[Image.Image]
    explain: bool
    # Several images were sent (`files` or `images`): the answer is a list.
    batch: bool


async def read_classify_request(request: Request, reader: ImageReader) -> ClassifyRequest:
    """A multipart upload (`file`, or several `files`) or JSON (`image`, or several `images`)."""
    kind = content_type(request)
    explain = request.query_params.get("explain", "false")
    if kind == "multipart/form-data":
        return await _read_classify_form(request, reader, explain)
    if kind == "application/json":
        return await _read_classify_json(request, reader, explain)
    raise ApiError(
        415,
        f"send multipart/form-data with a 'file' field, or application/json with a base64 'image' (got {kind or 'no content type'}).",
        "unsupported_media_type",
    )


async def _read_classify_form(request: Request, reader: ImageReader, explain: str) -> ClassifyRequest:
    limit = reader.config.max_images
    async with request.form(max_files=limit, max_fields=8) as form:
        single, several = form.getlist("file"), form.getlist("files")
        if single and several:
            raise ApiError(400, "send either one image in 'file' or several in 'files', not both.", "invalid_parameter")
        if len(single) > 1:
            raise ApiError(400, "the field 'file' holds one image; send several images in 'files'.", "invalid_parameter")
        uploads = [(field, upload) for field, upload in form.multi_items() if field in ("file", "files")]
        if not uploads:
            raise ApiError(400, "no image was sent; put it in a multipart field named 'file' (or several in 'files').", "missing_image")
        names, blobs = [], []
        for field, upload in uploads:
            if not isinstance(upload, UploadFile):
                raise ApiError(400, f"the field '{field}' holds text; it must be a file upload (the image file itself).", "invalid_image")
            names.append(upload.filename or field)
            blobs.append(await upload.read())
        explain_flag = parse_flag(form.get("explain", explain), "explain")
    images = await asyncio.gather(*(reader.decode(blob, f"file {name!r}") for name, blob in zip(names, blobs)))
    return ClassifyRequest(names, list(images), explain_flag, batch=bool(several))


async def _read_classify_json(request: Request, reader: ImageReader, explain: str) -> ClassifyRequest:
    data = await read_json_object(request)
    if "image" in data and "images" in data:
        raise ApiError(400, "send either one image in 'image' or several in 'images', not both.", "invalid_parameter")
    if "images" in data:
        references = data["images"]
        limit = reader.config.max_images
        if not isinstance(references, list) or not references:
            raise ApiError(400, "'images' must be a non-empty list of base64 images.", "invalid_parameter")
        if len(references) > limit:
            raise ApiError(400, f"{len(references)} images sent; at most {limit} are accepted per request, so split the batch.", "too_many_images")
        names = [f"images[{index}]" for index in range(len(references))]
    elif "image" in data:
        references, names = [data["image"]], ["image"]
    else:
        raise ApiError(400, 'no image was sent; send {"image": "<base64>"} or {"images": ["<base64>", ...]}.', "missing_image")
    explain_flag = parse_flag(data.get("explain", explain), "explain")
    images = await asyncio.gather(*(reader.read_reference(ref, name) for ref, name in zip(references, names)))
    return ClassifyRequest(names, list(images), explain_flag, batch="images" in data)


# ---- /v1/chat/completions -------------------------------------------------------------


@dataclass
class ChatRequest:
    prompt: str
    image_reference: str
    max_tokens: int
    stream: bool


def read_chat_request(data: dict, model_id: str, max_tokens_limit: int) -> ChatRequest:
    """The prompt (the last user message's text) and the one image of a chat request.

    The tuned VLM reads one image and one question under its own system prompt, so the
    conversation must hold exactly one image; system and earlier turns are not shown to it.
    """
    model = data.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"model {str(model)[:80]!r} is not served here; use {model_id!r} (see GET /v1/models).", "model_not_found")
    if data.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: answers are greedy, so every choice would be the same.", "invalid_parameter")
    if data.get("tools") or data.get("functions"):
        raise ApiError(400, "tools and functions are not supported by this model; send plain messages.", "invalid_parameter")
    stream = parse_flag(data.get("stream", False), "stream")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is None:
        max_tokens = max_tokens_limit
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a whole number of at least 1, not {str(max_tokens)[:40]}.", "invalid_parameter")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.", "invalid_parameter")
    images, prompt = [], None
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _CHAT_ROLES:
            raise ApiError(400, f"{where} must be an object with a role ({', '.join(_CHAT_ROLES)}) and content.", "invalid_parameter")
        texts = _message_parts(message.get("content"), where, images)
        if message["role"] == "user":
            prompt = "\n".join(texts).strip()
    if not prompt:
        raise ApiError(400, "the last user message has no text; ask a question about the image.", "invalid_parameter")
    if len(images) != 1:
        raise ApiError(
            400,
            f"the conversation holds {len(images)} images; this model reads exactly one, sent as an image_url content part.",
            "invalid_image_count",
        )
    # Clients often send a generic large max_tokens; above the server's cap it is lowered,
    # and a completion cut there ends with finish_reason "length".
    return ChatRequest(prompt, images[0], min(max_tokens, max_tokens_limit), stream)


def _message_parts(content, where: str, images: list[str]) -> list[str]:
    """Texts of a message's content; its image URLs are appended to `images`."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of content parts.", "invalid_parameter")
    texts = []
    for number, part in enumerate(content):
        part_where = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise ApiError(400, f"{part_where}.image_url must be {{\"url\": \"data:image/png;base64,...\"}}.", "invalid_parameter")
            images.append(url)
        else:
            raise ApiError(400, f"{part_where} must be a text or image_url part (type {str(kind)[:40]!r} is not supported).", "invalid_parameter")
    return texts
