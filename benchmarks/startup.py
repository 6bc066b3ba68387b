"""Wall time of `chextriev --help`, `chextriev COMMAND --help` and an argument error.

    python -m benchmarks startup [--repeats 5] [--baseline /path/to/other/checkout]

Each command runs ``--repeats`` times as a fresh process (the console script's own code,
``python -m chextriev_cli.main``); prints the median and the worst wall time per command, and the
time of ``python -c pass`` for the interpreter's own share. ``--baseline DIR`` also runs every
command from another checkout (``python -m`` imports the code of its working directory first),
interleaved with this one, for a before/after ratio in one run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO_ROOT

COMMANDS = (["--help"], ["synth", "--help"], ["train", "--help"], ["train-detector", "--help"],
            ["evaluate", "--help"], ["index", "--help"], ["index", "verify", "--help"], ["serve", "--help"],
            ["demo", "--help"], ["index", "--precision", "fp16"])


def wall(command: list[str], cwd: Path = REPO_ROOT) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare with")
    args = parser.parse_args(argv)
    rows = [("python -c pass", [sys.executable, "-c", "pass"])]
    rows += [(f"chextriev {' '.join(argv)}", [sys.executable, "-m", "chextriev_cli.main", *argv]) for argv in COMMANDS]
    checkouts = [REPO_ROOT] + ([args.baseline.resolve()] if args.baseline else [])
    times: dict[tuple[str, Path], list[float]] = {(name, c): [] for name, _ in rows for c in checkouts}
    for _ in range(args.repeats):  # commands interleaved, so load changes hit them all alike
        for name, command in rows:
            for checkout in checkouts:
                times[(name, checkout)].append(wall(command, checkout))
    header = "| command | median s | max s |" + (" baseline median s | baseline / this |" if args.baseline else "")
    print(f"{header}  ({args.repeats} runs each)")
    print("|---|---|---|" + ("---|---|" if args.baseline else ""))
    for name, _ in rows:
        values = times[(name, REPO_ROOT)]
        line = f"| `{name}` | {statistics.median(values):.3f} | {max(values):.3f} |"
        if args.baseline:
            other = statistics.median(times[(name, checkouts[1])])
            line += f" {other:.3f} | {other / statistics.median(values):.1f}x |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
