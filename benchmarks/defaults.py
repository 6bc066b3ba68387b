"""The commands' defaults (``--compile on``, ``--precision auto``) against ``--compile off`` and ``--precision fp32``.

One command per part, each one run with its variants interleaved (a shared machine's load then
hits them alike; compare the ratios):

    python -m benchmarks defaults --part upload  --seconds 120
    python -m benchmarks defaults --part index   --repeats 2
    python -m benchmarks defaults --part startup --repeats 2
    python -m benchmarks defaults --part warm-start --repeats 2

* ``upload``: four in-process servers (the production gunicorn server, one worker each) of one
  index: default flags, ``--compile off``, ``--precision fp32``, ``--precision fp32 --compile off``;
  one client sends each query image to the four in turn; p50/p90 and the median ``timing_ms`` of
  every stage, and each p50's ratio to the others.
* ``index``: ``chextriev index`` as a user runs it (a fresh process, a fresh index folder) with
  the same variants, plus ``--batch-size`` variants of the defaults (``--batch-sizes``); the
  runs alternate variant by variant, ``--repeats`` times; images/s of the run (after the model
  loaded, as the command reports it) and the process's wall time. The compiled cache is filled
  before the timed runs (its cold start is the ``startup`` part's).
* ``startup``: ``chextriev serve`` from the process start to ``/readyz`` 200, with ``--compile off``,
  with the defaults and an empty compiled cache (cold: it compiles; TorchInductor's own cache
  folder empty too), and with the defaults and the cache that run filled (warm), alternated
  ``--repeats`` times.
* ``warm-start``: what the compiled cache could be, on the trunk alone, each in a fresh process
  (cold: empty caches; warm: the caches a cold run filled): the ahead-of-time package of
  ``chextriev.compiled`` (what the commands use), ``torch.compile`` with TorchInductor's own
  caches (FX graph; ``freezing`` bypasses the AOT-autograd cache), ``torch.compile`` with
  torch.compiler's portable cache artifacts (saved after the cold run, loaded into empty caches),
  and ``torch.compile`` without ``freezing`` (so that the AOT-autograd cache applies too).
  Seconds from the start of compiling (or loading) to the first output, and the process's wall.

The model is the default architecture (V6, ResNet50 roi at 512 px, width 1024) with random weights,
its feature standardisation left unfitted unless ``--fit-images N`` (as a trunk with real
weights behaves: on this random-init trunk a fitted standardisation makes ``auto`` fall back to
fp32, BENCHMARKS.md "Precision"). The archive is drawn by ``chextriev synth`` at 512 px; the index
holds its first ``--index-images`` images, the upload queries are the next ``--queries``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO_ROOT, machine_line

log = logging.getLogger("bench_defaults")

VARIANTS = {  # name: the flags of `chextriev index` / `chextriev serve` beyond the defaults
    "defaults": [],
    "--compile off": ["--compile", "off"],
    "--precision fp32": ["--precision", "fp32"],
    "--precision fp32 --compile off": ["--precision", "fp32", "--compile", "off"],
}
PARTS = ("upload", "index", "startup", "warm-start")


def _env(compile_cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a command as a user runs it: no CHEXTRIEV_COMPILE / _PRECISION."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHEXTRIEV_COMPILE", "CHEXTRIEV_PRECISION")}
    return {**env, "CHEXTRIEV_COMPILE_CACHE": str(compile_cache), **extra}


def _chextriev(*argv: str) -> list[str]:
    return [sys.executable, "-m", "chextriev_cli.main", *argv]


# ------------------------------------------------------------------------------ fixtures
def prepare(work: Path, patients: int, index_images: int, queries: int, fit_images: int) -> dict:
    """The archive, its manifest subset, the checkpoint, the query files and an index of the subset
    (built eagerly: the index is only what the upload part searches)."""
    from benchmarks.harness import archive_images, default_checkpoint, synth_archive

    archive = synth_archive(work / "archive", patients, size=512)
    with open(archive / "manifest.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) - 1 < index_images + queries:
        raise SystemExit(f"the archive has {len(rows) - 1} images: raise --patients")
    subset = archive / f"subset-{index_images}.csv"  # beside manifest.csv: its relative paths resolve
    with open(subset, "w", newline="") as handle:
        csv.writer(handle).writerows(rows[: 1 + index_images])
    images, boxes, records = archive_images(archive, index_images + queries)
    name = f"v6-fit{fit_images}.ckpt"
    # Drawn in a spawned child: the upload part forks its servers from this process, and a child
    # forked after torch ran its OpenMP team here hangs in its first parallel region (libgomp).
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        checkpoint = pool.apply(default_checkpoint, (work / name, images[:fit_images], boxes[:fit_images]))
    query_files = [Path(r.source) for r in records[index_images:index_images + queries]]
    index_dir = work / f"index-{index_images}"
    if not (index_dir / "manifest.json").is_file():
        run = subprocess.run(_chextriev("index", "--data", str(archive), "--manifest", str(subset),
                                        "--checkpoint", str(checkpoint), "--index-dir", str(index_dir),
                                        "--compile", "off", "--precision", "fp32", "--json"),
                             cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                             env=_env(work / "compiled-unused"))
        if run.returncode != 0 or json.loads(run.stdout)["index_size"] != index_images:
            shutil.rmtree(index_dir, ignore_errors=True)
            raise SystemExit(f"indexing the subset failed:\n{run.stdout[-1000:]}\n{run.stderr[-3000:]}")
    return {"archive": archive, "subset": subset, "checkpoint": checkpoint, "queries": query_files,
            "index_dir": index_dir}


# ------------------------------------------------------------------------------ upload
def part_upload(fixtures: dict, args) -> None:
    from benchmarks.load_test import STAGES, compare_precisions, serve_in_process

    os.environ.pop("CHEXTRIEV_COMPILE", None)
    os.environ.pop("CHEXTRIEV_PRECISION", None)
    os.environ["CHEXTRIEV_COMPILE_CACHE"] = str(args.compile_cache)
    settings = {"defaults": {}, "--compile off": {"compile": "off"}, "--precision fp32": {"precision": "fp32"},
                "--precision fp32 --compile off": {"precision": "fp32", "compile": "off"}}
    bases = {}
    for name, options in settings.items():
        started = time.perf_counter()
        bases[name] = serve_in_process(fixtures["checkpoint"], None, fixtures["index_dir"], 0, 4, "auto",
                                       args.threads, 1, precision=options.get("precision", "auto"),
                                       compile=options.get("compile", "on"))
        log.info("server %s ready in %.1f s", name, time.perf_counter() - started)
    images = [path.read_bytes() for path in fixtures["queries"]]
    result = compare_precisions(bases, images, args.seconds, 10, {})
    print(f"machine: {machine_line()}")
    print(f"upload search, one client, each query to the {len(bases)} servers in turn, {args.seconds:.0f} s; "
          f"{len(images)} query images not indexed; index of {args.index_images} images; checkpoint "
          f"{fixtures['checkpoint'].name}")
    print()
    print("| serve flags | requests | p50 ms | p90 ms | " + " | ".join(STAGES) + " |")
    print("|---" * (4 + len(STAGES)) + "|")
    for name, row in result.items():
        print(f"| {name} | {row['requests']} | {row['p50_ms']} | {row['p90_ms']} | "
              + " | ".join(str(row["stages"][s]) for s in STAGES) + " |")
    _ratios({name: row["p50_ms"] for name, row in result.items()}, "p50")


def _ratios(values: dict[str, float | None], what: str) -> None:
    """Each variant's figure against the defaults': ``defaults / variant``."""
    base = values.get("defaults")
    if not base:
        return
    print()
    for name, value in values.items():
        if name != "defaults" and value:
            print(f"{what} defaults / {name}: {base / value:.2f}")


# ------------------------------------------------------------------------------ index
def part_index(fixtures: dict, args) -> None:
    variants = dict(VARIANTS)
    for size in args.batch_sizes:
        variants[f"defaults, --batch-size {size}"] = ["--batch-size", str(size)]
    cache = args.compile_cache

    def run(name: str, flags: list[str]) -> dict:
        index_dir = Path(tempfile.mkdtemp(prefix="bench-defaults-index-", dir=args.work))
        started = time.perf_counter()
        done = subprocess.run(_chextriev("index", "--data", str(fixtures["archive"]), "--manifest",
                                         str(fixtures["subset"]), "--checkpoint", str(fixtures["checkpoint"]),
                                         "--index-dir", str(index_dir), "--json", *flags),
                              cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=_env(cache))
        wall = time.perf_counter() - started
        shutil.rmtree(index_dir, ignore_errors=True)
        if done.returncode != 0:
            raise SystemExit(f"chextriev index {' '.join(flags)} failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout)
        compiled = "loaded from the cache" in done.stderr or "compiled in" in done.stderr
        log.info("%s: %.2f images/s, %.1f s run, %.1f s wall%s", name, figures["images_per_second"],
                 figures["seconds"], wall, ", compiled trunk" if compiled else "")
        return {"rate": figures["images_per_second"], "seconds": figures["seconds"], "wall": wall,
                "indexed": figures["indexed"], "compiled": compiled}

    log.info("filling the compiled cache (runs not counted)")
    for name, flags in variants.items():
        if "off" not in flags:
            run(name, flags)
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, flags in variants.items():
            results[name].append(run(name, flags))
    print(f"machine: {machine_line()}")
    print(f"chextriev index, {args.index_images} synthetic 512 px images, a fresh process and index folder per run, "
          f"{args.repeats} runs per variant alternated; compiled cache warm; checkpoint {fixtures['checkpoint'].name}")
    print()
    print("| index flags | images/s (median) | run s (median) | process wall s (median) | trunk |")
    print("|---|---|---|---|---|")
    rates = {}
    for name, rows in results.items():
        rates[name] = statistics.median(r["rate"] for r in rows)
        print(f"| {name} | {rates[name]:.2f} | {statistics.median(r['seconds'] for r in rows):.1f} | "
              f"{statistics.median(r['wall'] for r in rows):.1f} | "
              f"{'compiled' if all(r['compiled'] for r in rows) else 'eager'} |")
    _ratios(rates, "images/s")


# ------------------------------------------------------------------------------ startup
def part_startup(fixtures: dict, args) -> None:
    from chextriev.errors import ChextrievError
    from server.readiness import free_port, wait_ready

    def serve(flags: list[str], cache: Path) -> float:
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(_chextriev("serve", "--index-dir", str(fixtures["index_dir"]), "--checkpoint",
                                              str(fixtures["checkpoint"]), "--port", str(port), *flags),
                                   cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=_env(cache, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor")))
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, timeout=900, interval=0.2)
            return time.perf_counter() - started
        except ChextrievError as error:
            raise SystemExit(f"chextriev serve {' '.join(flags)}: {error}") from None
        finally:
            process.terminate()
            process.wait(timeout=60)

    times: dict[str, list[float]] = {"--compile off": [], "defaults, compiled cache empty (cold)": [],
                                     "defaults, compiled cache filled (warm)": []}
    for repeat in range(args.repeats):
        cold = args.work / f"startup-cache-{repeat}"
        shutil.rmtree(cold, ignore_errors=True)
        times["--compile off"].append(serve(["--compile", "off"], cold))
        times["defaults, compiled cache empty (cold)"].append(serve([], cold))
        times["defaults, compiled cache filled (warm)"].append(serve([], cold))
        log.info("startup round %d: %s", repeat + 1, {k: round(v[-1], 1) for k, v in times.items()})
    print(f"machine: {machine_line()}")
    print(f"chextriev serve (one worker) from the process start to /readyz 200, {args.repeats} rounds alternated; "
          f"checkpoint {fixtures['checkpoint'].name}")
    print()
    print("| serve | seconds to ready (median) | each round |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {' / '.join(f'{v:.1f}' for v in values)} |")


# ------------------------------------------------------------------------------ warm-start
WARM_START_CHILD = r"""
import json, os, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
mode, checkpoint, artifacts = sys.argv[1], sys.argv[2], sys.argv[3]
from chextriev.checkpoint import load_checkpoint
from chextriev.precision import autocast
loaded = load_checkpoint(checkpoint, precision="bf16")
module = loaded.model.feature_module()
with torch.inference_mode():
    x = module.trunk_input(torch.rand(1, 1, loaded.image_size, loaded.image_size))
