"""A real server process (gunicorn via `python -m server.cli`, the code of `chextriev serve`) on
127.0.0.1 and a free port, queried over HTTP with requests: the API, the token, the refusal to
bind elsewhere without one, and the supervision: a worker killed under load is replaced with no
failed request beyond the one in flight, a hung worker is replaced, SIGHUP reloads the
configuration file without failing a request, a request past --timeout ends its worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from server_helpers import stop_server, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Bounds of every load loop here: at most this many requests, for at most this long.
LOAD_MAX_REQUESTS = 5_000
LOAD_MAX_SECONDS = 120.0


def worker_pids(master: int) -> set[int]:
    """The master's child processes (its workers), from /proc."""
    try:
        return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def newcomers(master: int, count: int, old: set[int], *, old_gone: bool = False) -> set[int]:
    """The master's workers that are not in ``old``, once it has ``count`` of them (and, with
    ``old_gone``, none of ``old`` is left); else empty."""
    pids = worker_pids(master)
    if len(pids) != count or (old_gone and pids & old):
        return set()
    return pids - old


def ready_pid(base: str) -> int | None:
    """The pid of the worker that answered ``/readyz`` on a fresh connection, when ready."""
    try:
        response = requests.get(f"{base}/api/v1/readyz", headers={"Connection": "close"}, timeout=10)
    except requests.RequestException:
        return None
    return response.json()["worker_pid"] if response.status_code == 200 else None


def answering_pids(base: str, wanted: set[int], seconds: float = 120) -> set[int]:
    """Ask ``/readyz`` until every pid in ``wanted`` has answered ready; returns who answered."""
    seen: set[int] = set()

    def all_seen():
        pid = ready_pid(base)
        if pid is not None:
            seen.add(pid)
        return wanted <= seen

    wait_for(all_seen, seconds, f"workers {sorted(wanted)} answering ready (seen {sorted(seen)})", 0.05)
    return seen


@dataclass
class Load:
    """By-id searches from one client thread, one after another, bounded in count and time."""

    base: str
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        session = requests.Session()
        deadline = time.monotonic() + LOAD_MAX_SECONDS
        while not self.stop.is_set() and len(self.outcomes) < LOAD_MAX_REQUESTS and time.monotonic() < deadline:
            try:
                response = session.post(f"{self.base}/api/v1/search/by-id/1", data={"k": "2"}, timeout=60)
                outcome = str(response.status_code)
            except requests.RequestException as error:
                outcome = type(error).__name__
            self.outcomes.append((time.monotonic(), outcome))

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: len(self.outcomes) >= 5, 60, "the load loop's first requests")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=90)

    def failures(self) -> list[str]:
        return [outcome for _, outcome in self.outcomes if outcome != "200"]

    def successes_after(self, moment: float) -> int:
        return sum(1 for at, outcome in self.outcomes if at > moment and outcome == "200")


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
    assert thumbnail.status_code == 200 and thumbnail.headers["Content-Type"] == "image/jpeg"  # as stored
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


