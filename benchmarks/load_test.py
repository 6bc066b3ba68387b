#!/usr/bin/env python
"""Load test of a running CheXtriev server on this machine (loopback only).

N client threads send requests for T seconds (both bounded) and the script reports requests/s,
p50, p99 and errors:

* ``--mode by-id``: ``POST /api/v1/search/by-id/<id>`` with ids drawn from ``--id-pool`` indexed
  images (found first through ``GET /api/v1/images/<id>``);
* ``--mode upload``: ``POST /api/v1/search`` with the image files given by ``--images``.

Example::

    python -m benchmarks load_test --url http://127.0.0.1:8000 --mode by-id --clients 8 --seconds 30
    python -m benchmarks load_test --url http://127.0.0.1:8000 --mode upload --images q1.png q2.png \\
        --clients 1 --seconds 30

Or let the script serve an index itself (the production gunicorn server in a child process, on
127.0.0.1 and a free port),
optionally padding the Faiss index with ``--pad-random N`` random L2-normalised vectors to measure
search latency at a larger size (the padding ids are not in the database, so they cost search
time but never appear in results; ``index_size`` still counts the real images only)::

    python -m benchmarks load_test --checkpoint best.ckpt --index-dir index --pad-random 100000 \
        --mode by-id --clients 8 --seconds 30

Upload search in fp32 and bf16, A/B in one run (``--compare-precision``): the index is served twice
in this process, once per precision, and one client alternates requests between the two; it
prints p50/p90 per precision, their ratio, and the median ``timing_ms`` of every stage of the
response (decode, boxes, model, search, response, total; ``http`` = client time - total)::

    python -m benchmarks load_test --checkpoint best.ckpt --index-dir index --mode upload \
        --images q1.png q2.png --seconds 60 --compare-precision

``--compare-compile`` does the same for the trunk eager and compiled (``--compile``), both in
``--precision``.

The server must be ready (``/api/v1/readyz`` 200). Non-loopback hosts are refused: this tool must
not be pointed at someone else's server.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import requests

log = logging.getLogger("load_test")

MAX_CLIENTS = 64
MAX_SECONDS = 600


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(seconds)
            else:
                self.errors += 1
                self.error_kinds[error] = self.error_kinds.get(error, 0) + 1


def require_loopback(url: str) -> str:
    """The URL without a trailing slash; raises SystemExit unless its host is loopback."""
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to load-test {host!r}: only loopback hosts (127.0.0.1, ::1, localhost)")
    return url.rstrip("/")


def _client(base: str, mode: str, deadline: float, tally: Tally, ids: list[int], images: list[bytes],
            k: int, headers: dict[str, str], seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    session.headers.update(headers)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        error = None
        try:
            if mode == "by-id":
                response = session.post(f"{base}/api/v1/search/by-id/{rng.choice(ids)}", data={"k": k}, timeout=30)
            else:
                response = session.post(f"{base}/api/v1/search", data={"k": k},
                                        files={"image": ("query", rng.choice(images))}, timeout=60)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        tally.record(time.perf_counter() - started, error)


def run_load(base: str, *, mode: str, clients: int, seconds: float, ids: list[int] | None = None,
             images: list[bytes] | None = None, k: int = 10, token: str | None = None, seed: int = 0) -> dict:
    """Run the load and return ``{requests, errors, requests_per_s, p50_ms, p90_ms, p99_ms, ...}``."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise SystemExit(f"--clients must be 1..{MAX_CLIENTS}")
    if not 0 < seconds <= MAX_SECONDS:
        raise SystemExit(f"--seconds must be in (0, {MAX_SECONDS}]")
    if mode == "by-id" and not ids:
        raise SystemExit("by-id mode needs ids")
    if mode == "upload" and not images:
        raise SystemExit("upload mode needs --images")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=_client, args=(base, mode, deadline, tally, ids or [], images or [], k,
                                                      headers, seed + i), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 90)
    elapsed = time.monotonic() - started
    latencies = np.array(tally.latencies) * 1000
    done = len(latencies) + tally.errors
    summary = {"mode": mode, "clients": clients, "seconds": round(elapsed, 1), "k": k, "requests": done,
               "errors": tally.errors, "error_kinds": tally.error_kinds,
               "requests_per_s": round(len(latencies) / elapsed, 1)}
    for q in (50, 90, 99):
        summary[f"p{q}_ms"] = round(float(np.percentile(latencies, q)), 1) if len(latencies) else None
    summary["mean_ms"] = round(float(latencies.mean()), 1) if len(latencies) else None
    return summary


