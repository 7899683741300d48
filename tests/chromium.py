"""How the tests, scripts/make_screenshots.py and benchmarks/bench_page.py start Debian's
headless Chromium (never a browser Playwright downloads) and open a page in it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server started next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def open_page(
    url: str, *, width: int = 1400, height: int = 1100, timeout_ms: int = 60_000, **options: Any
) -> Iterator[Any]:
    """A Playwright page of ``url`` in headless Chromium (closed on exit); every wait on it and
    every ``expect`` gives up after ``timeout_ms``. ``options`` go to ``browser.new_page``."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, **options)
            page.set_default_timeout(timeout_ms)
            expect.set_options(timeout=timeout_ms)
            page.goto(url, wait_until="load")
            yield page
        finally:
            browser.close()
