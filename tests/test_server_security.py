"""Image URL fetching (SSRF checks, limits) against a local HTTP server; no model needed."""

import contextlib
import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emovlm_kd.apps.server.errors import ApiError
from emovlm_kd.apps.server.security import fetch_image_url, is_public_address

PAYLOAD = b"\x89PNG pretend image bytes" * 100  # 2,500 bytes


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/image.png":
            self._answer(200, PAYLOAD)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/unsized":
            # No Content-Length: the size is only known while reading.
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD * 10)
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(2)
            self._answer(200, PAYLOAD)
        else:
            self._answer(404, b"missing")

    def _answer(self, status, body):
        # The client may have given up already (the slow case).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def anywhere(address) -> bool:
    return True


def refused(url: str, **limits) -> ApiError:
    settings = {"max_bytes": 10_000, "timeout_s": 5.0} | limits
    with pytest.raises(ApiError) as caught:
        fetch_image_url(url, **settings)
    assert caught.value.message.endswith(".")
    return caught.value


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.8", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ],
)
def test_only_public_unicast_addresses_pass(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_private_hosts_are_refused_before_any_connection(origin):
    assert refused(origin + "/image.png").code == "forbidden_image_url"
    port = origin.rsplit(":", 1)[1]
    assert refused(f"http://localhost:{port}/image.png").code == "forbidden_image_url"


def test_fetching_with_limits(origin):
    assert fetch_image_url(origin + "/image.png", max_bytes=10_000, timeout_s=5, address_allowed=anywhere) == PAYLOAD
    error = refused(origin + "/moved", address_allowed=anywhere)
    assert error.code == "image_url_failed" and "redirects are not followed" in error.message
    assert "HTTP 404" in refused(origin + "/nothing", address_allowed=anywhere).message
    assert refused(origin + "/image.png", max_bytes=1000, address_allowed=anywhere).status == 413
    assert refused(origin + "/unsized", max_bytes=10_000, address_allowed=anywhere).status == 413
    began = time.monotonic()
    assert refused(origin + "/slow", timeout_s=0.3, address_allowed=anywhere).code == "image_url_timeout"
    assert time.monotonic() - began < 1.5


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "http:///nohost", "http://example.com:99999/a.png", "gopher://x"])
def test_only_http_urls_with_a_host_are_fetched(url):
    assert refused(url).code == "invalid_image_url"
