"""``chextriev train``: train one variant or baseline and write its checkpoints.

Also registers ``chextriev train-detector`` from :mod:`chextriev.anatomy.cli` when that module
exists (the CLI dispatcher lists this module for both commands).
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from chextriev.cli_options import add_data_option, add_epochs_option, add_out_dir
from chextriev.model.config import BACKBONES, VARIANTS, WEIGHTS_FORMATS
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
    add_data_option(parser, required=True, help="archive folder (any layout load_records reads)")
    add_out_dir(parser, required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--class-list", default="imagenome",
                        help="class list for readers that need one (imagenome, nih, chexpert)")
    parser.add_argument("--uncertainty", default=None, choices=("ones", "zeros", "mask"),
                        help="CheXpert: uncertain labels become 1, 0 or masked out of the loss (the reader's default: mask)")
    parser.add_argument("--blank", default=None, choices=("zeros", "mask"),
                        help="CheXpert: not-mentioned labels become 0 (the reader's default) or masked")
    add_epochs_option(parser, dest="max_epochs", aliases=("--max-epochs",),
                      help="at most N epochs, early stopping may end sooner (default: the preset's)")
    parser.add_argument("--backbone", default=None,
                        help=f"one of: {', '.join(BACKBONES)} (unset: the preset's)")
    parser.add_argument("--backbone-weights", default=None,
                        help="local state-dict file of the backbone (unset: random init, logged)")
    parser.add_argument("--backbone-weights-format", default=None,
                        help=f"one of: {', '.join(WEIGHTS_FORMATS)} (unset: torchvision, the .pth file "
                             "torchvision downloads; xrv: a torchxrayvision DenseNet121 state dict, one channel, "
                             "224 px, their [-1024, 1024] intensities)")
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
    backbone = {"backbone": args.backbone, "backbone_weights_format": args.backbone_weights_format}
    check_backbone(args.backbone or settings.model.get("backbone", variant.backbone),
                   args.backbone_weights_format or "torchvision")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    read_options = {"class_list": args.class_list}
    read_options.update({k: v for k, v in (("uncertainty", args.uncertainty), ("blank", args.blank)) if v})
    result = train(
        args.data, args.out, read_options=read_options, variant=args.variant.lower(), preset=args.preset, max_epochs=args.max_epochs,
        backbone_weights=args.backbone_weights, train_backbone=args.train_backbone, seed=args.seed,
        devices=args.devices, strategy=args.strategy, precision=args.precision, cache_dir=args.cache_dir,
        batch_size=args.batch_size, lr=args.lr, progress=args.progress, model_overrides=backbone,
    )
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"trained {args.variant} ({args.preset}); splits {result.splits}; best validation mAP@10 {score}")
    print(f"best checkpoint: {result.best}")
    print(f"last checkpoint: {result.last}")
    return 0
