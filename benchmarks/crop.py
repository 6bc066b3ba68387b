"""Crop-mode input: the 18 region crops of a full-resolution original (PIL-exact crop and
antialiased resize, what ``crop`` mode does now) vs the earlier path (resize the original to
``image_size``, then RoIAlign crops of the resized image), interleaved in one run.

    .venv/bin/python -m benchmarks crop [--side 2560] [--image-size 512] [--repeats 7]

Prints the median time per image of both (the ResNet50 passes over the 18 crops, the same in
both, are not included) and the share of the original's pixels each crop keeps.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from benchmarks.harness import interleaved, machine_line, median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=2560, help="original image side (px)")
    parser.add_argument("--image-size", type=int, default=512, help="the earlier path's resized side")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    from torchvision.ops import roi_align

    from chextriev.anatomy.atlas import default_template
    from chextriev.model.preprocess import crop_regions, prepare_image

    torch.set_num_threads(1)
    original = np.random.default_rng(0).random((args.side, args.side)).astype(np.float32)
    boxes = (default_template() * args.side).astype(np.float32)
    scale = args.image_size / args.side

    def earlier() -> torch.Tensor:
        resized = prepare_image(original, args.image_size)[None]
        rois = torch.cat([torch.zeros(18, 1), torch.from_numpy(boxes * scale)], dim=1)
        return roi_align(resized, rois, output_size=(args.crop_size,) * 2, spatial_scale=1.0, sampling_ratio=2,
                         aligned=True)

    def now() -> torch.Tensor:
        return crop_regions(original, boxes, args.crop_size)

    times = interleaved({"earlier (resize, then RoIAlign crops)": earlier, "now (crops of the original)": now},
                        args.repeats)
    print(f"machine: {machine_line()}; original {args.side} px, earlier path at {args.image_size} px, "
          f"{args.repeats} interleaved repetitions")
    for name, values in times.items():
        print(f"{name}: median {median_ms(values):.0f} ms per image")
    c = args.crop_size
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # distinct source pixels behind each 224 x 224 crop: earlier from the resized image, now from the original
    kept = (np.minimum(w * scale, c) * np.minimum(h * scale, c)) / (np.minimum(w, c) * np.minimum(h, c))
    print(f"detail the earlier path kept of the published crop (source pixels, per region): median "
          f"{np.median(kept):.0%}, range {kept.min():.0%}-{kept.max():.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
