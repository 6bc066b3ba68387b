"""``chextriev train``: train one variant or baseline and write its checkpoints.

``chextriev shards write --data ARCHIVE --out DIR --max-side N --shard-size S``: the archive
as preprocessed tar shards (downscaled images + labels + boxes, :mod:`chextriev.training.shards`),
for ``chextriev train --data DIR`` (detected) or ``--shards DIR`` on network storage.

Also registers ``chextriev train-detector`` from :mod:`chextriev.anatomy.cli` when that module
exists (the CLI dispatcher lists this module for both commands).
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from chextriev.cli_options import add_data_option, add_epochs_option, add_out_dir
from chextriev.model.config import ATTENTIONS, BACKBONES, POOLINGS, VARIANTS, WEIGHTS_FORMATS
from chextriev.training.augment import AUGMENTATIONS
from chextriev.training.presets import PRESETS

log = logging.getLogger(__name__)


def _devices(value: str):
    if value in ("auto", "cpu"):
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model variant (V0..V6) or baseline; writes RUN_DIR/best.ckpt and last.ckpt",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", default="v6", help=f"one of: {', '.join(VARIANTS)}")
    parser.add_argument("--preset", default="synthetic-small", help=f"one of: {', '.join(PRESETS)}")
    source = parser.add_mutually_exclusive_group(required=True)
    add_data_option(source, help="archive folder (any layout load_records reads, or a shard folder)")
    source.add_argument("--shards", type=Path, metavar="DIR",
                        help="shard folder written by `chextriev shards write`")
    parser.add_argument("--augment", default=None,
                        help="training augmentation, overrides the preset's: one of: " + ", ".join(AUGMENTATIONS))
    add_out_dir(parser, required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--class-list", default="imagenome",
                        help="class list for readers that need one: imagenome, nih, chexpert, nih8 (the 8 boxed "
                             "ChestX-ray8 diseases), chexpert5 (the 5 competition observations), abnormal (one output: "
                             "any finding vs none, from the dataset's own No Finding / normal flag)")
    parser.add_argument("--uncertainty", default=None, choices=("ones", "zeros", "mask"),
                        help="CheXpert: uncertain labels become 1, 0 or masked out of the loss (the reader's default: mask)")
    parser.add_argument("--blank", default=None, choices=("zeros", "mask"),
                        help="CheXpert: not-mentioned labels become 0 (the reader's default) or masked")
    add_epochs_option(parser, dest="max_epochs", aliases=("--max-epochs",),
                      help="at most N epochs, early stopping may end sooner (default: the preset's)")
    parser.add_argument("--backbone", default=None,
                        help=f"one of: {', '.join(BACKBONES)} (unset: the preset's); a foundation encoder "
                             "(rad-dino, biomedclip, chexzero, medsiglip, ...) trains the variant on its frozen "
                             "patch tokens at its own input side")
    parser.add_argument("--backbone-weights", default=None, metavar="PATH",
                        help="the backbone's local weights: a CNN's state-dict file, or a foundation encoder's "
                             "downloaded files in its library's format (`chextriev model encoders` lists them); "
                             "unset: random init, logged")
    parser.add_argument("--backbone-weights-format", default=None,
                        help=f"one of: {', '.join(WEIGHTS_FORMATS)} (unset: torchvision, the .pth file "
                             "torchvision downloads; xrv: a torchxrayvision DenseNet121 state dict, one channel, "
                             "224 px, their [-1024, 1024] intensities)")
    parser.add_argument("--pooling", default=None, choices=POOLINGS,
                        help="global classifier (resnet50, resnet50-projected): pooling of the backbone map, "
                             "avg (published), max, lse (log-sum-exp) or pcam (probabilistic CAM, Ye et al. 2020: "
                             "each class pools with its own probability map, also its heatmap)")
    parser.add_argument("--attention", default=None, choices=ATTENTIONS,
                        help="global classifier: attention map over the backbone map before pooling (X_RAY's): "
                             "channel (squeeze-and-excitation), spatial (DANet position attention), pyramid "
                             "(feature pyramid attention); default none")
    parser.add_argument("--train-backbone", action=argparse.BooleanOptionalAction, default=False,
                        help="fine-tune the backbone (no feature cache)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--devices", type=_devices, default="auto",
                        help="Lightning devices: auto, N, or GPU ids 0,1 (default auto: every GPU, else 1 CPU "
                             "process); without a GPU, N > 1 trains in N CPU processes (DDP, gloo)")
    parser.add_argument("--strategy", default="auto",
                        help="Lightning strategy (default auto: ddp_spawn for N CPU processes, ddp for several GPUs; "
                             "plain ddp, ddp_spawn, ddp_fork, ddp_notebook get find_unused_parameters=True)")
    parser.add_argument("--precision", default=None, help="default bf16-mixed on GPU, 32-true on CPU")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="frozen-feature cache (default $CHEXTRIEV_CACHE or ~/.cache/chextriev/features)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is much faster on a CPU shared with other jobs)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bar on stderr")
    parser.set_defaults(func=run_train)
    register_shards(subparsers)
    try:
        anatomy_cli = importlib.import_module("chextriev.anatomy.cli")
    except ModuleNotFoundError as error:
        if error.name != "chextriev.anatomy.cli":
            raise
    else:
        if "train-detector" not in subparsers.choices:
            anatomy_cli.register(subparsers)


def run_train(args: argparse.Namespace) -> int:
    from chextriev.model.backbone import check_backbone
    from chextriev.model.config import get_config
    from chextriev.training.fit import train
    from chextriev.training.presets import get_preset

    # unknown names fail before any data is read
    variant, settings = get_config(args.variant), get_preset(args.preset)
    backbone = {"backbone": args.backbone, "backbone_weights_format": args.backbone_weights_format,
                "pooling": args.pooling, "attention": args.attention}
    get_config(args.variant, **{k: v for k, v in backbone.items() if k in ("pooling", "attention") and v})
    check_backbone(args.backbone or settings.model.get("backbone", variant.backbone),
                   args.backbone_weights_format or "torchvision")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.augment is not None:
        from chextriev.training.augment import get_augmentation

        get_augmentation(args.augment)
    if args.shards is not None:
        from chextriev.training.shards import read_index

        read_index(args.shards)  # a missing or unfinished shard folder fails here, with the reason
    data = args.shards if args.shards is not None else args.data
    read_options = {"class_list": args.class_list}
    read_options.update({k: v for k, v in (("uncertainty", args.uncertainty), ("blank", args.blank)) if v})
    result = train(
        data, args.out, augment=args.augment, read_options=read_options, variant=args.variant.lower(), preset=args.preset, max_epochs=args.max_epochs,
        backbone_weights=args.backbone_weights, train_backbone=args.train_backbone, seed=args.seed,
        devices=args.devices, strategy=args.strategy, precision=args.precision, cache_dir=args.cache_dir,
        batch_size=args.batch_size, lr=args.lr, progress=args.progress, model_overrides=backbone,
    )
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"trained {args.variant} ({args.preset}); splits {result.splits}; best validation mAP@10 {score}")
    print(f"best checkpoint: {result.best}")
    print(f"last checkpoint: {result.last}")
    return 0


def register_shards(subparsers) -> None:
    parser = subparsers.add_parser(
        "shards", help="preprocessed training shards (downscaled images + labels + boxes in tar files)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="shards_command", metavar="ACTION")
    actions.required = True
    write = actions.add_parser("write", help="write an archive's records as shards (index.json written last)")
    add_data_option(write, required=True, help="archive folder (any layout load_records reads)")
    add_out_dir(write, required=True, help="shard folder (shard-000000.tar ... and index.json)")
    write.add_argument("--max-side", type=int, default=1024,
                       help="longest side of the stored images (default 1024; keep it >= the model's input size)")
    write.add_argument("--shard-size", type=int, default=1000, help="images per shard file (default 1000)")
    write.add_argument("--class-list", default="imagenome",
                       help="class list for readers that need one (imagenome, nih, chexpert, nih8, chexpert5, abnormal)")
    write.add_argument("--uncertainty", default=None, choices=("ones", "zeros", "mask"),
                       help="CheXpert: uncertain labels become 1, 0 or masked")
    write.add_argument("--blank", default=None, choices=("zeros", "mask"), help="CheXpert: not-mentioned labels")
    write.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="progress bar on stderr")
    write.set_defaults(func=run_shards_write)
    verify = actions.add_parser("verify", help="check every shard's size and sha256 against index.json")
    verify.add_argument("dir", type=Path)
    verify.set_defaults(func=run_shards_verify)


def run_shards_write(args: argparse.Namespace) -> int:
    from chextriev.io.datasets import load_records
    from chextriev.training.shards import read_index, write_shards

    read_options = {"class_list": args.class_list}
    read_options.update({k: v for k, v in (("uncertainty", args.uncertainty), ("blank", args.blank)) if v})
    records = load_records(args.data, **read_options)
    index_path = write_shards(records, args.out, max_side=args.max_side, shard_size=args.shard_size,
                              progress=args.progress)
    index = read_index(args.out)
    size = sum(s["bytes"] for s in index["shards"])
    print(f"wrote {len(index['samples'])} images in {len(index['shards'])} shards ({size / 2**20:.1f} MiB, "
          f"max side {args.max_side}) to {args.out}; {len(index['skipped'])} skipped")
    print(f"index: {index_path}")
    return 0


def run_shards_verify(args: argparse.Namespace) -> int:
    from chextriev.training.shards import read_index

    index = read_index(args.dir, verify=True)
    print(f"{args.dir}: {len(index['shards'])} shards, {len(index['samples'])} images, all sizes and sha256 match")
    return 0
