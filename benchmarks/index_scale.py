"""The catalog + index path at 10k, 100k and 1M images: time per 10k images, bytes written, peak
memory, disk use, then single-query search latency on the result.

The model is a FAST DETERMINISTIC STAND-IN (said in the output): each image's embedding is a
clustered unit vector regenerated from its number (D=1024, the v6 dimension), its 18 region
embeddings are shifted copies of it (R=1024), and its thumbnail one of 64 small 128 px JPEGs.
Everything after the model is the real code: the writer's batched transactions, the vector
store, the index checkpoints (every ``--checkpoint-every`` batches and at the end), the final
manifest; then ``Catalog.open`` and ``Catalog.search``.

    .venv/bin/python -m benchmarks index_scale --sizes 10000 100000
    nice -n 10 .venv/bin/python -m benchmarks index_scale --sizes 1000000 --out /work/bench
    .venv/bin/python -m benchmarks index_scale --sizes 100000 --db postgresql://u@127.0.0.1:5432/postgres
    .venv/bin/python -m benchmarks index_scale --sizes 100000 --keep --dim 64 --region-dim 8
    .venv/bin/python -m benchmarks index_scale --sizes 100000 --open-only --workers 2 --grow 1000

``--db`` names a PostgreSQL server (any database on it): the script creates one database per
size there. Without it the catalog is SQLite inside the index folder.

Run with ``PYTHONPATH`` pointing at an older checkout's ``indexer/`` (e.g. ``git archive
<commit> indexer | tar -x -C /tmp/before``) to measure that code: the script detects the
0.1 writer (vectors in SQL rows, whole-index rewrites) and drives it the same way.

``--open-only`` opens the folders a ``--keep`` run left from ``--workers`` spawned processes in
turn, as a server's workers do (each holds it while the next opens): the open time and the
resident memory of each (``rss``; ``private``: the pages no other process shares, what one more
worker costs; ``shared``: mapped files and libraries), after the open and after a few searches;
then ``Catalog.reload`` after ``--grow`` new images (a new build). With ``PYTHONPATH`` at an
older checkout (``BENCH_CODE=before`` to label it; ``--grow 0``) it measures that code's catalog
on the same folder.

Bytes written: ``/proc/self/io`` of this process (``wchar``: bytes passed to write calls;
``write_bytes``: bytes it sent towards the disk); a PostgreSQL server's own writes are not in
these figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import machine_line

DIM = 1024
REGION_DIM = 1024
CLASSES = ("lung opacity", "pleural effusion", "atelectasis", "enlarged cardiac silhouette",
           "pulmonary edema/hazy opacity", "pneumothorax", "consolidation",
           "fluid overload/heart failure", "pneumonia")


def proc_io() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as handle:
        for line in handle:
            key, value = line.split(":")
            out[key.strip()] = int(value)
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class StandIn:
    """The stand-in model: what the writer needs to know about it, and its outputs."""

    checkpoint_id = "standin-00000001"
    class_names = CLASSES
    image_size = 64

    def __init__(self, dim: int, region_dim: int, seed: int = 0):
        self.embedding_dim = dim
        self.region_dim = region_dim
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((1000, dim)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.thumbs = [_thumbnail(rng) for _ in range(64)]

    def __call__(self, images, boxes=None):  # pragma: no cover - the items carry their outputs
        raise RuntimeError("the stand-in's items are pre-embedded")

    def vectors(self, start: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([7, start])
        idx = np.arange(start, start + count)
        x = self.centres[(idx * 7919) % len(self.centres)]
        x = x + rng.standard_normal((count, self.embedding_dim), dtype=np.float32) * (
            0.6 / np.sqrt(self.embedding_dim))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def items(self, start: int, count: int):
        from indexer.decode import OK, Decoded

        vectors = self.vectors(start, count)
        boxes = np.tile(np.array([8.0, 8.0, 56.0, 56.0], np.float32), (18, 1))
        probs = 1 / (1 + np.exp(-4 * vectors[:, :len(CLASSES)]))
        out = []
        for j in range(count):
            n = start + j
            v = vectors[j]
            region = np.stack([np.roll(v[:self.region_dim], r) for r in range(18)])
            out.append(Decoded(
                f"/bench/p{n % 977}/img{n:08d}.png", 20_000 + n, n, f"{n:064x}", OK, None, "png",
                {"image_id": f"img{n}", "patient_id": f"pat{n // 3}", "study_id": f"st{n // 2}",
                 "view": "PA" if n % 3 else "AP", "sex": "MF"[n % 2], "age": float(20 + n % 70)},
                None, (2048, 2048), self.thumbs[n % len(self.thumbs)],
                {"embedding": v, "probabilities": probs[j], "region_probabilities": None,
                 "region_embeddings": region, "boxes": boxes, "box_source": "atlas"}))
        return out


def _thumbnail(rng) -> bytes:
    from PIL import Image

    base = rng.random((16, 16)).astype(np.float32)
    pixels = np.kron(base, np.ones((8, 8), np.float32))
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _database(server_url: str | None, n: int, index_dir: Path) -> str | None:
    if server_url is None:
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"bench_{n}_{secrets.token_hex(3)}"
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username,
                         password=url.password, dbname=url.database or "postgres",
                         autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)


def run_size(n: int, args, model: StandIn) -> dict:
    from indexer.pipeline import IndexSummary

    index_dir = Path(args.out) / f"n{n}"
    shutil.rmtree(index_dir, ignore_errors=True)
    index_dir.mkdir(parents=True)
    db_url = _database(args.db, n, index_dir)
    summary = IndexSummary()
    io_before = proc_io()
    started = time.perf_counter()
    chunk_times: list[float] = []
    try:
        from indexer.writer import CatalogWriter, WritableCatalog  # this code
        after = True
    except ImportError:
        after = False
    if after:
        from indexer.sync import IndexSyncer
        from indexer.vector_store import open_store

        catalog = WritableCatalog(index_dir, db_url).__enter__()
        sessions = catalog.sessions
        with sessions() as session:
            store = open_store(session, index_dir, dim=model.embedding_dim, create=True)
        writer = CatalogWriter(sessions, model, summary, store=store)
        syncer = IndexSyncer(sessions, index_dir, checkpoint_id=model.checkpoint_id,
                             dim=model.embedding_dim, expected_total=n, store=store)

        def checkpoint():
            return syncer.sync()
    else:  # the 0.1 code: vectors in SQL rows, sync_index rewrites the whole index
        from indexer.db import default_db_url, make_engine, make_sessionmaker  # the 0.1 module
        from indexer.pipeline import _Writer
        from indexer.sync import sync_index

        engine = make_engine(db_url or default_db_url(index_dir))
        sessions = make_sessionmaker(engine)
        writer = _Writer(sessions, model, None, summary)

        def checkpoint():
            return sync_index(sessions, index_dir, checkpoint_id=model.checkpoint_id,
                              dim=model.embedding_dim)
    chunk_cpu: list[float] = []
    chunk_images: list[int] = []
    cpu_start, images_start = cpu_seconds(), 0
    chunk_start, batches, done, writing = time.perf_counter(), 0, 0, 0.0
    while done < n:
        count = min(args.batch, n - done)
        items = model.items(done, count)
        t = time.perf_counter()
        writer.write(items)
        writing += time.perf_counter() - t
        done += count
        batches += 1
        if args.checkpoint_every and batches % args.checkpoint_every == 0:
            checkpoint()
        if done // 10_000 > (done - count) // 10_000 or done == n:  # crossed a 10k mark
            now, cpu = time.perf_counter(), cpu_seconds()
            chunk_images.append(done - images_start)
            chunk_times.append((now - chunk_start) * 10_000 / chunk_images[-1])
            chunk_cpu.append((cpu - cpu_start) * 10_000 / chunk_images[-1])
            chunk_start, cpu_start, images_start = now, cpu, done
            if done // 100_000 > (done - count) // 100_000 or done == n:
                print(f"  {done:>9,} images  {now - started:8.1f} s  rss {peak_rss_mb():7.0f} MB",
                      file=sys.stderr, flush=True)
    manifest = checkpoint()
    seconds = time.perf_counter() - started
    if after:
        catalog.close()
    else:
        engine.dispose()
    io_after = proc_io()
    index_peak = peak_rss_mb()
    disk = folder_bytes(index_dir)
    faiss_bytes = sum(folder_bytes(index_dir / d) for d in ("segments", "builds")
                      if (index_dir / d).is_dir())
    store_bytes = folder_bytes(index_dir / "store") if (index_dir / "store").is_dir() else 0
    db_bytes = sum(p.stat().st_size for p in index_dir.glob("catalog.sqlite*"))
    result = {
        "n": n, "code": "after" if after else "before (0.1)", "db": "postgresql" if db_url
        else "sqlite", "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 1),
        "seconds_per_10k": [round(t, 2) for t in chunk_times],
        "cpu_seconds_per_10k": [round(t, 2) for t in chunk_cpu],
        "writer_rows_per_s": round(n / writing, 1),
        "wchar": io_after["wchar"] - io_before["wchar"],
        "write_bytes": io_after["write_bytes"] - io_before["write_bytes"],
        "index_dir_bytes": disk, "faiss_bytes": faiss_bytes,
        "bytes_per_image": {"store": round(store_bytes / n), "faiss": round(faiss_bytes / n),
                            "sqlite": round(db_bytes / n), "total": round(disk / n)},
        "peak_rss_mb_indexing": round(index_peak), "n_vectors": manifest.n_vectors,
        "segments": len(getattr(manifest, "segments", []) or []) or 1,
    }
    if n >= 100_000:
        for key, series in (("seconds", chunk_times), ("cpu_seconds", chunk_cpu)):
            deciles = np.array_split(np.array(series), 10)
            result[f"{key}_per_10k_by_decile"] = [round(float(d.mean()), 2) for d in deciles]
            result[f"{key}_last_over_first_decile"] = round(
                float(deciles[-1].mean() / deciles[0].mean()), 2)
    result["written_over_final_size"] = round(result["write_bytes"] / max(disk, 1), 2)
    result.update(search_latency(index_dir, db_url, model, n, args))
    result["peak_rss_mb_total"] = round(peak_rss_mb())
    if not args.keep:
        shutil.rmtree(index_dir, ignore_errors=True)
    return result


def search_latency(index_dir: Path, db_url: str | None, model: StandIn, n: int, args) -> dict:
    from chextriev.retrieval import exact_knn
    from indexer.catalog import Catalog

    started = time.perf_counter()
    catalog = Catalog.open(db_url, index_dir)
    open_s = time.perf_counter() - started
    rng = np.random.default_rng(1)
    picks = rng.choice(n, args.queries, replace=False)
    queries = np.concatenate([model.vectors(int(p), 1) for p in picks])
    queries += rng.standard_normal(queries.shape, dtype=np.float32) * (0.3 / np.sqrt(DIM))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    catalog.search(queries[:1], 10)  # warm
    times = []
    found = []
    for q in queries:
        t = time.perf_counter()
        hits = catalog.search(q[None], 10)[0]
        times.append(time.perf_counter() - t)
        found.append([h.image_id for h in hits])
    # recall@10 of the first 20 queries against exact search over the stored vectors
    truth_n = min(20, len(queries))
    exact_ids = catalog.index.ids
    best = np.full((truth_n, 10), -np.inf, np.float32)
    best_ids = np.full((truth_n, 10), -1, np.int64)
    for s in range(0, len(exact_ids), 100_000):  # the exact top 10 of each block, then merged
        ids = np.asarray(exact_ids[s:s + 100_000])
        rows, scores = exact_knn(queries[:truth_n], catalog.vectors(ids), 10, normalize=False)
        all_s = np.concatenate([best, scores], axis=1)
        all_i = np.concatenate([best_ids, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)], axis=1)
        top = np.argsort(-all_s, axis=1)[:, :10]
        best, best_ids = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found[:truth_n], best_ids)])
    return {"catalog_open_s": round(open_s, 2), "search_p50_ms": round(np.percentile(times, 50) * 1e3, 2),
            "search_p99_ms": round(np.percentile(times, 99) * 1e3, 2),
            "recall_at_10": round(float(recall), 3), "index_type": catalog.index.index_type}


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (MB): ``rss``, and of it ``private`` (pages no other
    process shares: what each more worker costs) and ``shared`` (mapped files, libraries)."""
    fields = {}
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[key] = int(value.split()[0]) / 1024
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss": round(fields.get("Rss", 0), 1), "private": round(private, 1),
            "shared": round(fields.get("Rss", 0) - private, 1)}


