"""Every error the server answers is one JSON object in OpenAI's shape, with one sentence.

`{"error": {"message": ..., "type": ..., "code": ...}}`: the official `openai` client reads
its message, and a person reading the response body learns what to change.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

_TYPES = {401: "authentication_error", 404: "not_found_error", 503: "overloaded_error"}


class ApiError(Exception):
    """A request the server refuses or cannot answer; becomes a JSON error response."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, code: str) -> dict:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.message, error.code), error.status, headers=error.headers)
