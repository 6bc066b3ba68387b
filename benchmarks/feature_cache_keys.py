"""Time the feature cache's image content hashes: cold (no memo: every file read and hashed)
vs warm (``CACHE_DIR/content-hashes.sqlite`` memo: files only stat'ed), as at a training start.

Usage: .venv/bin/python -m benchmarks feature_cache_keys [--files 2000] [--kib 200] [--dir DIR]
Writes N random files of the given size in a temporary directory (removed afterwards), with
mtimes an hour in the past (files modified within the last seconds are never memoised).
The cold figure reads files the OS has just written, so they are in the page cache: on a real
archive on disk or network storage the cold pass is slower and the ratio larger.
Prints the figures; append them to BENCHMARKS.md by hand (never rewrite that file).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from chextriev.training.feature_cache import FeatureCache, content_hash


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000, help="number of files (default 2000)")
    parser.add_argument("--kib", type=int, default=200, help="size of each file in KiB (default 200)")
    parser.add_argument("--dir", default=None, help="parent of the temporary directory (default: system temp)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-cache-keys-") as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        old = time.time_ns() - 3600 * 10**9
        paths = []
        for i in range(args.files):
            path = images / f"{i:07d}.jpg"
            path.write_bytes(os.urandom(args.kib * 1024))
            os.utime(path, ns=(old, old))
            paths.append(path)

        t0 = time.perf_counter()
        plain = [content_hash(p) for p in paths]
        t_plain = time.perf_counter() - t0

        cache = FeatureCache(root / "cache")
        t0 = time.perf_counter()
        cold = cache.content_hashes(paths)
        t_cold = time.perf_counter() - t0

        t0 = time.perf_counter()
        warm = FeatureCache(root / "cache").content_hashes(paths)  # a new process's cache object
        t_warm = time.perf_counter() - t0
        assert plain == cold == warm

    mib = args.files * args.kib / 1024
    print(f"{args.files} files x {args.kib} KiB ({mib:.0f} MiB), page cache warm")
    print(f"content_hash per file (before the memo): {t_plain:8.3f} s")
    print(f"cold, no memo (hash + fill memo):        {t_cold:8.3f} s")
    print(f"warm, memo (stat only):                  {t_warm:8.3f} s")
    print(f"cold / warm ratio: {t_cold / t_warm:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