def _worker(index_dir: str, db: str | None, dim: int, queries: int, connection) -> None:
    """One server worker's view: import, open the catalog (timed), memory before and after,
    then ``queries`` searches (plain, filtered, excluding a patient) and memory again; reports
    through ``connection`` and holds the catalog open until told to exit."""
    from indexer.catalog import Catalog  # the code under test (PYTHONPATH decides which)

    before = memory_mb()
    started = time.perf_counter()
    catalog = Catalog.open(db, index_dir)
    open_s = time.perf_counter() - started
    opened = memory_mb()
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((queries, dim)).astype(np.float32)
    patient = None
    started = time.perf_counter()
    for i, vector in enumerate(vectors):
        options = ({}, {"filters": {"view": "PA", "sex": "F"}},
                   {"exclude_patients": [patient] if patient else None})[i % 3]
        hits = catalog.search(vector[None], 10, **options)[0]
        if hits and patient is None:
            patient = catalog.images([hits[0].image_id])[0]["patient"]
    search_ms = (time.perf_counter() - started) * 1000 / max(queries, 1)
    connection.send({"open_s": round(open_s, 3), "size": catalog.size,
                     "memory_before_open_mb": before, "memory_after_open_mb": opened,
                     "memory_after_searches_mb": memory_mb(),
                     "search_mean_ms": round(search_ms, 2)})
    connection.recv()  # hold the catalog (and its pages) until the parent is done
    catalog.close()


