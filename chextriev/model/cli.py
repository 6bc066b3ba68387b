"""``chextriev model``: models that need no training.

``chextriev model init --backbone ENCODER --backbone-weights DIR_OR_FILE --data ARCHIVE
--out-file model.ckpt`` makes an index-ready checkpoint from a chest X-ray foundation encoder
alone (RAD-DINO, BiomedCLIP, CheXzero, MedSigLIP, or any DINOv2 / SigLIP / open_clip checkpoint):
its own global embedding (or ``--embedding regions``: the mean of its 18 anatomy-pooled region
embeddings), the feature standardisation fitted on a sample of ARCHIVE's images. No label is
read. ``chextriev index``, ``serve`` and ``evaluate`` take the checkpoint like a trained one; it
predicts no findings (it has no finding head). With a CLIP-family encoder the checkpoint keeps
the text tower and its tokenizer, for search by text.

``chextriev model encoders`` lists the encoders: where to download each, its licence, the files
``--backbone-weights`` expects.
"""

from __future__ import annotations

import argparse
import logging

from chextriev.cli_options import (
    add_data_option,
    add_device_option,
    add_json_option,
    add_out_file,
    print_json,
    resolve_device,
)
from chextriev.model.encoders.table import ENCODERS

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="models without training: an index-ready encoder checkpoint "
                                                 "made with no labels (model init), the encoder table",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION")
    actions.required = True
    init = actions.add_parser("init", help="an index-ready checkpoint from a foundation encoder, no labels read",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("--backbone", required=True, choices=tuple(ENCODERS), metavar="ENCODER",
                      help=f"the encoder: one of {', '.join(ENCODERS)}")
    init.add_argument("--backbone-weights", default=None, metavar="DIR_OR_FILE",
                      help="the encoder's downloaded files, in its library's own format (`chextriev model encoders` "
                           "says which); unset: its architecture with random weights (tests and benchmarks only)")
    add_data_option(init, required=True, help="the archive whose images fit the feature standardisation (any layout "
                                              "`chextriev index` reads); no label is read")
    add_out_file(init, required=True, help="the checkpoint to write")
    init.add_argument("--embedding", default="global", choices=("global", "regions"),
                      help="global: the encoder's own image embedding (CLS / pooled, as its published retrieval "
                           "figures use it); regions: the mean of its 18 anatomy-pooled region embeddings")
    init.add_argument("--standardize", default="auto", choices=("auto", "on", "off"),
                      help="per-channel standardisation with the archive's statistics; auto: on for image-only "
                           "encoders, off for joint image-text embeddings (keeps text search exact)")
    init.add_argument("--sample", type=int, default=512, metavar="N",
                      help="frontal images drawn at random from the archive to fit the standardisation")
    init.add_argument("--text", action=argparse.BooleanOptionalAction, default=True,
                      help="keep a CLIP-family encoder's text tower and tokenizer (search by text)")
    init.add_argument("--seed", type=int, default=0, help="seed of the sample (and of a random initialisation)")
    init.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_device_option(init)
    init.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")
    add_json_option(init)
    init.set_defaults(func=run_init)
    table = actions.add_parser("encoders", help="the encoders: where to download them, their licences, the files "
                                                "--backbone-weights expects",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_json_option(table, "the table")
    table.set_defaults(func=run_encoders)


def run_init(args: argparse.Namespace) -> int:
    from chextriev.model.init import init_encoder_model

    result = init_encoder_model(args.backbone, args.backbone_weights, args.data, args.out,
                                embedding=args.embedding, standardize=args.standardize, sample=args.sample,
                                text=args.text, seed=args.seed, device=resolve_device(args.device),
                                batch_size=args.batch_size, progress=args.progress)
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"wrote {result.out}: {result.backbone} encoder, {result.embedding} embedding ({result.embedding_dim}-d), "
          f"{'standardised with' if result.standardized else 'statistics fitted on'} {result.images_read} of "
          f"{result.records} frontal images; region boxes from {result.box_source}; no label read")
    print("text search: " + ("yes (the encoder's text tower and tokenizer are in the checkpoint)"
                             if result.text_search else "no"))
    print("predicted findings: none (an encoder model has no finding head)")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def run_encoders(args: argparse.Namespace) -> int:
    from chextriev.model.encoders.files import expected_files

    rows = [{"name": e.name, "title": e.title, "family": e.family, "download": e.source, "licence": e.licence,
             "text_search": e.text, "files": expected_files(e.name), "notes": e.notes} for e in ENCODERS.values()]
    if args.json:
        print_json({"encoders": rows})
        return 0
    for row in rows:
        print(f"{row['name']}: {row['title']}\n  download: {row['download']}\n  licence: {row['licence']}\n"
              f"  --backbone-weights: {row['files']}\n  text search: {'yes' if row['text_search'] else 'no'}"
              + (f"\n  {row['notes']}" if row["notes"] else ""))
    return 0
