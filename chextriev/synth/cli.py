"""`chextriev synth`: generate a synthetic archive."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from chextriev.cli_options import add_out_dir
from chextriev.vocab import IMAGENOME_FINDINGS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate a synthetic chest radiograph archive (MIMIC/ImaGenome layout)",
        description="Draw frontal chest radiograph phantoms with findings, region boxes, scene graphs, "
                    "lesion masks, split and manifest CSVs. Same seed, same bytes.",
    )
    add_out_dir(parser, required=True, help="output folder (must not hold an archive yet)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients (1-4 studies each)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--dicom-share", type=float, default=0.2, help="share of images written as DICOM")
    parser.add_argument("--normal-share", type=float, default=0.35, help="share of studies with no finding")
    parser.add_argument("--png16-share", type=float, default=0.3, help="share of PNGs written 16-bit")
    parser.add_argument("--workers", type=int, default=1, help="drawing processes (the output is the same)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chextriev.synth.writer import SynthConfig, write_archive

    config = SynthConfig(out=args.out, patients=args.patients, seed=args.seed, size=args.size,
                         dicom_share=args.dicom_share, normal_share=args.normal_share,
                         png16_share=args.png16_share, workers=args.workers)
    start = time.perf_counter()
    rows = write_archive(config)
    seconds = time.perf_counter() - start
    formats = Counter(row["format"] for row in rows)
    splits = Counter(row["split"] for row in rows)
    normal = sum(1 for row in rows if not any(int(row[f]) for f in IMAGENOME_FINDINGS))
    print(f"wrote {len(rows)} images of {args.patients} patients to {args.out} in {seconds:.1f} s "
          f"({len(rows) / max(seconds, 1e-9):.1f} images/s)")
    print("  formats: " + ", ".join(f"{k} {v}" for k, v in sorted(formats.items())))
    print("  split:   " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    print(f"  normal:  {normal}")
    for finding in IMAGENOME_FINDINGS:
        print(f"  {finding}: {sum(int(row[finding]) for row in rows)}")
    return 0
