"""Helpers of the server tests that test modules import by name (``from server_helpers import``;
a module named ``conftest`` is ambiguous when several test folders run in one session)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import threading
import time
from collections.abc import Callable
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
