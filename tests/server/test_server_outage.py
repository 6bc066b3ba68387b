"""A running two-worker server (``chextriev serve``, gunicorn) whose PostgreSQL catalog is
restarted, stopped and started under it: no 500 at any point, 503 with ``Retry-After`` and a
message naming the catalog database (never its password) while it is down, ``/readyz`` not
ready meanwhile, and answers again without a restart of the server. The database is a
PostgreSQL server of this test alone (127.0.0.1); every loop is bounded."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from postgres_fixtures import pg_ctl
from server_helpers import BackgroundLoop, run_subcommand, serve_until_ready, stop_server, wait_for

PASSWORD = "pg-password-never-shown"


class Probe(BackgroundLoop):
    """Searches by id, reads the image's metadata and ``/readyz`` from a thread, each on a new
    connection (so that both workers answer), recording ``(time sent, route, status, body,
    Retry-After)``."""

    def __init__(self, base: str, query_id: int):
        super().__init__()
        self.base, self.query_id = base, query_id
        self.seen: list[tuple[float, str, int, dict, str | None]] = []
        self.ready_pids: dict[int, float] = {}  # worker pid -> last time it said ready
        self.failures: list[str] = []
        self._go = threading.Event()  # cleared: the probe idles (between two rounds)
        self._go.set()
        self._idle = threading.Event()

    def _record(self, route: str, sent: float, response: requests.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:300]}
        self.seen.append((sent, route, response.status_code, body,
                          response.headers.get("Retry-After")))
        if route == "readyz" and response.status_code == 200:
            self.ready_pids[body["worker_pid"]] = sent

    def _run(self):
        deadline = time.monotonic() + 400  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not self._go.is_set():
                self._idle.set()
                self._go.wait(timeout=1)
                continue
            self._idle.clear()
            try:
                for route, call in (
                        ("search", lambda: requests.post(
                            f"{self.base}/api/v1/search/by-id/{self.query_id}", data={"k": "5"},
                            timeout=30)),
                        ("image", lambda: requests.get(
                            f"{self.base}/api/v1/images/{self.query_id}", timeout=30)),
                        ("readyz", lambda: requests.get(f"{self.base}/api/v1/readyz", timeout=30))):
                    sent = time.monotonic()
                    self._record(route, sent, call())
            except requests.RequestException as error:
                self.failures.append(repr(error))
            time.sleep(0.05)

    def pause(self) -> None:
        """Stop sending (returns once the round in flight is answered)."""
        self._go.clear()
        assert self._idle.wait(timeout=120)

    def resume(self) -> None:
        self._go.set()

    def since(self, moment: float) -> list[tuple]:
        """The requests sent at ``moment`` or later."""
        return [s for s in self.seen if s[0] >= moment]


@pytest.mark.slow
def test_a_running_server_rides_out_a_postgres_restart_and_outage(tiny_index, own_postgres,
                                                                   tmp_path):
    from indexer import cli as index_cli

    server, options = own_postgres
    database = "outage_catalog"
    url = server.create_database(database).replace(f"{server.user}@",
                                                   f"{server.user}:{PASSWORD}@")
    index_dir = tmp_path / "index"
    assert run_subcommand(index_cli, ["index", "--data", str(tiny_index.archive), "--checkpoint",
                                      str(tiny_index.checkpoint), "--index-dir", str(index_dir),
                                      "--db", url, "--workers", "0", "--device", "cpu",
                                      "--no-progress"]) == 0
    from indexer.catalog import Catalog

    catalog = Catalog.open(url, index_dir)
    query = int(catalog.index.ids[0])
    catalog.close()
    log_path = tmp_path / "server.log"
    base, process = serve_until_ready(["--index-dir", str(index_dir), "--db", url, "--workers",
                                       "2", "--threads", "2"], log_path, 180)
    try:
        with Probe(base, query) as probe:
            wait_for(lambda: len(probe.ready_pids) == 2, 60, "both workers answered")
            time.sleep(1)  # both workers hold pooled connections now
            # 1. restarts: every pooled connection dies; the next requests are answered, first
            # with the server idle during the restart (its pools hold only dead connections),
            # then under load (requests during the restart itself may get 503, never 500)
            for idle in (True, False):
                if idle:
                    probe.pause()
                pg_ctl(server, options, "restart")
                restarted = time.monotonic()
                probe.resume()
                wait_for(lambda since=restarted: {p for p, t in probe.ready_pids.items()
                                                   if t > since} == set(probe.ready_pids)
                         and len(probe.since(since)) >= 30, 60, "both workers after the restart")
                after_restart = probe.since(restarted)
                assert all(s[2] == 200 for s in after_restart), (idle, _codes(after_restart))
            # 2. an outage: 503 naming the database, Retry-After, readyz not ready
            pg_ctl(server, options, "stop")
            stopped = time.monotonic()
            wait_for(lambda: {s[1] for s in probe.since(stopped) if s[2] == 503} ==
                     {"search", "image", "readyz"} and len(probe.since(stopped)) >= 30, 60,
                     "503 on every route while the database is down")
            down = probe.since(stopped)
            assert all(s[2] == 503 for s in down), _codes(down)
            for _, route, _, body, retry_after in down:
                assert retry_after is not None and int(retry_after) > 0
                message = body["error"]["message"] if route != "readyz" else body["error"]
                assert f'database "{database}" on 127.0.0.1:{server.port}' in message, message
                assert PASSWORD not in str(body)
                if route != "readyz":
                    assert body["error"]["code"] == "catalog_unavailable"
                else:
                    assert body["ready"] is False
            # 3. the database is back: both workers answer again, the server was not restarted
            pg_ctl(server, options, "start")
            started = time.monotonic()
            wait_for(lambda: {p for p, t in probe.ready_pids.items() if t > started} ==
                     set(probe.ready_pids) and len([s for s in probe.since(started)
                                                     if s[2] == 200]) >= 30, 60,
                     "both workers after the database came back")
            back = probe.since(started)
            first_ok = next(i for i, s in enumerate(back) if s[2] == 200)
            assert all(s[2] == 200 for s in back[first_ok:]), _codes(back[first_ok:])
        assert not probe.failures, probe.failures[:3]
        assert all(s[2] in (200, 503) for s in probe.seen), _codes(probe.seen)
        assert process.poll() is None  # the same server throughout
        log = log_path.read_text()
        assert "Traceback" not in log and PASSWORD not in log, log[-3000:]
    finally:
        stop_server(process)


def _codes(seen: list[tuple]) -> list[tuple[str, int, str]]:
    return [(s[1], s[2], str(s[3])[:200]) for s in seen if s[2] != 200][:5] or \
        [(s[1], s[2], "") for s in seen[:5]]