def discover_ids(base: str, headers: dict[str, str], index_size: int, want: int = 500) -> list[int]:
    """Up to ``want`` searchable ids, found by probing ``GET /images/<id>`` from 1 upwards
    (database ids need not be contiguous: skipped images have rows too)."""
    session = requests.Session()
    session.headers.update(headers)
    found: list[int] = []
    for image_id in range(1, 2 * index_size + 50):
        if len(found) >= min(want, index_size):
            break
        if session.get(f"{base}/api/v1/images/{image_id}", timeout=10).status_code == 200:
            found.append(image_id)
    return found


def pad_index(catalog, pad_random: int, index_type: str) -> None:
    """Rebuild ``catalog``'s Faiss index with its real vectors plus ``pad_random`` random
    L2-normalised ones, as ``index_type`` (``auto`` = what the indexer builds at that size)."""
    import dataclasses

    from indexer.vector_index import VectorIndex

    index = catalog.index
    rng = np.random.default_rng(0)
    pad_ids = np.arange(pad_random, dtype=np.int64) + int(index.ids.max()) + 1_000_000_000
    vectors = np.concatenate([catalog.vectors(index.ids),
                              rng.standard_normal((pad_random, index.dim)).astype(np.float32)])
    started = time.perf_counter()
    padded = VectorIndex.build(np.concatenate([index.ids, pad_ids]), vectors, index_type=index_type,
                               nprobe=index.nprobe)
    padded.manifest = index.manifest
    catalog._snap = dataclasses.replace(catalog._snap, index=padded)  # searches read the snapshot
    log.info("padded index: %s, %d vectors (%d real), built in %.0f s", padded.factory, padded.ntotal,
             len(index.ids), time.perf_counter() - started)


def serve_in_process(checkpoint: Path, db_url: str | None, index_dir: Path, pad_random: int,
                     threads: int, index_type: str = "auto", torch_threads: int | None = None,
                     workers: int = 1, precision: str = "auto", compile: str = "on") -> str:
    """Serve the index with the production server (gunicorn, as ``chextriev serve``) in a forked
    child process on 127.0.0.1 and a free port; each worker pads its own index when asked.
    Returns the base URL once the server is ready. The caller must not have run torch before:
    a child forked after torch's OpenMP team ran hangs at its first parallel region (draw
    checkpoints in another process, as ``benchmarks defaults`` does)."""
    import multiprocessing

    from server.config import resolve_config
    from server.readiness import free_port
    from server.serving import serve, worker_app

    port = free_port()
    settings = resolve_config({"CHECKPOINT": str(checkpoint), "INDEX_DIR": str(index_dir), "DB_URL": db_url,
                               "TORCH_THREADS": torch_threads, "PORT": port, "THREADS": threads,
                               "WORKERS": workers, "PRECISION": precision, "COMPILE": compile, "CONFIG_FILE": None,
                               "LOAD": "sync"})

    def padded_app(values: dict):
        logging.getLogger("server").setLevel(logging.WARNING)  # no per-request lines in the report
        app = worker_app(values)
        service = app.extensions["chextriev"]
        if not service.ready:
            raise SystemExit(f"cannot load the index: {service.error}")
        if pad_random:
            pad_index(service.catalog, pad_random, index_type)
        return app

    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(lambda: settings, padded_app), kwargs={"settings": settings}, daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and server.is_alive():
        try:
            if requests.get(f"{base}/api/v1/readyz", timeout=5).status_code == 200:
                return base
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit("the in-process server did not become ready (see its log above)")


