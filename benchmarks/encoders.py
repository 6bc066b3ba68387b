"""Foundation encoders as backbones: CPU speed beside ResNet50, and the synthetic retrieval table.

    python -m benchmarks encoders speed [--encoders rad-dino biomedclip chexzero medsiglip] \
        [--batch 4] [--repeats 3] [--no-compile]
    python -m benchmarks encoders retrieval --data ARCHIVE --out DIR [--encoder chexzero] \
        [--patients 120] [--epochs 10]

``speed``: every encoder at its native input (RAD-DINO 518 px, BiomedCLIP and CheXzero 224,
MedSigLIP 448) and the default CNN (ResNet50 at 512 px), each as the label-free ``encoder`` model
(ResNet50: the default V6's backbone and region pooling), timed on ``model.extract`` (the frozen
part: the encoder forward and the 18 region poolings) for a batch of ``--batch`` random images:
fp32, bf16 (``--precision bf16``: bf16 weights under autocast), and bf16 compiled (``--compile``: the
trunk exported and compiled ahead of time by TorchInductor, :mod:`chextriev.compiled`; the
compile time is printed, the cache is ``$CHEXTRIEV_COMPILE_CACHE``), the three interleaved repetition by repetition so that the shared machine's load
hits them alike. Per model: milliseconds per image (median), images per second, the weights'
size, and the peak resident memory of a fresh process that builds the model and embeds one
batch (fp32). The weights are random (the architectures' cost does not depend on them).

``retrieval``: on a synthetic archive (``chextriev synth``; drawn when ``--data`` holds none),
one split (the archive's), test images of held-out patients: mAP@10 (SPEC protocol, skip=False,
class average) and AUROC of (1) V6 on the ``synthetic-small`` preset's ResNet18 (the project's
reference row), (2) the label-free model of ``--encoder`` (``chextriev model init``: its global
embedding, standardisation ``auto`` and ``on``; no finding head, so no AUROC), and (3) V6 trained
on that encoder's frozen tokens (the ``synthetic-small`` preset's graph). **Every encoder has
random weights** (none can be downloaded here): the rows show the plumbing, not the encoders'
quality.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_encoders")

NATIVE = ("rad-dino", "biomedclip", "chexzero", "medsiglip")


# ------------------------------------------------------------------------------------ speed
def _model(name: str):
    """The frozen part to time: an encoder's label-free model, or the default V6 (ResNet50)."""
    import torch

    from chextriev.model.build import build_from_config
    from chextriev.model.config import get_config
    from chextriev.model.init import encoder_model_config

    torch.manual_seed(0)
    if name == "resnet50":
        return build_from_config(get_config("v6")).eval()
    from chextriev.model.encoders.table import default_spec

    return build_from_config(encoder_model_config(name, default_spec(name), weights=None)).eval()


def _inputs(model, batch: int):
    import numpy as np

    from chextriev.anatomy.atlas import Atlas

    rng = np.random.default_rng(0)
    images = [rng.random((1024, 1024), dtype=np.float32) for _ in range(batch)]
    boxes = [Atlas.default().boxes_for(1024, 1024)] * batch
    return model.prepare_batch(images, boxes)


