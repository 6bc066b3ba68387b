"""``chextriev train-ham``: train HAM (hierarchical attention mining) for localization heatmaps.

    chextriev train-ham --data DIR --out RUN_DIR [--preset synthetic-small] [--box-fraction 1.0]

Writes ``RUN_DIR/best.pt`` (lowest validation classification loss), ``last.pt`` and
``history.csv``. Boxes train the maps where the data has them: a synthetic archive's lesion
truth, or the lesion boxes of NIH / CheXpert records. Use the checkpoint with
``chextriev evaluate --cam-method ham --ham-checkpoint RUN_DIR/best.pt``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from chextriev.cli_options import (
    add_data_option,
    add_device_option,
    add_epochs_option,
    add_out_dir,
    resolve_device,
)
from chextriev.model.config import CNN_BACKBONES, WEIGHTS_FORMATS, XRV_INPUT_SIZE

log = logging.getLogger(__name__)

#: the names of ``chextriev.localization.ham_training.HAM_PRESETS`` (not imported here: torch
#: loads only when the command runs; a test keeps the two equal)
PRESET_NAMES = ("tiny", "synthetic-small", "published")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-ham", help="train HAM attention mining for localization heatmaps; writes RUN_DIR/best.pt",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_option(p, required=True, help="archive folder (any layout load_records reads)")
    add_out_dir(p, required=True, help="run folder for the checkpoints")
    p.add_argument("--preset", default="synthetic-small", help=f"one of: {', '.join(PRESET_NAMES)}")
    add_epochs_option(p, help="at most N epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--box-fraction", type=float, default=1.0,
                   help="share of the training images with boxes that train with them (0: labels only)")
    p.add_argument("--class-list", default="imagenome", help="class list for readers that need one")
    p.add_argument("--uncertainty", default=None, choices=("ones", "zeros", "mask"),
                   help="CheXpert: uncertain labels become 1, 0 or masked out of the loss (default mask)")
    p.add_argument("--blank", default=None, choices=("zeros", "mask"), help="CheXpert: not-mentioned labels")
    p.add_argument("--backbone", default=None, help=f"one of: {', '.join(CNN_BACKBONES)} (default: the preset's)")
    p.add_argument("--backbone-weights", default=None, help="local backbone state dict (else random init)")
    p.add_argument("--backbone-weights-format", default=None, help=f"one of: {', '.join(WEIGHTS_FORMATS)} "
                   "(default torchvision; xrv: a torchxrayvision DenseNet121 state dict, 224 px)")
    p.add_argument("--train-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune the trunk (default: the preset's; frozen trunks cache their features)")
    p.add_argument("--remainder-weight", type=float, default=None,
                   help="weight of the masked-out remainder classification loss")
    p.add_argument("--combine", default=None, choices=("attention", "class"),
                   help="heatmap: class map gated by the abnormality attention (default) or the class map")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, split of the box images)")
    add_device_option(p, default="cpu")
    p.add_argument("--workers", type=int, default=None, help="image-reading processes (default: the preset's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on stderr")
    p.set_defaults(func=run_train_ham)


def run_train_ham(args: argparse.Namespace) -> int:
    from chextriev.io.datasets import load_records
    from chextriev.localization.ham_training import get_ham_preset, record_box_truth, train_ham

    get_ham_preset(args.preset)  # unknown names fail before any data is read
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {"class_list": args.class_list}
    options.update({k: v for k, v in (("uncertainty", args.uncertainty), ("blank", args.blank)) if v})
    records = load_records(args.data, **options)
    truth = record_box_truth
    if (args.data / "truth").is_dir():  # a synthetic archive: the drawn lesions' boxes
        truth = synthetic_box_truth(args.data)
    result = train_ham(
        records, args.out, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, box_truth=truth, box_fraction=args.box_fraction, device=resolve_device(args.device), num_workers=args.workers,
        progress=args.progress, backbone=args.backbone, backbone_weights=args.backbone_weights,
        backbone_weights_format=args.backbone_weights_format,
        image_size=XRV_INPUT_SIZE if args.backbone_weights_format == "xrv" else None,  # xrv's native input
        train_backbone=args.train_backbone, loss_remainder=args.remainder_weight, combine=args.combine,
    )
    loss = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
    print(f"trained HAM ({args.preset}) in {result.seconds:.0f} s; splits {result.splits}; "
          f"{result.n_box_images} training images with boxes; best epoch {result.best_epoch} "
          f"(validation classification loss {loss})")
    print(f"best checkpoint: {result.best}")
    print(f"last checkpoint: {result.last}")
    return 0


def synthetic_box_truth(archive: Path):
    """``record -> [(finding, box)]`` from a synthetic archive's lesion truth."""
    from chextriev.synth.archive import load_lesions

    def read(record):
        return [(lesion.finding, tuple(lesion.box)) for lesion in load_lesions(archive, record.image_id)]

    return read