begin = time.perf_counter()
if mode == "aot":
    from chextriev.compiled import compile_trunk
    trunk = compile_trunk(module, precision="bf16", batch=1, device="cpu")
    assert trunk is not None, "no compiled trunk"
    run = trunk
else:
    if mode == "jit-mega" and os.path.exists(artifacts):
        torch.compiler.load_cache_artifacts(open(artifacts, "rb").read())
    options = {} if mode == "jit-nofreeze" else {"freezing": True}
    run = torch.compile(module.trunk, options=options)
with torch.inference_mode(), autocast("bf16", "cpu"):
    run(x)
first = time.perf_counter() - begin
if mode == "jit-mega" and not os.path.exists(artifacts):
    saved = torch.compiler.save_cache_artifacts()
    open(artifacts, "wb").write(saved[0])
times = []
with torch.inference_mode(), autocast("bf16", "cpu"):
    for _ in range(5):
        t = time.perf_counter(); run(x); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"first": first, "process": time.perf_counter() - started, "ms": times[2] * 1000}))
"""

WARM_START_MODES = {
    "aot": "ahead-of-time package (chextriev.compiled, in use)",
    "jit-fx": "torch.compile, TorchInductor caches (FX graph)",
    "jit-mega": "torch.compile, portable cache artifacts",
    "jit-nofreeze": "torch.compile without freezing (FX graph + AOT autograd caches)",
}


def part_warm_start(fixtures: dict, args) -> None:
    def child(mode: str, folder: Path) -> dict:
        env = _env(folder / "compiled", TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"),
                   BENCH_THREADS=str(args.threads or 2))
        done = subprocess.run([sys.executable, "-c", WARM_START_CHILD, mode, str(fixtures["checkpoint"]),
                               str(folder / "artifacts.bin")], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"warm-start {mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    folders = {mode: args.work / f"warm-start-{mode}" for mode in WARM_START_MODES}
    cold, warm = {}, {mode: [] for mode in WARM_START_MODES}
    for mode, folder in folders.items():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cold[mode] = child(mode, folder)
        if mode == "jit-mega":  # the warm runs start from empty TorchInductor caches + the artifacts
            shutil.rmtree(folder / "inductor", ignore_errors=True)
        log.info("%s cold: %s", mode, cold[mode])
    for _ in range(args.repeats):
        for mode, folder in folders.items():
            if mode == "jit-mega":
                shutil.rmtree(folder / "inductor", ignore_errors=True)
            warm[mode].append(child(mode, folder))
            log.info("%s warm: %s", mode, warm[mode][-1])
    print(f"machine: {machine_line()}")
    print(f"the ResNet50 trunk at 512 px, bf16, batch 1, each in a fresh process; warm runs alternated, "
          f"{args.repeats} each; the trunk ms is one process's median of 5 calls (not interleaved)")
    print()
    print("| compiled cache | cold: compile to first output s | warm: load to first output s (median) "
          "| warm: process wall s (median) | trunk ms |")
    print("|---|---|---|---|---|")
    for mode, label in WARM_START_MODES.items():
        rows = warm[mode]
        print(f"| {label} | {cold[mode]['first']:.1f} | {statistics.median(r['first'] for r in rows):.1f} | "
              f"{statistics.median(r['process'] for r in rows):.1f} | "
              f"{statistics.median(r['ms'] for r in rows):.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-defaults",
                        help="archive, checkpoint, index and caches (kept for reruns; default %(default)s)")
    parser.add_argument("--patients", type=int, default=60, help="patients of the synthetic archive")
    parser.add_argument("--index-images", type=int, default=48, help="images indexed (default 48)")
    parser.add_argument("--queries", type=int, default=10, help="upload query images, not indexed")
    parser.add_argument("--fit-images", type=int, default=0,
                        help="images the feature standardisation is fitted on (default 0: unfitted)")
    parser.add_argument("--seconds", type=float, default=120, help="upload: seconds of requests")
    parser.add_argument("--repeats", type=int, default=2, help="index, startup, warm-start: rounds")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32],
                        help="index: --batch-size variants of the defaults (default 32; the default is 16)")
    parser.add_argument("--threads", type=int, default=None, help="upload, warm-start: torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    args.compile_cache = args.work / "compiled"
    fixtures = prepare(args.work, args.patients, args.index_images, args.queries, args.fit_images)
    {"upload": part_upload, "index": part_index, "startup": part_startup,
     "warm-start": part_warm_start}[args.part](fixtures, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