def memory_of(name: str, batch: int) -> int:
    """Peak resident memory (MiB) of this process after building ``name`` and one fp32 batch."""
    import torch

    model = _model(name)
    inputs, boxes = _inputs(model, batch)
    with torch.inference_mode():
        model.extract(inputs, boxes)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def speed(args) -> int:
    import copy

    import torch

    from benchmarks.harness import interleaved, machine_line, median_ms
    from chextriev.compiled import compile_trunk
    from chextriev.precision import prepare_model

    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["resnet50", *args.encoders]
    print(f"machine: {machine_line()}")
    print(f"batch {args.batch}, {args.repeats} timed repeats after one warm-up, random weights; "
          f"{'compiled: bf16 TorchInductor' if not args.no_compile else 'compile left out'}")
    print()
    header = ("| backbone | input | weights MB | peak RSS MB (fp32, batch) | fp32 ms/img | bf16 ms/img | "
              "bf16 compiled ms/img | bf16 img/s | fp32 vs ResNet50 |")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for name in names:
        peak = subprocess.run([sys.executable, "-m", "benchmarks", "encoders", "memory", name, "--batch",
                               str(args.batch)], capture_output=True, text=True, check=True).stdout.strip()
        fp32 = _model(name)
        bf16 = prepare_model(copy.deepcopy(fp32), "bf16")
        inputs, boxes = _inputs(fp32, args.batch)
        calls = {"fp32": lambda m=fp32, x=inputs, b=boxes: _run(m, x, b, "fp32"),
                 "bf16": lambda m=bf16, x=inputs, b=boxes: _run(m, x, b, "bf16")}
        compile_s = None
        if not args.no_compile:
            compiled = prepare_model(copy.deepcopy(fp32), "bf16")
            module = compiled.feature_module()
            started = time.perf_counter()
            module.compiled_trunk = compile_trunk(module, precision="bf16", batch=args.batch, device="cpu")
            compile_s = time.perf_counter() - started
            if module.compiled_trunk is None or not module.compiled_trunk.accepts(module.trunk_input(inputs)):
                raise SystemExit(f"{name}: the trunk could not be compiled for its input (see the log)")
            calls["compiled"] = lambda m=compiled, x=inputs, b=boxes: _run(m, x, b, "bf16")
        for fn in calls.values():  # warm-up (oneDNN kernels, allocator)
            fn()
        times = interleaved(calls, args.repeats)
        per_image = {key: median_ms(value) / args.batch for key, value in times.items()}
        weights = sum(p.numel() * 4 for p in fp32.parameters()) / 2**20
        rows[name] = per_image
        base = rows["resnet50"]["fp32"]
        side = fp32.config.image_size
        print(f"| {name} | {side} px | {weights:.0f} | {peak} | {per_image['fp32']:.0f} | {per_image['bf16']:.0f} | "
              + (f"{per_image['compiled']:.0f} (compile {compile_s:.0f} s)" if "compiled" in per_image else "n/a")
              + f" | {1000 / per_image['bf16']:.2f} | {per_image['fp32'] / base:.2f}x |", flush=True)
        del fp32, bf16, calls
    return 0


def _run(model, inputs, boxes, precision: str):
    import torch

    from chextriev.precision import autocast

    with torch.inference_mode(), autocast(precision, "cpu"):
        return model.extract(inputs, boxes)


# ------------------------------------------------------------------------------------ retrieval
def _score(checkpoint: Path, records, images) -> dict:
    import numpy as np

    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.retrieval import neighbors_from_embeddings, retrieval_metrics_at
    from metrics.classification import per_class_auroc

    loaded = load_checkpoint(checkpoint, precision="fp32")
    started = time.perf_counter()
    batch = embed_images(loaded, images, [r.boxes for r in records])
    embed_s = time.perf_counter() - started
    labels = np.stack([r.labels for r in records]).astype(np.float32)
    neighbors, _ = neighbors_from_embeddings(batch.embeddings, 10)
    retrieval = retrieval_metrics_at(neighbors, labels, (10,), skip=False)[10]["class_average"]
    auroc = per_class_auroc(labels, batch.probabilities, loaded.class_names)["mean"] if loaded.has_findings else None
    return {"mAP@10": retrieval["mAP"], "mHR@10": retrieval["mHR"], "AUROC": auroc, "embed_s": embed_s}


