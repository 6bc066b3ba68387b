"""Single-query search at scale on a folder kept by ``index_scale``: p50 and p99 in the first
minute after a start (the folder's pages evicted from the page cache first: a cold start) and
warm, with recall@10 against exact search, for the index as built and for other layouts built
from the same stored vectors.

    python -m benchmarks index_scale --sizes 1000000 --region-dim 8 --keep --out /tmp/bench
    python -m benchmarks search_scale --index-dir /tmp/bench/n1000000 --cold
    python -m benchmarks search_scale --index-dir /tmp/bench/n1000000 \\
        --variants ivf-flat:segments=1 ivf-pq:segments=1:rerank=8 ivf-pq:segments=as-built

Every figure comes from a fresh process (spawned, as a server's worker) that opens the folder
with ``Catalog.open`` and searches one query at a time through ``Catalog.search`` (k = 10), as
the server does: for ``--seconds`` from the open (the queries cycled), then ``--warm-rounds``
more passes over the queries. ``--cold`` first evicts every file of the folder from the page
cache (``posix_fadvise(DONTNEED)``; clean pages only, nothing else on the machine is touched), so
the first minute is what a server started on a machine that has not read the index lately sees.

Queries (the stand-in model of ``index_scale``, same dimension and seed): ``archived``, an
archived image's vector with noise (what ``index_scale`` measures), and ``new``, vectors the
stand-in would give images that are not in the archive (an upload; harder: its neighbours are
the members of its cluster, close to one another). Recall@10 against the exact top 10 over the
stored vectors (``chextriev.retrieval.exact_knn``; computed once per query set, cached in the
work folder).

A variant ``TYPE[:key=value...]`` is a new index over the same catalog, built here from the
stored vectors into ``<work>/<name>/`` (segments, manifest; the catalog, vector store and column
files of the folder linked, not copied), then measured like the folder itself. Keys: ``nlist``,
``nprobe`` (the build's default), ``rerank`` (IVF-PQ depth, x k), ``m`` (IVF-PQ bytes per code),
``segments`` (a number of equal parts, or ``as-built``: the folder's own partition). The
variants are what the segment layout, the merge policy, the index type and nprobe change.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import machine_line

K = 10


# ------------------------------------------------------------------------------ page cache
def folder_files(index_dir: Path) -> list[Path]:
    return [p for p in index_dir.rglob("*") if p.is_file()]


def evict(paths: list[Path]) -> int:
    """Drop the clean pages of ``paths`` from the page cache; the bytes asked to drop."""
    total = 0
    for path in paths:
        real = path.resolve()
        with open(real, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        total += real.stat().st_size
    return total


# ------------------------------------------------------------------------------ queries
def make_queries(n: int, dim: int, count: int, kind: str) -> np.ndarray:
    from benchmarks.index_scale import StandIn

    model = StandIn(dim, 8)
    rng = np.random.default_rng({"archived": 1, "new": 2}[kind])
    if kind == "archived":  # as index_scale's search: an archived vector with noise
        picks = rng.choice(n, count, replace=False)
        queries = np.concatenate([model.vectors(int(p), 1) for p in picks])
        queries += rng.standard_normal(queries.shape, dtype=np.float32) * (0.3 / np.sqrt(dim))
    else:  # what the stand-in gives images beyond the archive's numbers
        queries = model.vectors(n + 1_000_000, count)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def exact_truth(index_dir: Path, queries: np.ndarray, cache: Path) -> np.ndarray:
    """The exact top-10 ids of ``queries`` over every stored vector of the catalog (cached)."""
    if cache.is_file():
        return np.load(cache)
    from chextriev.retrieval import exact_knn
    from indexer.catalog import Catalog

    catalog = Catalog.open(None, index_dir)
    ids = np.asarray(catalog.index.ids)
    best = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.full((len(queries), K), -1, np.int64)
    for start in range(0, len(ids), 100_000):
        part = ids[start:start + 100_000]
        rows, scores = exact_knn(queries, catalog.vectors(part), K, normalize=False)
        all_s = np.concatenate([best, scores], axis=1)
        all_i = np.concatenate([best_ids, np.where(rows >= 0, part[np.maximum(rows, 0)], -1)], axis=1)
        top = np.argsort(-all_s, axis=1)[:, :K]
        best, best_ids = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    catalog.close()
    np.save(cache, best_ids)
    return best_ids


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


# ------------------------------------------------------------------------------ variants
def parse_variant(spec: str) -> tuple[str, str, dict]:
    kind, *pairs = spec.split(":")
    options = dict(pair.split("=", 1) for pair in pairs)
    return spec.replace(":", "_").replace("=", "-"), kind, options


def build_variant(index_dir: Path, out: Path, kind: str, options: dict) -> Path:
    """A new index of ``kind`` over the catalog of ``index_dir`` in ``out`` (see the module
    docstring); the catalog, vector store and column files linked."""
    from indexer.catalog import Catalog
    from indexer.faiss_factory import default_nlist
    from indexer.manifest import Manifest
    from indexer.vector_index import VectorIndex

    if (out / "manifest.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    main = Manifest.read(index_dir)
    (out / "store").symlink_to((index_dir / "store").resolve())  # the catalog: given by URL
    for rel in main.columns["files"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).symlink_to((index_dir / rel).resolve())
    catalog = Catalog.open(None, index_dir)
    ids = np.asarray(catalog.index.ids)
    n, dim = len(ids), catalog.embedding_dim
    nlist = int(options.get("nlist", default_nlist(n)))
    factory = {"ivf-pq": f"IVF{nlist},PQ{int(options.get('m', dim // 16))}x8", "ivf-flat": f"IVF{nlist},Flat",
               "flat": "IDMap2,Flat"}[kind]
    pick = np.sort(np.random.default_rng(0).choice(n, min(n, max(64 * nlist, 65_536)), replace=False))
    index = VectorIndex.create(kind, dim, train_vectors=catalog.vectors(ids[pick]), expected=n,
                               nprobe=int(options.get("nprobe", main.nprobe)),
                               rerank=int(options.get("rerank", main.rerank)), factory=factory)
    if options.get("segments", "1") == "as-built":
        parts = [np.asarray(s.ids) for s in catalog.index.segments]
    else:
        parts = np.array_split(ids, int(options.get("segments", 1)))
    for part in parts:
        target = index.empty()
        for start in range(0, len(part), 50_000):
            chunk = part[start:start + 50_000]
            target.add_with_ids(catalog.vectors(chunk), chunk)
        index.add_segment(part, None, index=target)
        index.save(out, checkpoint_id=main.checkpoint_id, merge=False,
                   catalog_generation=main.catalog_generation, store_rows=main.store_rows,
                   removals=main.removals, db_state=main.db_state, columns=main.columns)
    catalog.close()
    return out


# ------------------------------------------------------------------------------ the measuring process
def _child(index_dir: str, db: str | None, queries_path: str, seconds: float, warm_rounds: int,
           settings: list, out: str) -> None:
    """A fresh process: open the catalog (timed), search one query at a time for ``seconds`` from
    the open with the build's settings, then ``warm_rounds`` passes over the queries with each of
    ``settings`` (``(nprobe, rerank)``, None = the build's); the figures to ``out`` (JSON)."""
    import logging

    logging.disable(logging.INFO)
    from indexer.catalog import Catalog

    queries = np.load(queries_path)
    started = time.perf_counter()
    import inspect

    warm = {"warm": True} if "warm" in inspect.signature(Catalog.open).parameters else {}  # older code: none
    catalog = Catalog.open(db, index_dir, **warm)  # as the server opens it
    open_s = time.perf_counter() - started
    cold, at = [], []
    i = 0
    while time.perf_counter() - started < seconds:
        q = i % len(queries)
        t = time.perf_counter()
        catalog.search(queries[q:q + 1], K)
        cold.append(time.perf_counter() - t)
        at.append(t - started)
        i += 1
    runs = []
    for nprobe, rerank in settings:
        warm, found = [], []
        for round_ in range(warm_rounds):
            for q in range(len(queries)):
                t = time.perf_counter()
                hits = catalog.search(queries[q:q + 1], K, nprobe=nprobe, rerank=rerank)[0]
                warm.append(time.perf_counter() - t)
                if round_ == 0:
                    found.append([h.image_id for h in hits])
        runs.append({"settings": catalog.search_settings(nprobe=nprobe, rerank=rerank),
                     "warm_ms": [t * 1000 for t in warm], "found": found})
    Path(out).write_text(json.dumps({
        "open_s": open_s, "cold_ms": [t * 1000 for t in cold], "cold_at_s": at, "runs": runs,
        "segments": len(catalog.index.segments), "factory": catalog.index.factory}))
    catalog.close()


def measure(index_dir: Path, db: str, queries_path: Path, args, label: str) -> dict:
    if args.cold:  # the variant's files and the folder's own (catalog, store, columns)
        evicted = evict(sorted(set(folder_files(index_dir)) | set(folder_files(Path(args.index_dir)))))
        print(f"  {label}: evicted {evicted / 1e9:.2f} GB of page cache", file=sys.stderr, flush=True)
    out = Path(args.work) / f"result-{os.getpid()}.json"
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(str(index_dir), db, str(queries_path), args.seconds, args.warm_rounds,
                             args.settings, str(out)))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"the measuring process failed ({process.exitcode})")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index-dir", required=True, help="a folder index_scale --keep left")
    parser.add_argument("--work", default=None, help="variants and cached truths (default: <index-dir>-search)")
    parser.add_argument("--variants", nargs="*", default=[], help="TYPE[:key=value...] (module docstring)")
    parser.add_argument("--no-as-built", action="store_true", help="measure the variants only")
    parser.add_argument("--queries", type=int, default=300, help="queries per kind")
    parser.add_argument("--kinds", nargs="+", default=["archived", "new"], choices=("archived", "new"))
    parser.add_argument("--seconds", type=float, default=60.0, help="the first period after the open")
    parser.add_argument("--warm-rounds", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="evict the folder's pages before each start")
    parser.add_argument("--settings", nargs="+", default=["build"],
                        help="per-search settings measured warm, NPROBE/RERANK each ('build': the build's; "
                             "a part '-' keeps the build's), e.g. build 8/- 16/16")
    parser.add_argument("--keep-variants", action="store_true")
    args = parser.parse_args(argv)
    args.settings = [(None, None) if spec == "build" else
                     tuple(None if part == "-" else int(part) for part in spec.split("/")) for spec in args.settings]
    index_dir = Path(args.index_dir)
    args.work = args.work or f"{index_dir}-search"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from indexer.manifest import Manifest

    manifest = Manifest.read(index_dir)
    n, dim = manifest.n_vectors, manifest.dim
    sets = {}
    for kind in args.kinds:
        queries = make_queries(n, dim, args.queries, kind)
        path = work / f"queries-{kind}-{args.queries}.npy"
        np.save(path, queries)
        sets[kind] = (path, exact_truth(index_dir, queries, work / f"truth-{kind}-{args.queries}.npy"))
    targets = [] if args.no_as_built else [("as built", index_dir)]
    for spec in args.variants:
        name, kind, options = parse_variant(spec)
        started = time.perf_counter()
        targets.append((spec, build_variant(index_dir, work / name, kind, options)))
        print(f"  built {spec} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"machine: {machine_line()}")
    print(f"index: {index_dir} ({n:,} x {dim}); k={K}; one query at a time through Catalog.search in a fresh "
          f"process; first {args.seconds:.0f} s after the open{' after evicting the folder from the page cache' if args.cold else ''}, "
          f"then {args.warm_rounds} warm passes")
    print(f"| index | factory, segments | nprobe | rerank | queries | open s | first 10 s p50 / p99 ms | first "
          f"{args.seconds:.0f} s p50 / p99 ms (searches) | warm p50 / p99 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for label, folder in targets:
        for kind, (path, truth) in sets.items():
            r = measure(folder, f"sqlite:///{index_dir.resolve() / 'catalog.sqlite'}", path, args, label)
            for j, run in enumerate(r["runs"]):
                s = run["settings"]
                row = {"index": label, "kind": kind, "factory": r["factory"], "segments": r["segments"],
                       "nprobe": s["nprobe"], "rerank": s["rerank"], "open_s": round(r["open_s"], 3),
                       "cold_p50": pct(r["cold_ms"], 50), "cold_p99": pct(r["cold_ms"], 99),
                       "cold_n": len(r["cold_ms"]), "warm_p50": pct(run["warm_ms"], 50),
                       "first10_p50": pct([c for c, t in zip(r["cold_ms"], r["cold_at_s"]) if t < 10], 50),
                       "first10_p99": pct([c for c, t in zip(r["cold_ms"], r["cold_at_s"]) if t < 10], 99),
                       "warm_p99": pct(run["warm_ms"], 99), "recall": recall(run["found"], truth)}
                rows.append(row)
                first = (f"{row['first10_p50']:.2f} / {row['first10_p99']:.2f} | {row['cold_p50']:.2f} / "
                         f"{row['cold_p99']:.2f} ({row['cold_n']})" if j == 0 else " | ")
                print(f"| {label} | {row['factory']}, {row['segments']} | {row['nprobe']} | {row['rerank']} | "
                      f"{kind} | {row['open_s']:.2f} | {first} | {row['warm_p50']:.2f} / {row['warm_p99']:.2f} | "
                      f"{row['recall']:.3f} |", flush=True)
    (work / f"results-{time.strftime('%H%M%S')}.json").write_text(json.dumps(rows, indent=1))
    if not args.keep_variants:
        for label, folder in targets[1 if not args.no_as_built else 0:]:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
