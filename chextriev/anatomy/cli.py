"""`chextriev train-detector`: train the anatomy detector on a dataset with region boxes.

    chextriev train-detector --data DIR --out-file detector.pt [--epochs 20] [--image-size 512]
        [--backbone small|resnet18|resnet50] [--device auto|cpu|cuda|cuda:N]

Trains on the records of the ``train`` split, then reports the mean IoU against the true
region boxes of the validation records (``validate`` split) for the detector and for the atlas
fitted on the training records.
"""

from __future__ import annotations

import argparse
import json
import logging

from chextriev.cli_options import (
    add_data_option,
    add_device_option,
    add_epochs_option,
    add_out_file,
    resolve_device,
)

# The backbone names of chextriev.anatomy.detector_nets.BACKBONES, here so that argument parsing
# does not import torch (tests/test_cli_startup.py checks that the two agree).
BACKBONES = ("resnet50", "resnet18", "small")

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("train",)
VALIDATION_SPLITS = ("validate", "val", "valid", "validation")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-detector",
        help="train the anatomy (region box) detector",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_option(parser, required=True,
                    help="dataset folder with region boxes (synthetic archive, MIMIC + ImaGenome)")
    add_out_file(parser, required=True, aliases=("--out",), help="detector file to write (e.g. runs/detector.pt)")
    add_epochs_option(parser, default=20, help="training epochs")
    parser.add_argument("--image-size", type=int, default=512, help="square input size in pixels")
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet50",
                        help="resnet50, resnet18, or small (CPU)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default per backbone)")
    parser.add_argument("--backbone-weights", default=None, help="local torchvision ResNet state dict (optional)")
    add_device_option(parser, help="torch device for training")
    parser.add_argument("--max-train", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="scale/shift jitter of the training images")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chextriev.anatomy.atlas import Atlas
    from chextriev.anatomy.detector import AnatomyDetector
    from chextriev.anatomy.evaluation import evaluate_box_sources
    from chextriev.anatomy.training import train_detector
    from chextriev.errors import ChextrievError
    from chextriev.io.datasets import load_records

    records = load_records(args.data)
    with_boxes = [r for r in records if r.boxes is not None and r.box_mask.any()]
    if not with_boxes:
        raise ChextrievError(f"{args.data}: no record has region boxes; the detector trains on ImaGenome-format boxes")
    train = [r for r in with_boxes if r.split in TRAIN_SPLITS]
    validation = [r for r in with_boxes if r.split in VALIDATION_SPLITS]
    if not train:
        raise ChextrievError(f"{args.data}: no record in the 'train' split among {len(with_boxes)} records with boxes")
    if args.max_train:
        train = train[: args.max_train]
    device = resolve_device(args.device)
    log.info("train-detector: %d training, %d validation images, device %s", len(train), len(validation), device)
    path = train_detector(
        train, args.out, epochs=args.epochs, image_size=args.image_size, backbone=args.backbone,
        batch_size=args.batch_size, device=device, lr=args.lr, backbone_weights=args.backbone_weights,
        seed=args.seed, augment=args.augment,
    )
    detector = AnatomyDetector.load(path, device=device)
    atlas = Atlas.from_dict(detector.extra["atlas"])
    summary = {"detector_file": str(path), "train_images": len(train)}
    if validation:
        result = evaluate_box_sources(validation, atlas, detector)
        summary.update({
            "validation_images": result["images"],
            "atlas_mean_iou": round(result["atlas"]["mean_iou"], 4),
            "detector_mean_iou": round(result["detector"]["mean_iou"], 4),
            "provider_mean_iou": round(result["provider"]["mean_iou"], 4),
        })
        detector.save(path, validation=summary)
    else:
        log.warning("no validation records (split 'validate'): mean IoU not reported")
    print(json.dumps(summary, indent=2))
    return 0
