"""For programs that start ``chextriev serve`` themselves (the demo, the benchmarks): a free
loopback port to give it, and waiting until its ``/api/v1/readyz`` answers 200.

Requests only; nothing of the server is imported.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from chextriev.errors import ChextrievError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_ready(base_url: str, process: subprocess.Popen, *, timeout: float = 180.0,
               log_path: Path | None = None, interval: float = 0.5) -> dict:
    """The ``/api/v1/readyz`` body of the server at ``base_url`` (``http://host:port``) once it
    answers 200, asked every ``interval`` seconds. Raises :class:`ChextrievError` when
    ``process`` exits first or ``timeout`` seconds pass, with the end of ``log_path`` (the
    server's output) when given."""
    import requests

    def failure(what: str) -> ChextrievError:
        tail = ""
        if log_path is not None and Path(log_path).is_file():
            tail = ":\n" + Path(log_path).read_text(errors="replace")[-2000:]
        return ChextrievError(f"the server at {base_url} {what}{tail}")

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise failure(f"exited with code {process.returncode}")
        try:
            response = requests.get(f"{base_url}/api/v1/readyz", timeout=2)
            if response.status_code == 200:
                return response.json()
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise failure(f"was not ready after {timeout:.0f} s")
