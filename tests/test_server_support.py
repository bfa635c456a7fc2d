"""Shared by the server tests (no tests here): the trained model loaded once, a live server
on a free loopback port, and Debian's headless Chromium."""

import contextlib
import functools
import socket
import threading
import time

from chromium import headless_chromium  # noqa: F401 - re-exported for the server tests


@functools.cache
def sample_images(sample_root, count: int) -> list:
    """`count` test-split PNG files, cycling through the labels."""
    files = sorted((sample_root / "test").rglob("*.png"))
    return [files[(index * 7) % len(files)] for index in range(count)]


@contextlib.contextmanager
def live_server(app):
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


