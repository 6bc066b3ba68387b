#!/usr/bin/env python
"""Training-input throughput (images/s): the plain folder reader against preprocessed shards.

    .venv/bin/python -m benchmarks shards --data ARCHIVE --out DIR [--max-side 256]
        [--image-size 256] [--images 300] [--repeats 5] [--shard-size 1000] [--patients 600]

Writes ``ARCHIVE``'s records as shards (``chextriev.training.shards.write_shards``, timed) into
``DIR`` unless a complete shard folder of that ``--max-side`` is there, then times the training
data path for the first ``--images`` images of each, the two alternating ``--repeats`` times:

* folder: :class:`chextriev.training.data.ImageDataset` items in record order (each original
  decoded at full resolution, then ``prepare_input`` to ``--image-size``: what every epoch of an
  augmented, ATH or ``--train-backbone`` training reads);
* shards: the same items from :class:`chextriev.training.shards.ShardStream` (tar members read
  front to back, the stored ``--max-side`` images decoded, the same ``prepare_input``).

Prints the median images/s of each, the ratio, and the bytes read per image (what network
storage has to deliver). Both read local files through the page cache after the first pass, so
the ratio shows the decoding and file-count saving, not a network's latency.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.harness import machine_line, synth_archive
from chextriev.anatomy.atlas import Atlas
from chextriev.io.datasets import load_records
from chextriev.model.config import get_config
from chextriev.training.data import ImageDataset
from chextriev.training.shards import (
    ShardStream,
    is_shard_dir,
    load_shard_records,
    read_index,
    write_shards,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    synth_archive(args.data, args.patients)
    records = [r for r in load_records(args.data) if isinstance(r.source, (str, Path))][: args.images]
    write_s = None
    if not (is_shard_dir(args.out) and read_index(args.out)["max_side"] == args.max_side):
        started = time.perf_counter()
        write_shards(records, args.out, max_side=args.max_side, shard_size=args.shard_size)
        write_s = time.perf_counter() - started
    shard_records = load_shard_records(args.out)[: len(records)]
    config = get_config("v6", image_size=args.image_size, backbone="resnet18")
    atlas = Atlas.default()
    folder = ImageDataset(records, config, atlas)
    stored = ImageDataset(shard_records, config, atlas)
    stream = ShardStream(shard_records, stored.item, shuffle=False)

    def time_folder() -> float:
        started = time.perf_counter()
        for i in range(len(folder)):
            folder.item(i)
        return len(folder) / (time.perf_counter() - started)

    def time_shards() -> float:
        started = time.perf_counter()
        count = sum(1 for _ in stream)
        return count / (time.perf_counter() - started)

    time_folder(), time_shards()  # warm the page cache for both
    rates: dict[str, list[float]] = {"folder": [], "shards": []}
    for _ in range(args.repeats):
        rates["folder"].append(time_folder())
        rates["shards"].append(time_shards())
    folder_bytes = sum(Path(r.source).stat().st_size for r in records) / len(records)
    index = read_index(args.out)
    shard_bytes = sum(s["bytes"] for s in index["shards"]) / len(index["samples"])  # images, JSON, tar headers
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(records)} images of {args.data}; model input {args.image_size} px; shards max side {args.max_side}"
          + (f"; shards written in {write_s:.1f} s" if write_s is not None else ""))
    print(f"| reader | images/s (median of {args.repeats}, interleaved) | all runs | bytes read per image |")
    print("|---|---|---|---|")
    print(f"| folder (full-resolution originals) | {median['folder']:.1f} | "
          f"{', '.join(f'{v:.1f}' for v in rates['folder'])} | {folder_bytes / 1024:.0f} KiB |")
    print(f"| shards (tar, sequential) | {median['shards']:.1f} | "
          f"{', '.join(f'{v:.1f}' for v in rates['shards'])} | {shard_bytes / 1024:.0f} KiB |")
    print(f"\nshards / folder: {median['shards'] / median['folder']:.2f}x images/s, "
          f"{folder_bytes / shard_bytes:.1f}x fewer bytes per image")
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