def retrieval(args) -> int:
    import numpy as np
    import torch

    from benchmarks.harness import machine_line, synth_archive
    from chextriev.io.datasets import load_records
    from chextriev.io.images import load_image
    from chextriev.model.init import init_encoder_model
    from chextriev.training.data import split_records
    from chextriev.training.fit import train_records

    if args.threads:
        torch.set_num_threads(args.threads)
    archive = synth_archive(Path(args.data), args.patients)
    out = Path(args.out)
    records = load_records(archive)
    splits = split_records(records, seed=0)
    test = splits["test"]
    images = [load_image(r.source) for r in test]
    print(f"machine: {machine_line()}")
    print(f"archive {archive}: {len(records)} images, test {len(test)} images of held-out patients; "
          f"{args.epochs} epochs at most; RANDOM WEIGHTS for every backbone and encoder")
    print()
    print("| model | trained on labels | mAP@10 | mHR@10 | AUROC | train / init s | embed s (test) |")
    print("|---|---|---|---|---|---|---|")
    cache = out / "feature-cache"

    def row(label: str, trained: str, ckpt: Path, seconds: float) -> None:
        scores = _score(ckpt, test, images)
        auroc = "n/a (no finding head)" if scores["AUROC"] is None else f"{scores['AUROC']:.3f}"
        print(f"| {label} | {trained} | {scores['mAP@10']:.3f} | {scores['mHR@10']:.3f} | {auroc} | {seconds:.0f} | "
              f"{scores['embed_s']:.0f} |", flush=True)
        results.append({"model": label, **scores, "seconds": seconds})

    results: list[dict] = []
    started = time.perf_counter()
    reference = train_records(records, out / "v6-resnet18", variant="v6", preset="synthetic-small",
                              max_epochs=args.epochs, progress=False, cache_dir=cache)
    row("V6, ResNet18 (synthetic-small)", "yes", reference.best, time.perf_counter() - started)
    for standardize in ("auto", "on"):
        started = time.perf_counter()
        ckpt = out / f"{args.encoder}-{standardize}.ckpt"
        init_encoder_model(args.encoder, None, archive, ckpt, standardize=standardize, sample=args.sample,
                           progress=False)
        row(f"{args.encoder} no-label, global embedding, --standardize {standardize}", "no", ckpt,
            time.perf_counter() - started)
    started = time.perf_counter()
    tokens = train_records(records, out / f"v6-{args.encoder}", variant="v6", preset="synthetic-small",
                           max_epochs=args.epochs, progress=False, cache_dir=cache,
                           model_overrides={"backbone": args.encoder})
    row(f"V6 on {args.encoder}'s tokens (synthetic-small graph)", "yes", tokens.best, time.perf_counter() - started)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nrandom mAP@10 reference: the label prevalence; {np.mean([r.labels.mean() for r in test]):.3f} "
          "mean label rate on the test images")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks encoders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    fast = actions.add_parser("speed", help="CPU ms per image, memory, throughput beside ResNet50")
    fast.add_argument("--encoders", nargs="+", default=list(NATIVE), choices=NATIVE)
    fast.add_argument("--batch", type=int, default=4)
    fast.add_argument("--repeats", type=int, default=3)
    fast.add_argument("--threads", type=int, default=None)
    fast.add_argument("--no-compile", action="store_true")
    memory = actions.add_parser("memory", help="(internal) peak RSS of one model and batch, in MiB")
    memory.add_argument("name")
    memory.add_argument("--batch", type=int, default=4)
    table = actions.add_parser("retrieval", help="the synthetic retrieval table with encoder rows")
    table.add_argument("--data", required=True, help="synthetic archive folder (drawn when empty)")
    table.add_argument("--out", required=True)
    table.add_argument("--encoder", default="chexzero", choices=NATIVE)
    table.add_argument("--patients", type=int, default=120)
    table.add_argument("--epochs", type=int, default=10)
    table.add_argument("--sample", type=int, default=128, help="model init's standardisation sample")
    table.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.action == "memory":
        print(memory_of(args.name, args.batch))
        return 0
    return speed(args) if args.action == "speed" else retrieval(args)


if __name__ == "__main__":
    sys.exit(main())
