#!/usr/bin/env python
"""Train or evaluate any variant of the variant table with the published or the synthetic settings.

    python -m benchmarks variant list
    python -m benchmarks variant train NAME [--preset mimic|synthetic-small] [--data DIR] [--run-dir DIR] [-- FLAGS]
    python -m benchmarks variant evaluate NAME [--preset ...] [--data DIR] [--run-dir DIR] [--results DIR] [-- FLAGS]
    python -m benchmarks variant evaluate-all [--preset ...] [--data DIR] [--runs DIR] [--results DIR] [-- FLAGS]

The variants are the rows of ``chextriev.model.config.VARIANTS`` (``list`` prints them, in the
table's order, with their labels); nothing here retypes them.

Presets: ``mimic`` (the default: the published settings, frozen ResNet50, crop features of the
original, lr 1e-4, batch 16 x accumulation 8, Adam, plateau schedule, early stop; ``--data`` is
the MIMIC-CXR-JPG folder with the Chest ImaGenome scene graphs) or ``synthetic-small`` (the CPU
preset; ``--data`` defaults to ``data/synthetic``, drawn with ``chextriev synth`` when absent).

* ``train``: ``chextriev train`` into ``--run-dir`` (default ``runs/<dataset>/<variant>``).
* ``evaluate``: the run's best checkpoint on the test split, twice: ``skip=False`` with
  localization into ``RESULTS/<variant>/no-skip`` (the published table's setting) and
  ``skip=True`` into ``RESULTS/<variant>/skip`` (``RESULTS`` default ``results/<dataset>``).
* ``evaluate-all``: ``evaluate`` for every variant of the table that has a checkpoint under
  ``--runs`` (default ``runs/<dataset>``; a run folder per variant, named after it), then
  ``RESULTS/summary.md`` (skip=False) and ``summary-skip.md`` in the published table's layout.

Flags after ``--`` go to ``chextriev train`` / ``chextriev evaluate`` unchanged. Exit status:
0 on success, 2 for a usage error (unknown variant or preset, no data, no checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks.harness import REPO_ROOT
from chextriev.errors import UnknownNameError
from chextriev.model.config import VARIANT_LABELS, VARIANTS

log = logging.getLogger("variant")
PRESETS = {"mimic": "mimic", "synthetic-small": "synthetic"}  # preset -> dataset folder name
SYNTH_PATIENTS = 600


class UsageError(Exception):
    """A request that cannot run as given (message says what to do)."""


def _chextriev(argv: list[str]) -> int:
    from chextriev_cli.main import main

    log.info("chextriev %s", " ".join(argv))
    return main(argv)


def _variant(name: str) -> str:
    key = name.lower()
    if key not in VARIANTS:
        raise UsageError(str(UnknownNameError("model variant", name, VARIANTS)))
    return key


def _data(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    if args.preset == "mimic":
        raise UsageError("preset mimic needs --data <MIMIC-CXR-JPG folder with Chest ImaGenome scene graphs>")
    data = REPO_ROOT / "data" / "synthetic"
    if not (data / "manifest.csv").is_file():
        log.info("drawing the synthetic archive in %s (%d patients)", data, SYNTH_PATIENTS)
        if _chextriev(["synth", "--out", str(data), "--patients", str(SYNTH_PATIENTS), "--seed", "0"]) != 0:
            raise UsageError(f"could not draw the synthetic archive in {data}")
    return data


def _dataset(args: argparse.Namespace) -> str:
    return PRESETS[args.preset]


def best_checkpoint(run_dir: Path) -> Path | None:
    """``run_dir/best.ckpt``, else the newest ``*best*.ckpt`` under it, else the newest ``*.ckpt``."""
    if (run_dir / "best.ckpt").is_file():
        return run_dir / "best.ckpt"
    for pattern in ("*best*.ckpt", "*.ckpt"):
        found = sorted(run_dir.rglob(pattern), key=lambda p: p.stat().st_mtime) if run_dir.is_dir() else []
        if found:
            return found[-1]
    return None


def train(args: argparse.Namespace) -> int:
    name = _variant(args.name)
    run_dir = args.run_dir or REPO_ROOT / "runs" / _dataset(args) / name
    return _chextriev(["train", "--variant", name, "--preset", args.preset, "--data", str(_data(args)),
                       "--out", str(run_dir), *args.extra])


def evaluate_one(name: str, run_dir: Path, data: Path, results: Path, extra: list[str], preset: str) -> int:
    checkpoint = best_checkpoint(run_dir)
    if checkpoint is None:
        raise UsageError(f"no checkpoint under {run_dir}: run `python -m benchmarks variant train {name} "
                         f"--preset {preset}` first")
    common = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "test",
              "--k", "3", "5", "10"]
    status = _chextriev([*common, "--no-skip", "--out", str(results / name / "no-skip"), *extra])
    if status == 0:  # the published table is skip=False; the skip=True numbers are written beside it
        status = _chextriev([*common, "--skip", "--no-localization", "--out", str(results / name / "skip"), *extra])
    return status


def evaluate(args: argparse.Namespace) -> int:
    name = _variant(args.name)
    run_dir = args.run_dir or REPO_ROOT / "runs" / _dataset(args) / name
    results = args.results or REPO_ROOT / "results" / _dataset(args)
    return evaluate_one(name, run_dir, _data(args), results, args.extra, args.preset)


def evaluate_all(args: argparse.Namespace) -> int:
    from metrics.summary import main as summary

    runs = args.runs or REPO_ROOT / "runs" / _dataset(args)
    results = args.results or REPO_ROOT / "results" / _dataset(args)
    data = _data(args)
    done, missing, failed = [], [], []
    for name in VARIANTS:
        if best_checkpoint(runs / name) is None:
            missing.append(name)
            continue
        (done if evaluate_one(name, runs / name, data, results, args.extra, args.preset) == 0 else failed).append(name)
    if missing:
        log.warning("no checkpoint under %s for %s: left out of the summary", runs, ", ".join(missing))
    if failed:
        log.error("evaluation failed for %s", ", ".join(failed))
    if not done and not failed:
        raise UsageError(f"no variant has a checkpoint under {runs} (one run folder per variant, named after it)")
    if not done:
        return 1
    results.mkdir(parents=True, exist_ok=True)
    summary([str(results), "--setting", "no-skip", "--out", str(results / "summary.md")])
    summary([str(results), "--setting", "skip", "--out", str(results / "summary-skip.md")])
    return 1 if failed else 0


def list_variants(args: argparse.Namespace) -> int:
    for name, label in VARIANT_LABELS.items():
        print(f"{name:20s} {label}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("list", help="the variant table").set_defaults(func=list_variants)
    for command, func, helptext in (("train", train, "train one variant"),
                                    ("evaluate", evaluate, "evaluate one variant's best checkpoint"),
                                    ("evaluate-all", evaluate_all, "evaluate every trained variant, then the summary")):
        sub = commands.add_parser(command, help=helptext)
        if command != "evaluate-all":
            sub.add_argument("name", help=f"a variant: {', '.join(VARIANTS)}")
            sub.add_argument("--run-dir", type=Path, default=None, help="default runs/<dataset>/<variant>")
        else:
            sub.add_argument("--runs", type=Path, default=None,
                             help="folder of run folders named after the variants (default runs/<dataset>)")
        sub.add_argument("--preset", default="mimic", choices=sorted(PRESETS), help="default mimic (published)")
        sub.add_argument("--data", type=Path, default=None, help="archive folder (synthetic-small: data/synthetic)")
        if command != "train":
            sub.add_argument("--results", type=Path, default=None, help="default results/<dataset>")
        sub.add_argument("extra", nargs="*", help="after --: flags for chextriev train / evaluate")
        sub.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