def test_refuses_a_configuration_file_with_an_unknown_key(tiny_index, free_port, tmp_path):
    config = tmp_path / "chextriev.toml"
    config.write_text(f'index_dir = "{tiny_index.index_dir}"\nwrokers = 2\n')
    command = [sys.executable, "-m", "server.cli", "--config", str(config), "--checkpoint",
               str(tiny_index.checkpoint), "--port", str(free_port)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "'wrokers'" in result.stderr and "workers" in result.stderr and "graceful_timeout" in result.stderr


@pytest.mark.slow
def test_forked_workers_each_load_and_serve(serve_process, free_port):
    base, process = serve_process(free_port, "--workers", "2", "--threads", "2")
    workers = wait_for(lambda: len(worker_pids(process.pid)) == 2 and worker_pids(process.pid), 60, "two workers")
    # every worker loads before it accepts a connection: each one answers ready, none 503
    assert answering_pids(base, workers) == workers
    statuses = {requests.post(f"{base}/api/v1/search/by-id/1", data={"k": "2"}, timeout=60).status_code
                for _ in range(6)}
    assert statuses == {200}
    assert process.poll() is None


@pytest.mark.slow
def test_a_killed_worker_is_replaced_under_load_and_a_hung_one_too(serve_process, free_port):
    base, process = serve_process(free_port, "--workers", "2", "--threads", "2", "--timeout", "5")
    original = wait_for(lambda: len(worker_pids(process.pid)) == 2 and worker_pids(process.pid), 60, "two workers")
    answering_pids(base, original)
    victim, survivor = sorted(original)
    with Load(base) as load:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replaced = wait_for(lambda: newcomers(process.pid, 2, original), 60, "a replacement for the killed worker")
        (replacement,) = replaced
        answering_pids(base, {replacement})
        time.sleep(0.5)
    failures = load.failures()
    assert len(failures) <= 1, f"more failed requests than the one in flight: {failures}"
    assert load.successes_after(killed_at) > 0
    assert victim not in worker_pids(process.pid)

    # a hung worker (stopped: no heartbeat) is killed after --timeout and replaced too
    os.kill(survivor, signal.SIGSTOP)
    try:
        wait_for(lambda: survivor not in worker_pids(process.pid) and len(worker_pids(process.pid)) == 2, 60,
                 "the stopped worker replaced")
    finally:
        try:
            os.kill(survivor, signal.SIGCONT)
        except ProcessLookupError:
            pass
    answering_pids(base, worker_pids(process.pid))
    assert process.poll() is None


@pytest.mark.slow
def test_sighup_reloads_the_configuration_file_without_failing_a_request(serve_process, free_port, tmp_path):
    config = tmp_path / "chextriev.toml"
    config.write_text("workers = 1\nthreads = 2\n")
    base, process = serve_process(free_port, "--config", str(config))
    (first,) = wait_for(lambda: worker_pids(process.pid), 60, "the first worker")
    with Load(base) as load:
        config.write_text("workers = 2\nthreads = 2\n")
        process.send_signal(signal.SIGHUP)
        new = wait_for(lambda: newcomers(process.pid, 2, {first}, old_gone=True), 120,
                       "two new workers and the old one gone")
        reloaded_at = time.monotonic()
        assert answering_pids(base, new) == new
        time.sleep(0.3)
    assert load.failures() == [], "a request failed during the reload"
    assert load.successes_after(reloaded_at) > 0
    # a broken file on the next SIGHUP is logged, and the running workers keep serving
    config.write_text("workers = 'two'\n")
    process.send_signal(signal.SIGHUP)
    log = tmp_path / f"server-{free_port}.log"
    wait_for(lambda: "configuration not reloaded" in log.read_text(), 30, "the reload refusal in the log")
    assert "workers in" in log.read_text() and "must be an integer" in log.read_text()
    assert process.poll() is None and worker_pids(process.pid) == new
    assert ready_pid(base) in new


SLOW_APP_SERVER = textwrap.dedent("""
    import os, sys, time
    from server.serving import serve

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(60)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]

    settings = {"HOST": "127.0.0.1", "PORT": int(sys.argv[1]), "WORKERS": 1, "THREADS": 2, "TIMEOUT": 2,
                "GRACEFUL_TIMEOUT": 5}
    serve(lambda: settings, lambda values: app, preload=())
""")


@pytest.mark.slow
def test_a_request_past_the_timeout_ends_its_worker(free_port, tmp_path):
    """The threaded worker keeps heart-beating while a request thread is stuck; ours exits so
    that the master replaces it (a plain WSGI app stands in for a stuck model call)."""
    log_path = tmp_path / "slow-server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-c", SLOW_APP_SERVER, str(free_port)], cwd=REPO_ROOT,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{free_port}"
    try:
        def pid():
            try:
                return int(requests.get(f"{base}/", headers={"Connection": "close"}, timeout=5).text)
            except requests.RequestException:
                return None

        first = wait_for(pid, 60, "the slow-app server answering")
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/slow", timeout=50)
        assert time.monotonic() - started < 20
        second = wait_for(lambda: (value := pid()) != first and value, 30, "a replacement worker")
        assert second != first and process.poll() is None
        assert "over the 2 s timeout" in log_path.read_text()
    finally:
        stop_server(process)
