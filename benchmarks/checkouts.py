"""The indexer and the server of several checkouts of the project, alternated in one run.

For "the figures re-measured after the change against the code before it": each checkout (a
``git worktree`` of a commit) runs as the product, through its own ``chextriev`` entry point
(``python -m chextriev_cli.main`` with ``PYTHONPATH`` set to the checkout), on one synthetic archive
and one checkpoint, with the same flags. Then, for each of ``--rounds`` rounds and each
checkout in turn:

* ``chextriev index`` into a fresh index folder of that checkout: images/s as the command
  reports it (``--json``);

then one ``chextriev serve`` per checkout (each on its own index, all started at once), and per
round and checkout in turn ``load_test`` (this checkout's client, over HTTP) by id and by upload.
Only the public commands and the HTTP API are used, so a checkout from before a refactoring
runs as it did then.

    git worktree add /tmp/before COMMIT
    python -m benchmarks checkouts --work /tmp/ab before=/tmp/before after=.

The checkpoint is the ``tiny`` preset (ResNet18 at 64 px, one epoch: meaningless weights) trained
by the first checkout, so that the figures are the indexer's and the server's own work, not a
model's; ``--checkpoint`` takes another one (every checkout must read it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import REPO_ROOT, machine_line
from chextriev.errors import ChextrievError
from server.readiness import free_port, wait_ready


def _cli(*args: str) -> list[str]:
    """The ``chextriev`` command of the checkout that ``PYTHONPATH`` (:func:`_env`) names."""
    return [sys.executable, "-m", "chextriev_cli.main", *args]


def _env(checkout: Path, work: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "CHEXTRIEV_COMPILE_CACHE": str(work / "compiled")}


def _run(checkout: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_cli(*args), cwd=checkout, env=_env(checkout, work),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: chextriev {' '.join(args[:1])} exited with {done.returncode}:\n"
                         f"{done.stderr[-3000:]}")
    return done


def _load_test(base: str, mode: str, seconds: float, queries: list[Path]) -> dict:
    args = [sys.executable, "-m", "benchmarks", "load_test", "--url", base, "--mode", mode,
            "--clients", "1", "--seconds", str(seconds), "--id-pool", "100", "--json"]
    if mode == "upload":
        args += ["--images", *map(str, queries)]
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"load_test {mode} against {base} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checkouts(values: list[str]) -> dict[str, Path]:
    named = {}
    for value in values:
        name, _, path = value.rpartition("=")
        path = Path(path).resolve()
        if not name or not (path / "chextriev_cli" / "main.py").is_file():
            raise SystemExit(f"{value!r}: give NAME=PATH of a checkout of the project")
        named[name] = path
    if len(named) < 2:
        raise SystemExit("give at least two checkouts")
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="+", metavar="NAME=PATH", help="the checkouts, in the order they run")
    parser.add_argument("--work", type=Path, required=True, help="folder for the archive, checkpoint and indexes")
    parser.add_argument("--patients", type=int, default=110, help="patients of the synthetic archive (default 110)")
    parser.add_argument("--size", type=int, default=1024, help="image side of the archive (default 1024)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a tiny one the first checkout trains")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    parser.add_argument("--by-id-seconds", type=float, default=15.0, help="seconds per by-id load test (default 15)")
    parser.add_argument("--upload-seconds", type=float, default=20.0,
                        help="seconds per upload load test (default 20)")
    parser.add_argument("--flags", nargs="*", default=["--compile", "off", "--precision", "fp32"],
                        help="flags given to every index and serve (default: --compile off --precision fp32)")
    args = parser.parse_args(argv)
    checkouts = _checkouts(args.checkouts)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    first = next(iter(checkouts.values()))
    archive = work / "archive"
    if not (archive / "manifest.csv").is_file():
        _run(first, work, "synth", "--out", str(archive), "--patients", str(args.patients),
             "--size", str(args.size), "--seed", "3")
    checkpoint = args.checkpoint.resolve() if args.checkpoint else work / "tiny" / "best.ckpt"
    if not checkpoint.is_file():
        _run(first, work, "train", "--variant", "v6", "--preset", "tiny", "--data", str(archive),
             "--out", str(work / "tiny"), "--epochs", "1")
    queries = sorted(archive.rglob("*.png"))[-8:]
    print(f"machine: {machine_line()}")
    print(f"checkouts: {', '.join(f'{n} = {p}' for n, p in checkouts.items())}; flags: {' '.join(args.flags)}; "
          f"checkpoint {checkpoint}")
    figures: dict[tuple[str, str], list[float]] = {}

    def note(name: str, what: str, value: float) -> None:
        figures.setdefault((what, name), []).append(value)

    for round_ in range(1, args.rounds + 1):
        for name, checkout in checkouts.items():
            index_dir = work / f"index-{name}"
            shutil.rmtree(index_dir, ignore_errors=True)
            done = _run(checkout, work, "index", "--data", str(archive), "--checkpoint", str(checkpoint),
                        "--index-dir", str(index_dir), "--workers", "2", "--json", *args.flags)
            summary = json.loads(done.stdout)
            note(name, "index images/s", summary["images_per_second"])
            print(f"round {round_} index {name}: {summary['indexed']} images, "
                  f"{summary['images_per_second']:.2f} images/s", flush=True)
    servers = {}
    try:
        for name, checkout in checkouts.items():
            port, log_path = free_port(), work / f"serve-{name}.log"
            with open(log_path, "w") as log_file:
                process = subprocess.Popen(
                    _cli("serve", "--checkpoint", str(checkpoint), "--index-dir", str(work / f"index-{name}"),
                         "--port", str(port), "--workers", "1", *args.flags),
                    cwd=checkout, env=_env(checkout, work), stdout=log_file, stderr=subprocess.STDOUT)
            servers[name] = (f"http://127.0.0.1:{port}", process, log_path)
        for base, process, log_path in servers.values():
            try:
                wait_ready(base, process, timeout=600, log_path=log_path)
            except ChextrievError as error:
                raise SystemExit(str(error)) from None
        for round_ in range(1, args.rounds + 1):
            for name, (base, _, _) in servers.items():
                for mode, seconds in (("by-id", args.by_id_seconds), ("upload", args.upload_seconds)):
                    result = _load_test(base, mode, seconds, queries)
                    note(name, f"{mode} p50 ms", result["p50_ms"])
                    note(name, f"{mode} p99 ms", result["p99_ms"])
                    note(name, f"{mode} requests/s", result["requests_per_s"])
                    print(f"round {round_} {mode} {name}: {result['requests']} requests, {result['errors']} errors, "
                          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms", flush=True)
    finally:
        for _, process, _ in servers.values():
            process.terminate()
        for _, process, _ in servers.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    names = list(checkouts)
    reference = names[0]
    print(f"\n| figure | {' | '.join(names)} | " + " | ".join(f"{n} / {reference}" for n in names[1:]) + " |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for what in dict.fromkeys(w for w, _ in figures):
        cells = [", ".join(f"{v:.1f}" for v in figures[(what, n)]) for n in names]
        ratios = [statistics.median(figures[(what, n)]) / statistics.median(figures[(what, reference)])
                  for n in names[1:]]
        print(f"| {what} | {' | '.join(cells)} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    print(f"\n(each cell: the rounds in order; ratios of the medians; machine at the end: {machine_line()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
