"""A real server process (waitress via `python -m server.cli`, the code of `chextriev serve`) on
127.0.0.1 and a free port, queried over HTTP with requests; the refusal to bind elsewhere
without a token; and forked workers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests


def test_real_server_answers_over_http(serve_process, free_port, query_png):
    base, process = serve_process(free_port)
    ready = requests.get(f"{base}/api/v1/readyz", timeout=10).json()
    assert ready["ready"] and ready["index_size"] > 0
    with open(query_png, "rb") as handle:
        response = requests.post(f"{base}/api/v1/search", files={"image": ("q.png", handle)}, data={"k": "3"},
                                 timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and results[0]["image_id"] == query_png.stem
    thumbnail = requests.get(f"{base}{results[1]['thumbnail_url']}", timeout=10)
    assert thumbnail.status_code == 200 and thumbnail.headers["Content-Type"] == "image/png"
    by_id = requests.post(f"{base}/api/v1/search/by-id/{results[1]['id']}", data={"k": "2"}, timeout=30)
    assert by_id.status_code == 200 and results[1]["id"] not in [r["id"] for r in by_id.json()["results"]]
    assert requests.post(f"{base}/api/v1/search", data={"k": "500"}, timeout=10).status_code == 400
    page = requests.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "CheXtriev" in page.text
    assert process.poll() is None


def test_token_server_on_loopback(serve_process, free_port, tmp_path, token):
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    base, _ = serve_process(free_port, "--token-file", str(token_file), token=token)
    assert requests.get(f"{base}/api/v1/readyz", timeout=10).status_code == 401
    good = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{base}/api/v1/readyz", headers=good, timeout=10).status_code == 200


def test_refuses_non_loopback_without_token(tiny_index, free_port):
    command = [sys.executable, "-m", "server.cli", "--checkpoint", str(tiny_index.checkpoint), "--db",
               tiny_index.db_url, "--index-dir", str(tiny_index.index_dir), "--host", "0.0.0.0",
               "--port", str(free_port)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "without a bearer token" in result.stderr


@pytest.mark.slow
def test_forked_workers_each_load_and_serve(serve_process, free_port):
    base, process = serve_process(free_port, "--workers", "2", "--threads", "2")
    # serve_process returns once one worker is ready; the other may still be loading (503 with
    # Retry-After, as it should): wait until both have answered ready
    ready_workers: set[int] = set()
    deadline = time.monotonic() + 120
    while len(ready_workers) < 2 and time.monotonic() < deadline:
        response = requests.get(f"{base}/api/v1/readyz", timeout=10)
        if response.status_code == 200:
            ready_workers.add(response.json()["worker_pid"])
        time.sleep(0.05)
    assert len(ready_workers) == 2, f"ready workers after 120 s: {ready_workers}"
    statuses = {requests.post(f"{base}/api/v1/search/by-id/1", data={"k": "2"}, timeout=60).status_code
                for _ in range(6)}
    assert statuses == {200}
    assert process.poll() is None
