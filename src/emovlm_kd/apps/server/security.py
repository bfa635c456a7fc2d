"""What keeps the server safe to expose: API key, body size limit, and SSRF-safe URL fetching."""

from __future__ import annotations

import hmac
import http.client
import ipaddress
import json
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable

from emovlm_kd.apps.server.errors import ApiError, error_body
from emovlm_kd.errors import UserError

# ---- API key --------------------------------------------------------------------------


def read_api_key(variable: str | None) -> str | None:
    """The key held by environment variable `variable` (None: no key is required)."""
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise UserError(f"environment variable {variable} is empty or not set; export the API key in it, or drop --api-key-env.")
    return key


def check_bearer(authorization: str | None, key: str) -> None:
    """Raise 401 unless the header is `Bearer <key>`; compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(
            401,
            "a valid API key is required; send the header 'Authorization: Bearer <key>'.",
            "invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


# ---- request body size ----------------------------------------------------------------


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(
            413,
            f"the request body is larger than the limit of {limit / 1024 / 1024:.3g} MB; send smaller or fewer images.",
            "body_too_large",
        )


class LimitBody:
    """ASGI middleware: refuses bodies above `max_bytes` from Content-Length, or while reading."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, BodyTooLarge(self.max_bytes))
            return
        received = 0

        async def receive_limited():
            # Chunked bodies carry no length; count them as they arrive.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, receive_limited, send)


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error_body(error.status, error.message, error.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- image URLs -----------------------------------------------------------------------


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for globally routable unicast addresses: never loopback, private, link-local
    (cloud metadata at 169.254.169.254), shared, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address checked beforehand, not to a second DNS lookup
    (which a rebinding DNS server could point at a private address)."""

    def __init__(self, host: str, port: int, address: str, timeout: float, tls: ssl.SSLContext | None):
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls = tls
        if tls is not None:
            self.default_port = 443  # so the Host header carries no ':443'

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.tls is not None:
            self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


def fetch_image_url(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    address_allowed: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool] = is_public_address,
) -> bytes:
    """The body of an http(s) URL, at most `max_bytes`, within about `timeout_s` seconds.

    Every address the host resolves to must pass `address_allowed`; redirects are not
    followed (their target would escape that check). Raises `ApiError` with the reason.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ApiError(400, f"image URL {url[:100]!r} is not an http(s) URL with a host; give http(s)://host/path.", "invalid_image_url")
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ApiError(400, f"the host of image URL {url[:100]!r} cannot be resolved; check the URL.", "invalid_image_url") from None
    addresses = sorted({info[4][0] for info in found})
    for address in addresses:
        if not address_allowed(ipaddress.ip_address(address.split("%")[0])):
            raise ApiError(
                400,
                f"image URL host {parts.hostname} resolves to {address}, a private, loopback or reserved address; "
                "only public addresses are fetched.",
                "forbidden_image_url",
            )
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    connection = _PinnedConnection(parts.hostname, port, addresses[0], timeout_s, tls)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    deadline = time.monotonic() + timeout_s
    try:
        connection.request("GET", path, headers={"User-Agent": "emovlm-kd", "Accept": "image/*"})
        response = connection.getresponse()
        if response.status != 200:
            hint = "redirects are not followed, give the final URL" if 300 <= response.status < 400 else "check the URL"
            raise ApiError(400, f"image URL answered HTTP {response.status}; {hint}.", "image_url_failed")
        declared = response.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _url_too_large(max_bytes)
        body = bytearray()
        while chunk := response.read(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise _url_too_large(max_bytes)
            # The socket timeout bounds each read; this bounds the whole download.
            if time.monotonic() > deadline:
                raise TimeoutError
        return bytes(body)
    except TimeoutError:
        raise ApiError(400, f"image URL did not answer within {timeout_s:g} s; use a faster host or send the image as a data URL.", "image_url_timeout") from None
    except (OSError, http.client.HTTPException) as error:
        raise ApiError(400, f"image URL cannot be fetched ({error}); check the URL or send the image as a data URL.", "image_url_failed") from None
    finally:
        connection.close()


def _url_too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the image at the URL is larger than the limit of {max_bytes / 1024 / 1024:.3g} MB; send a smaller image.", "image_url_too_large")