def open_workers(index_dir: Path, args) -> list[dict]:
    """``--workers`` processes (spawned, as a server's workers are) opening the same index one
    after the other, each holding it while the next opens: what the first and every further
    worker pay."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results, held = [], []
    for _ in range(args.workers):
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(str(index_dir), args.db, args.dim,
                                                       args.queries, child))
        process.start()
        results.append(parent.recv())
        held.append((process, parent))
    for process, parent in held:
        parent.send("exit")
        process.join()
    return results


def open_and_reload(n: int, args, model: StandIn) -> dict:
    """``--open-only``: ``--workers`` worker processes open the kept folder ``<out>/n<n>`` in
    turn (open time, resident and private memory of each, see :func:`open_workers`); then, with
    ``--grow N`` (this checkout's writer), N new images are written and synced (a new build)
    and ``Catalog.reload`` of a catalog opened before is timed. Works with the catalog of an
    older checkout (``PYTHONPATH``; use ``--grow 0``: its writer is not driven here)."""
    index_dir = Path(args.out) / f"n{n}"
    if not (index_dir / "manifest.json").is_file():
        raise SystemExit(f"{index_dir} holds no index: build it first with --keep")
    workers = open_workers(index_dir, args)
    result = {"n": workers[0]["size"], "code": os.environ.get("BENCH_CODE", "this checkout"),
              "open_s": [w["open_s"] for w in workers], "workers": workers}
    if args.grow:
        from sqlalchemy import func, select

        from indexer.catalog import Catalog
        from indexer.db import Image
        from indexer.pipeline import IndexSummary
        from indexer.sync import IndexSyncer
        from indexer.vector_store import open_store
        from indexer.writer import CatalogWriter, WritableCatalog

        catalog = Catalog.open(args.db, index_dir)
        with WritableCatalog(index_dir, args.db) as writable:
            with writable.sessions() as session:
                start = int(session.scalar(select(func.max(Image.id)))) + 1
                store = open_store(session, index_dir, dim=model.embedding_dim)
            writer = CatalogWriter(writable.sessions, model, IndexSummary(), store=store)
            for offset in range(0, args.grow, args.batch):
                writer.write(model.items(start + offset, min(args.batch, args.grow - offset)))
            IndexSyncer(writable.sessions, index_dir, checkpoint_id=model.checkpoint_id,
                        dim=model.embedding_dim, store=store).sync()
        started = time.perf_counter()
        result["reloaded"] = catalog.reload()
        result["reload_s"] = round(time.perf_counter() - started, 3)
        result["grow"], result["size_after"] = args.grow, catalog.size
        catalog.close()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--db", default=None, help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--batch", type=int, default=256, help="images per writer batch")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="index checkpoint every N batches (the indexer's default)")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--region-dim", type=int, default=REGION_DIM)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default="/tmp/bench-index-scale", help="work folder")
    parser.add_argument("--keep", action="store_true", help="keep the index folders")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--open-only", action="store_true",
                        help="on the folders a --keep run left, instead of building: --workers "
                             "processes open the same index in turn (open time, resident and "
                             "private memory), then Catalog.reload after --grow new images")
    parser.add_argument("--workers", type=int, default=2,
                        help="--open-only: worker processes opening the index one after another")
    parser.add_argument("--grow", type=int, default=1000,
                        help="--open-only: images added before the timed reload (0: none)")
    args = parser.parse_args(argv)
    model = StandIn(args.dim, args.region_dim)
    if args.open_only:
        for n in args.sizes:
            print(json.dumps(open_and_reload(n, args, model)), flush=True)
        return 0
    print("MODEL: fast deterministic stand-in (clustered unit vectors, shifted region copies, "
          f"64 thumbnails), D={args.dim}, R={args.region_dim}; NOT a neural network")
    print(f"machine: {machine_line()}; "
          f"batch {args.batch}, checkpoint every {args.checkpoint_every} batches")
    results = []
    for n in args.sizes:
        print(f"n={n:,}", file=sys.stderr, flush=True)
        result = run_size(n, args, model)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"{'n':>9} {'code':>13} {'db':>10} {'s':>8} {'img/s':>8} {'s/10k first..last':>18} "
          f"{'written GB':>10} {'final GB':>9} {'ratio':>6} {'peak MB':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'recall':>6}")
    for r in results:
        per = r["seconds_per_10k"]
        print(f"{r['n']:>9,} {r['code']:>13} {r['db']:>10} {r['seconds']:>8} "
              f"{r['images_per_s']:>8} {per[0]:>8.2f}..{per[-1]:<8.2f} "
              f"{r['write_bytes'] / 1e9:>10.2f} {r['index_dir_bytes'] / 1e9:>9.2f} "
              f"{r['written_over_final_size']:>6} {r['peak_rss_mb_indexing']:>8} "
              f"{r['search_p50_ms']:>7} {r['search_p99_ms']:>7} {r['recall_at_10']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
