"""Time the vectorised retrieval metrics (and exact cosine top-k) against a slow loop.

Usage: .venv/bin/python -m benchmarks retrieval_metrics [--queries 100000] [--k 10] [--classes 9]
Prints the figures; append them to BENCHMARKS.md by hand (never rewrite that file).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from metrics.retrieval import neighbors_from_embeddings, retrieval_metrics


def loop_metrics(neighbors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The per-query Python loop the vectorised code replaces (mAP of class 0 only)."""
    total, count = 0.0, 0
    for q in range(len(neighbors)):
        if labels[q, 0] != 1:
            continue
        hits, acc = 0, 0.0
        for i, j in enumerate(neighbors[q, :k], start=1):
            if labels[j, 0] == 1:
                hits += 1
                acc += hits / i
        total += acc / hits if hits else 0.0
        count += 1
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--embed-n", type=int, default=20_000, help="rows for the top-k timing")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, k, c = args.queries, args.k, args.classes
    labels = (rng.random((n, c)) < 0.15).astype(np.float32)
    neighbors = rng.integers(0, n, size=(n, k))

    t0 = time.perf_counter()
    for skip in (True, False):
        retrieval_metrics(neighbors, labels, k, skip=skip, hit_rate=True)
    t_vec = (time.perf_counter() - t0) / 2

    sub = min(n, 10_000)
    t0 = time.perf_counter()
    for _ in range(c):  # the loop does one class per pass
        loop_metrics(neighbors[:sub], labels, k)
    t_loop = (time.perf_counter() - t0) * (n / sub)

    m = args.embed_n
    emb = rng.normal(size=(m, 128)).astype(np.float32)
    t0 = time.perf_counter()
    neighbors_from_embeddings(emb, k)
    t_knn = time.perf_counter() - t0

    print(f"retrieval_metrics: {n} queries, k={k}, {c} classes: {t_vec:.2f} s per call (vectorised)")
    print(f"python loop (extrapolated from {sub} queries): {t_loop:.1f} s; ratio {t_loop / t_vec:.0f}x")
    print(f"neighbors_from_embeddings: {m} x {m} exact cosine, D=128, k={k}: {t_knn:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
