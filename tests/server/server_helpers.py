"""Helpers of the server tests that test modules import by name (``from server_helpers import``;
a module named ``conftest`` is ambiguous when several test folders run in one session)."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_subcommand(module, argv: list[str]) -> int:
    """Parse ``argv`` with ``module.register`` and run the handler it sets (as `chextriev` does)."""
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def unused_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM (graceful), then SIGKILL after 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], object], seconds: float, what: str, interval: float = 0.2):
    """Poll ``condition`` until it is truthy (returns it) or ``seconds`` pass (fails, saying ``what``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


class BackgroundLoop:
    """``self._run()`` in a daemon thread while a ``with`` block lasts; ``self._stop`` is set
    at its end (the loop checks it), and the thread is joined."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:  # pragma: no cover - subclasses define the loop
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)


def serve_until_ready(arguments: list[str], log_path: Path, seconds: float = 120) -> tuple[str, subprocess.Popen]:
    """Start ``python -m server.cli ARGUMENTS --port P`` (the code of ``chextriev serve``) on a free
    loopback port, logging to ``log_path``; ``(base URL, process)`` once ``/readyz`` answers 200
    (fails with the log's tail if it exits first or is not ready in ``seconds``)."""
    import sys

    import requests

    port = unused_port()
    with open(log_path, "wb") as log_file:  # the child keeps its own handle
        process = subprocess.Popen([sys.executable, "-m", "server.cli", *arguments, "--port", str(port)],
                                   cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready():
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            return requests.get(f"{base}/api/v1/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, seconds, "the server answers ready")
    except BaseException:
        stop_server(process)
        raise
    return base, process


@contextlib.contextmanager
def viewer_page(base: str) -> Iterator[tuple[object, Callable, list[str]]]:
    """The viewer at ``base`` open in Debian's headless Chromium (Playwright), the server ready:
    ``(page, expect, errors)``, ``errors`` collecting console errors and page errors. Skips
    without ``/usr/bin/chromium`` or Playwright (fails instead with CHEXTRIEV_REQUIRE_BROWSER=1)."""
    import pytest

    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CHEXTRIEV_REQUIRE_BROWSER") == "1":
            pytest.fail("CHEXTRIEV_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("/usr/bin/chromium not found: install Debian's chromium package to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/")
            sync_api.expect(page.locator("#status")).to_contain_text("ready", timeout=60_000)
            yield page, sync_api.expect, errors
        finally:
            browser.close()
