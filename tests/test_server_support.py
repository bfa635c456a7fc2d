"""Shared by the server tests (no tests here): the trained model loaded once, a live server
on a free loopback port, and Debian's headless Chromium."""

import functools

from chromium import headless_chromium  # noqa: F401 - re-exported for the server tests

from emovlm_kd.apps.server.app import serve_in_thread as live_server  # noqa: F401 - re-exported for the server tests


@functools.cache
def sample_images(sample_root, count: int) -> list:
    """`count` test-split PNG files, cycling through the labels."""
    files = sorted((sample_root / "test").rglob("*.png"))
    return [files[(index * 7) % len(files)] for index in range(count)]
