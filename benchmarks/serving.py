#!/usr/bin/env python
"""How fast the supervised server replaces a killed worker, and what a client sees meanwhile.

Serves an index with the production server (gunicorn, `server.serving.serve`, as `chextriev
serve`) on 127.0.0.1, runs one client thread of by-id searches (bounded in count and time),
kills a worker with SIGKILL ``--kills`` times, and reports per kill the seconds until a
replacement worker answered `/readyz` and how many requests failed. With ``--compare-preload``
it does this twice, interleaved, with and without the master importing the libraries before it
forks (``PRELOADED_MODULES``), and prints the ratio of the median replacement times::

    python -m benchmarks serving --checkpoint best.ckpt --index-dir index --kills 5 --compare-preload
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

MAX_KILLS = 20
MAX_REQUESTS = 100_000
MAX_SECONDS = 900


def _workers(master: int) -> set[int]:
    try:
        return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def _newcomer(master: int, count: int, before: set[int]) -> set[int]:
    """The new worker once the master has ``count`` again, else empty."""
    pids = _workers(master)
    return pids - before if len(pids) == count else set()


def _ready_pid(base: str) -> int | None:
    try:
        response = requests.get(f"{base}/api/v1/readyz", headers={"Connection": "close"}, timeout=10)
    except requests.RequestException:
        return None
    return response.json().get("worker_pid") if response.status_code == 200 else None


def _wait(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"gave up after {seconds:.0f} s")


def measure(args: argparse.Namespace, preload: bool) -> dict:
    """Start a server, kill a worker ``args.kills`` times under load; the figures."""
    from server.config import resolve_config
    from server.readiness import free_port
    from server.serving import PRELOADED_MODULES, serve

    port = free_port()
    settings = resolve_config({"CHECKPOINT": str(args.checkpoint), "INDEX_DIR": str(args.index_dir),
                               "DB_URL": args.db, "PORT": port, "WORKERS": args.workers, "THREADS": 2,
                               "TORCH_THREADS": 1, "CONFIG_FILE": None, "LOAD": "sync"})
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(lambda: settings,),
        kwargs={"settings": settings, "preload": PRELOADED_MODULES if preload else ()}, daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: len(_workers(server.pid)) == args.workers and _ready_pid(base), 300)
        outcomes: list[str] = []
        stop = threading.Event()

        def load():
            session = requests.Session()
            deadline = time.monotonic() + MAX_SECONDS
            while not stop.is_set() and len(outcomes) < MAX_REQUESTS and time.monotonic() < deadline:
                try:
                    status = session.post(f"{base}/api/v1/search/by-id/{args.image_id}", data={"k": "5"},
                                          timeout=60).status_code
                    outcomes.append(str(status))
                except requests.RequestException as error:
                    outcomes.append(type(error).__name__)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        replacement_s, failures = [], []
        for _ in range(args.kills):
            time.sleep(1.0)
            before = _workers(server.pid)
            failed_before = sum(outcome != "200" for outcome in outcomes)
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            (pid,) = _wait(lambda before=before: _newcomer(server.pid, args.workers, before), 300)
            _wait(lambda pid=pid: _ready_pid(base) == pid, 300)
            replacement_s.append(time.monotonic() - killed)
            time.sleep(0.5)
            failures.append(sum(outcome != "200" for outcome in outcomes) - failed_before)
        stop.set()
        thread.join(timeout=90)
        return {"preload": preload, "kills": args.kills, "replacement_s": [round(s, 2) for s in replacement_s],
                "median_replacement_s": round(statistics.median(replacement_s), 2),
                "failed_requests_per_kill": failures, "requests": len(outcomes)}
    finally:
        server.terminate()
        server.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint the index was built with")
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--db", default=None, help="catalog URL (default sqlite:///INDEX_DIR/catalog.sqlite)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--kills", type=int, default=5, help=f"workers to kill, 1..{MAX_KILLS} (default 5)")
    parser.add_argument("--image-id", type=int, default=1, help="the archived image the client searches with")
    parser.add_argument("--compare-preload", action="store_true",
                        help="also without preloading the libraries, interleaved; print the ratio")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.kills <= MAX_KILLS or args.workers < 2:
        raise SystemExit(f"--kills must be 1..{MAX_KILLS} and --workers at least 2")
    runs = [measure(args, True)]
    if args.compare_preload:
        runs.append(measure(args, False))
        runs.append(measure(args, True))
    if args.json:
        print(json.dumps(runs))
    for run in runs:
        print(f"preload={run['preload']}: replacement answered ready after {run['replacement_s']} s "
              f"(median {run['median_replacement_s']} s); failed requests per kill {run['failed_requests_per_kill']} "
              f"of {run['requests']}")
    if args.compare_preload:
        with_preload = statistics.median([s for run in runs if run["preload"] for s in run["replacement_s"]])
        without = runs[1]["median_replacement_s"]
        print(f"median replacement: {with_preload:.2f} s with preload vs {without:.2f} s without: "
              f"{without / with_preload:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
