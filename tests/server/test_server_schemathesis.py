"""Schemathesis against the project's own ``/api/v1/openapi.json``, served by a real server
(gunicorn, ``python -m server.cli``: conftest's ``module_server``) on 127.0.0.1 and a free port
over the tiny index.

Schemathesis's own runner (``python -m schemathesis.cli run``; its pytest plugin does not run
under this pytest) fuzzes every operation of the document in its four phases (the document's
examples, coverage: boundary values of every parameter, fuzzing in positive and negative mode,
stateful: chains of calls through the inferred links) and checks every response: no server
error, a status the document declares for that operation, the declared content type and
headers, a body valid against the declared response schema, 405 with ``Allow`` for
undeclared methods. The server's log must hold no traceback afterwards.

Left out: ``positive_data_acceptance`` (an image field of random bytes is rightly a 400) and
``negative_data_rejection`` (multipart cannot tell an empty array from an absent field, so it
reports schema-valid requests as accepted invalid ones; what it found that was real, repeated
fields, an empty ``style``, loose booleans, untyped JSON fields, was fixed).

Budget (fixed; README development notes): at most ``CHEXTRIEV_FUZZ_API_EXAMPLES`` (default 40)
examples per operation and phase, seed ``CHEXTRIEV_FUZZ_SEED`` (default 0: the same cases in
every CI run; change it to explore), 20 s per request, 300 s for the whole run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

EXAMPLES = int(os.environ.get("CHEXTRIEV_FUZZ_API_EXAMPLES", "40"))
SEED = int(os.environ.get("CHEXTRIEV_FUZZ_SEED", "0"))
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,unsupported_method,"
          "allow_header_conformance,missing_required_header")
MAX_SECONDS = 300


@pytest.mark.slow
def test_api_conforms_to_its_openapi_document(module_server, tmp_path, tmp_path_factory):
    pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e .[dev])")
    report = tmp_path / "report"
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{module_server}/api/v1/openapi.json",
               "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", str(SEED),
               "--workers", "1", "--request-timeout", "20", "--no-color", "--report", "json",
               "--report-dir", str(report)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=MAX_SECONDS + 60,
                          cwd=tmp_path)
    summary = json.loads(next(report.glob("*.json")).read_text())
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert not summary["failures"] and not summary["errors"], done.stdout[-6000:]
    assert summary["test_cases"]["generated"] >= 8 * 10, summary["test_cases"]  # real traffic
    logs = sorted(tmp_path_factory.getbasetemp().glob("module-server*/server-*.log"))
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert logs and "Traceback" not in text, text[-3000:]


def _raw(base: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes to the server; (status, headers, body) of its answer."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


@pytest.mark.slow
@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431),
    (b"NOT A REQUEST LINE\r\n\r\n", 400),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
])
def test_the_wsgi_servers_own_errors_are_json(module_server, request_bytes, status):
    got, headers, body = _raw(module_server, request_bytes)
    assert got == status and headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] and error["message"]
