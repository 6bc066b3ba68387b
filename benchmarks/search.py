"""Faiss add and search at 100k and 1M clustered unit vectors of the model's dimension.

For each size: exact ``flat`` vs ``ivf-flat`` (several nprobe) vs ``ivf-pq`` + exact re-rank;
recall@10 against the exact result, single-query latency p50/p99 and batched throughput.

    .venv/bin/python -m benchmarks search                     # 100k and 1M, D=1024
    .venv/bin/python -m benchmarks search --sizes 100000 --queries 200

Memory: about 2 x 4 x N x D bytes (the exact flat index and the IVF-flat lists; the IVF-PQ
re-rank reads the flat index's vectors): 8 GB at 1M x 1024.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import faiss
import numpy as np

from benchmarks.harness import SPREAD, clustered_chunk, machine_line, make_queries, recall_at
from indexer.faiss_factory import default_nlist
from indexer.segments import Segment
from indexer.vector_index import VectorIndex


class _ExactView:
    """Exact vectors for the wrapper's re-rank, read in place from the flat index (no copy)."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray):
        self.ids, self.matrix = ids, matrix

    def vectors(self, wanted) -> np.ndarray:
        pos = np.clip(np.searchsorted(self.ids, wanted), 0, len(self.ids) - 1)
        out = self.matrix[pos].astype(np.float32)
        out[self.ids[pos] != wanted] = np.nan
        return out


def latency(search, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None], k)
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def throughput(search, queries: np.ndarray, k: int) -> float:
    t = time.perf_counter()
    search(queries, k)
    return len(queries) / (time.perf_counter() - t)


def run_size(n: int, dim: int, n_queries: int, k: int, seed: int, chunk: int = 100_000,
             spread: float = SPREAD) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(64, n // 500), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) + 1
    nlist = default_nlist(n)
    rows = []

    # Exact flat (the master copy of the vectors: the IVF-PQ re-rank reads them).
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    t = time.perf_counter()
    for s in range(0, n, chunk):
        flat.add_with_ids(clustered_chunk(s, min(chunk, n - s), dim, centres, seed, spread), ids[s:s + chunk])
    flat_add = time.perf_counter() - t
    base = faiss.downcast_index(flat.index)
    exact_view = faiss.rev_swig_ptr(base.get_xb(), n * dim).reshape(n, dim)
    queries = make_queries(exact_view, n_queries, seed + 1)
    truth = flat.search(queries, k)[1]

    flat_search = flat.search
    p50, p99 = latency(flat_search, queries[:min(50, n_queries)], k)
    rows.append({"n": n, "index": "flat (exact)", "nprobe": "-", "add_s": flat_add, "recall": 1.0,
                 "p50": p50, "p99": p99, "qps": throughput(flat_search, queries, k)})
    print(_fmt(rows[-1]), flush=True)

    train = clustered_chunk(0, min(n, max(64 * nlist, 65_536)), dim, centres, seed, spread)
    for kind, factory in (("ivf-flat", f"IVF{nlist},Flat"),
                          ("ivf-pq", f"IVF{nlist},PQ{dim // 16}x8")):
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "ivf-pq":
            # As VectorIndex does: no polysemous training (unused, and slow).
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        t = time.perf_counter()
        index.train(train)
        for s in range(0, n, chunk):
            index.add_with_ids(clustered_chunk(s, min(chunk, n - s), dim, centres, seed, spread), ids[s:s + chunk])
        add_s = time.perf_counter() - t
        # The project's wrapper (re-rank for ivf-pq) over this Faiss index and the exact vectors.
        wrapper = VectorIndex(kind, factory, dim, nprobe=16, rerank=8, trained=index,
                              exact=_ExactView(ids, exact_view))
        wrapper.segments = [Segment("bench", n, index=index, ids=ids, mmap=False)]
        for nprobe in (8, 16, 32, 64):
            search = functools.partial(wrapper.search, nprobe=nprobe)
            found = search(queries, k)[1]
            p50, p99 = latency(search, queries[:min(200, n_queries)], k)
            rows.append({"n": n, "index": f"{kind} ({factory})", "nprobe": nprobe, "add_s": add_s,
                         "recall": recall_at(found, truth), "p50": p50, "p99": p99,
                         "qps": throughput(search, queries, k)})
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r: dict) -> str:
    return (f"| {r['n']:>9,} | {r['index']:<28} | {r['nprobe']!s:>6} | {r['add_s']:7.1f} | "
            f"{r['recall']:.3f} | {r['p50']:7.2f} | {r['p99']:7.2f} | {r['qps']:8.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024, help="the model's embedding dimension")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=SPREAD,
                        help="sub-cluster spread around the cluster centre")
    parser.add_argument("--threads", type=int, default=0, help="Faiss OpenMP threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"machine: {machine_line()}, faiss {faiss.__version__}, "
          f"omp threads {faiss.omp_get_max_threads()}, D={args.dim}, k={args.k}, "
          f"{args.queries} queries")
    print("| vectors | index | nprobe | add+train s | recall@10 | p50 ms | p99 ms | batched q/s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        run_size(n, args.dim, args.queries, args.k, args.seed, spread=args.spread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
