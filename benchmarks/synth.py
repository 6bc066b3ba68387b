"""Time the synthetic archive generator: images/s at a given size (default 1,000 images at 512 px).

    .venv/bin/python -m benchmarks synth --images 1000 --size 512 --workers 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from chextriev.synth.writer import SynthConfig, plan_jobs, write_archive


def patients_for(images: int, seed: int) -> int:
    """Smallest patient count whose plan has at least ``images`` images."""
    lo, hi = 1, images
    while lo < hi:
        mid = (lo + hi) // 2
        if len(plan_jobs(SynthConfig(out=Path("."), patients=mid, seed=seed))) >= images:
            hi = mid
        else:
            lo = mid + 1
    return lo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    args = parser.parse_args(argv)
    patients = patients_for(args.images, args.seed)
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            rows = write_archive(SynthConfig(out=Path(tmp) / "a", patients=patients, seed=args.seed, size=args.size,
                                             workers=workers), progress=False)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"workers={workers} images={len(rows)} size={args.size} seconds={seconds:.1f} "
              f"images/s={len(rows) / seconds:.1f} cpu_seconds_main_process={cpu:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