STAGES = ("decode", "boxes", "model", "embed", "search", "response", "total", "http")


def compare_precisions(bases: dict[str, str], images: list[bytes], seconds: float, k: int,
                       headers: dict[str, str], seed: int = 0) -> dict:
    """One client alternating upload searches between servers ``{precision: base URL}``.

    Returns per precision ``{requests, errors, p50_ms, p90_ms, stages: {stage: median ms}}``.
    """
    if not images:
        raise SystemExit("--compare-precision / --compare-compile need --images")
    if not 0 < seconds <= MAX_SECONDS:
        raise SystemExit(f"--seconds must be in (0, {MAX_SECONDS}]")
    rng = random.Random(seed)
    session = requests.Session()
    session.headers.update(headers)
    latency: dict[str, list[float]] = {p: [] for p in bases}
    stages: dict[str, dict[str, list[float]]] = {p: {s: [] for s in STAGES} for p in bases}
    errors = dict.fromkeys(bases, 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        image = rng.choice(images)
        for precision, base in bases.items():  # the same image to both, in turn
            started = time.perf_counter()
            try:
                response = session.post(f"{base}/api/v1/search", data={"k": k},
                                        files={"image": ("query", image)}, timeout=60)
            except requests.RequestException:
                errors[precision] += 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                errors[precision] += 1
                continue
            latency[precision].append(elapsed)
            timing = dict(response.json()["timing_ms"])
            timing["http"] = elapsed - timing["total"]
            for stage in STAGES:
                stages[precision][stage].append(float(timing.get(stage, 0.0)))
    result = {}
    for precision in bases:
        values = np.array(latency[precision])
        result[precision] = {
            "requests": len(values), "errors": errors[precision],
            "p50_ms": round(float(np.percentile(values, 50)), 1) if len(values) else None,
            "p90_ms": round(float(np.percentile(values, 90)), 1) if len(values) else None,
            "stages": {s: round(float(np.median(v)), 1) if v else None for s, v in stages[precision].items()},
        }
    return result


def print_comparison(result: dict) -> None:
    names = list(result)
    print("| server | requests | p50 ms | p90 ms | " + " | ".join(f"{s} ms" for s in STAGES) + " |")
    print("|---" * (4 + len(STAGES)) + "|")
    for name in names:
        row = result[name]
        print(f"| {name} | {row['requests']} | {row['p50_ms']} | {row['p90_ms']} | "
              + " | ".join(str(row["stages"][s]) for s in STAGES) + " |")
    if len(names) == 2 and all(result[n]["p50_ms"] for n in names):
        a, b = names
        print(f"p50 {b} / {a}: {result[b]['p50_ms'] / result[a]['p50_ms']:.2f} "
              f"({result[a]['p50_ms'] / result[b]['p50_ms']:.2f}x faster); stage medians of timing_ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback only)")
    parser.add_argument("--mode", choices=("by-id", "upload"), default="by-id")
    parser.add_argument("--clients", type=int, default=8, help=f"concurrent clients, 1..{MAX_CLIENTS} (default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help=f"duration, at most {MAX_SECONDS} (default 30)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--id-pool", type=int, default=500, help="by-id: how many indexed ids to draw from (default 500)")
    parser.add_argument("--images", type=Path, nargs="*", default=[], help="upload: query image files")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file, when the server has one")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    serving = parser.add_argument_group("serve the index in this process instead of --url")
    serving.add_argument("--checkpoint", type=Path, default=None, help="checkpoint the index was built with")
    serving.add_argument("--index-dir", type=Path, default=None)
    serving.add_argument("--db", default=None, help="catalog URL (default sqlite:///INDEX_DIR/catalog.sqlite)")
    serving.add_argument("--pad-random", type=int, default=0, help="add N random vectors to the Faiss index")
    serving.add_argument("--pad-index-type", default="auto", choices=("auto", "flat", "ivf-flat", "ivf-pq"),
                         help="index type of the padded index (default auto: what the indexer builds)")
    serving.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    serving.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serving.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    serving.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                         help="model precision of the in-process server (default auto)")
    serving.add_argument("--compile", default=None, choices=("off", "on"),
                         help="the in-process server's --compile (default: as chextriev serve's, on "
                              "unless $CHEXTRIEV_COMPILE says otherwise)")
    serving.add_argument("--compare-precision", action="store_true",
                         help="upload mode: serve fp32 and bf16 side by side, alternate single requests")
    serving.add_argument("--compare-compile", action="store_true",
                         help="upload mode: serve --precision eager and compiled side by side, alternate "
                              "single requests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.compile is None:
        from chextriev.compiled import default_compile, parse_compile

        args.compile = parse_compile(default_compile())
    if args.compare_precision or args.compare_compile:
        if not (args.checkpoint and args.index_dir) or args.mode != "upload":
            raise SystemExit("--compare-precision / --compare-compile need --mode upload, --checkpoint and --index-dir")
        if args.compare_precision:
            variants = {p: {"precision": p, "compile": args.compile} for p in ("fp32", "bf16")}
        else:
            variants = {f"{args.precision} {name}": {"precision": args.precision, "compile": mode}
                        for name, mode in (("eager", "off"), ("compiled", "on"))}
        bases = {name: serve_in_process(args.checkpoint, args.db, args.index_dir, args.pad_random, args.threads,
                                        args.pad_index_type, args.torch_threads, **options)
                 for name, options in variants.items()}
        result = compare_precisions(bases, [path.read_bytes() for path in args.images], args.seconds, args.k, {})
        if args.json:
            print(json.dumps(result))
        else:
            print_comparison(result)
        return 1 if any(r["errors"] for r in result.values()) else 0
    if args.checkpoint or args.index_dir:
        if not (args.checkpoint and args.index_dir):
            raise SystemExit("serving in process needs both --checkpoint and --index-dir")
        base = serve_in_process(args.checkpoint, args.db, args.index_dir, args.pad_random, args.threads,
                                args.pad_index_type, args.torch_threads, args.workers,
                                precision=args.precision, compile=args.compile)
    else:
        base = require_loopback(args.url)
    token = args.token_file.read_text().strip() if args.token_file else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ready = requests.get(f"{base}/api/v1/readyz", headers=headers, timeout=10)
    if ready.status_code != 200:
        raise SystemExit(f"server not ready ({ready.status_code}): {ready.text[:200]}")
    status = ready.json()
    ids = None
    if args.mode == "by-id":
        ids = discover_ids(base, headers, status["index_size"], args.id_pool)
        log.info("drawing from %d indexed ids", len(ids))
    images = [path.read_bytes() for path in args.images]
    summary = run_load(base, mode=args.mode, clients=args.clients, seconds=args.seconds, ids=ids, images=images,
                       k=args.k, token=token)
    summary["index_size"] = status["index_size"]
    summary["padding_vectors"] = args.pad_random
    summary["torch_threads"] = args.torch_threads
    if args.pad_random:
        summary["padded_index"] = f"{args.pad_index_type}"
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['mode']}: {summary['clients']} clients x {summary['seconds']} s, index {status['index_size']} "
              f"images, k={summary['k']}: {summary['requests']} requests, {summary['requests_per_s']} req/s, "
              f"p50 {summary['p50_ms']} ms, p90 {summary['p90_ms']} ms, p99 {summary['p99_ms']} ms, "
              f"errors {summary['errors']} {summary['error_kinds'] or ''}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
