"""`server.readiness`: what the demo and the benchmarks wait on when they start a server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chextriev.errors import ChextrievError
from server.readiness import free_port, wait_ready

READY_AFTER_A_WHILE = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
time.sleep(1)  # not listening yet: the waiter's first requests are refused
class Ready(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"ready": self.path == "/api/v1/readyz"}).encode()
        self.send_response(200 if self.path == "/api/v1/readyz" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready).serve_forever()
"""


def _process(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args])


def test_waits_for_readyz_and_returns_its_body():
    port = free_port()
    process = _process(READY_AFTER_A_WHILE, str(port))
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", process, timeout=30) == {"ready": True}
    finally:
        process.kill()
        process.wait()


def test_a_server_that_exits_or_never_answers(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("Traceback ...\nOSError: the index folder is missing\n")
    process = _process("import sys; sys.exit(3)")
    with pytest.raises(ChextrievError, match=r"(?s)exited with code 3:\n.*the index folder is missing"):
        wait_ready(f"http://127.0.0.1:{free_port()}", process, timeout=30, log_path=log)
    process = _process("import time; time.sleep(30)")
    try:
        with pytest.raises(ChextrievError, match="was not ready after 1 s"):
            wait_ready(f"http://127.0.0.1:{free_port()}", process, timeout=1)
    finally:
        process.kill()
        process.wait()
