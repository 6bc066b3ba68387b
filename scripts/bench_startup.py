"""Wall time of `chextriev --help`, `chextriev COMMAND --help` and an argument error.

    python scripts/bench_startup.py [--repeats 5]

Each command runs ``--repeats`` times as a fresh process (the console script's own code,
``python -m chextriev_cli.main``); prints the median and the worst wall time per command, and the
time of ``python -c pass`` for the interpreter's own share.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["synth", "--help"], ["train", "--help"], ["train-detector", "--help"],
            ["evaluate", "--help"], ["index", "--help"], ["index", "verify", "--help"], ["serve", "--help"],
            ["demo", "--help"], ["index", "--precision", "fp16"])


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [("python -c pass", [sys.executable, "-c", "pass"])]
    rows += [(f"chextriev {' '.join(argv)}", [sys.executable, "-m", "chextriev_cli.main", *argv]) for argv in COMMANDS]
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(args.repeats):  # commands interleaved, so load changes hit them all alike
        for name, command in rows:
            times[name].append(wall(command))
    print(f"| command | median s | max s | ({args.repeats} runs each) |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.3f} | {max(values):.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
