"""The backbone trunk on the CPU: a batch whole or in chunks, eager or compiled (``--compile``).

    python -m benchmarks trunk --batch 16 --repeats 5

Builds the default architecture's trunk (ResNet50 at 512 px unless ``--backbone`` /
``--image-size`` say otherwise; random weights: speed does not depend on them), then times one
``feature_map`` call on a batch of ``--batch`` images for every combination of

* chunks: the batch in one trunk call (what the project does), or one image per call (an
  alternative measured and not adopted: BENCHMARKS.md "Compiled trunk");
* trunk: eager, or compiled ahead of time by AOTInductor (``chextriev.compiled``, what
  ``--compile on`` runs: loaded from the compiled cache when there, else compiled into it);

in each ``--precision``. The combinations run interleaved, repetition by repetition, so that a
noisy shared machine slows them alike; it prints the median milliseconds per image of each and
the ratios to eager whole-batch, and the smallest cosine of every variant's features to eager.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time

log = logging.getLogger("bench_trunk")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="v6")
    parser.add_argument("--backbone", default=None, help="override the variant's backbone")
    parser.add_argument("--image-size", type=int, default=None, help="override the variant's input side")
    parser.add_argument("--batch", type=int, default=16, help="images per call (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (default 5)")
    parser.add_argument("--precision", nargs="+", default=["bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled trunk")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numpy as np
    import torch

    from benchmarks.harness import machine_line
    from chextriev.compiled import compile_trunk
    from chextriev.model.build import build_from_config
    from chextriev.model.config import get_config
    from chextriev.precision import autocast, prepare_model

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("backbone", args.backbone), ("image_size", args.image_size)) if v}
    config = get_config(args.variant, **overrides)
    torch.manual_seed(0)
    base = build_from_config(config).eval()
    images = torch.rand(args.batch, 1, config.image_size, config.image_size)
    print(f"machine: {machine_line()}")
    print(f"trunk: {config.backbone} at {config.image_size} px, batch {args.batch}, {args.repeats} repeats")
    print()
    print("| precision | chunks | trunk | ms / image | vs eager whole batch | feature cosine min |")
    print("|---|---|---|---|---|---|")
    for precision in args.precision:
        model = prepare_model(copy.deepcopy(base), precision)
        module = model.feature_module()
        compiled = None if args.no_compile else compile_trunk(module, precision=precision, batch=args.batch,
                                                               device="cpu")
        variants = [(chunks, trunk) for chunks in ("whole", "one by one")
                    for trunk in (("eager", "compiled") if compiled else ("eager",))]

        def run(chunks: str, trunk: str, module=module, compiled=compiled, precision=precision):
            module.compiled_trunk = compiled if trunk == "compiled" else None
            with torch.inference_mode(), autocast(precision, "cpu"):
                if chunks == "whole":
                    return module.feature_map(images)
                return torch.cat([module.feature_map(image) for image in images.split(1)])

        reference = None
        outputs = {}
        for variant in variants:  # warm up (compiles) and keep the outputs
            started = time.perf_counter()
            outputs[variant] = run(*variant).float()
            log.info("%s %s %s: first call %.1f s", precision, *variant, time.perf_counter() - started)
        reference = outputs[("whole", "eager")]
        times = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for variant in variants:
                started = time.perf_counter()
                run(*variant)
                times[variant].append((time.perf_counter() - started) * 1000 / args.batch)
        base_ms = float(np.median(times[("whole", "eager")]))
        for variant in variants:
            ms = float(np.median(times[variant]))
            a = reference.flatten(1)
            b = outputs[variant].flatten(1)
            cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())
            print(f"| {precision} | {variant[0]} | {variant[1]} | {ms:.0f} | {base_ms / ms:.2f}x | {cosine:.6f} |")
        if not args.no_compile and (compiled is None or compiled.failed):
            print(f"\n{precision}: no compiled trunk (see the log): the compiled rows ran eagerly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
