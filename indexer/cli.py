"""``chextriev index``: build or update an index; ``index verify``, ``index repair``,
``index remove``; ``chextriev db upgrade``.

    chextriev index --data ARCHIVE --checkpoint model.ckpt --index-dir idx [--db URL]
        [--device auto|cpu|cuda|cuda:N] [--precision auto|fp32|bf16] [--workers N]
        [--batch-size B] [--wait [SECONDS]] [--preview-side PX] [--json]
        [--devices N [--num-nodes M] [--shard-dir DIR]]
        [--index-type auto|flat|ivf-flat|ivf-pq] [--detector PATH] [--copy-checkpoint]
        [--pseudonymise [--pseudonym-key-file FILE] [--dates shift|year]] [--keep-burned-in]
    chextriev index --data https://pacs.example/dicom-web --checkpoint model.ckpt ...
        [--modality CR DX] [--study-date 20240101-20241231] [--study-uids-file FILE]
        [--dicomweb-token-file FILE | --dicomweb-user USER --dicomweb-password-file FILE]
        [--ca-bundle FILE] [--insecure]
    chextriev index verify --index-dir idx [--db URL] [--sample N] [--json]  # exit 1: they differ
    chextriev index repair --index-dir idx [--db URL]               # rebuild the index
    chextriev index remove --index-dir idx [--db URL] ID [ID ...]
    chextriev db upgrade (--db URL | --index-dir DIR) [--pseudonymise] [--pseudonym-key-file F]
        # schema upgrade in place; a pseudonymised catalog's clear ledger -> keyed hashes

ARCHIVE: a folder (a dataset layout or a plain tree of PNG/JPEG/DICOM), a manifest CSV, an
image file, or an ``http(s)://`` DICOMweb service root (``chextriev.io.sources.open_source``).
``--source`` is the deprecated spelling of ``--data`` (still accepted, with a warning).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

from chextriev.cli_options import (
    add_compile_option,
    add_data_option,
    add_device_option,
    add_json_option,
    add_precision_option,
    print_json,
)
from chextriev.errors import ChextrievError

# indexer.faiss_factory.INDEX_TYPES, here so that argument parsing does not import Faiss
# (tests/test_cli_startup.py checks that the two agree).
INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq")

PREVIEW_SIDE = 1024  # chextriev.io.pixels.PREVIEW_SIDE (not imported: lazy CLI; a test keeps them equal)
DATE_MODES = ("shift", "year")  # chextriev.io.deid.DATE_MODES (not imported: lazy CLI)

TOKEN_ENV = "CHEXTRIEV_DICOMWEB_TOKEN"  # chextriev.io.dicomweb.TOKEN_ENV (not imported: lazy CLI)
PASSWORD_ENV = "CHEXTRIEV_DICOMWEB_PASSWORD"
_WEB_FLAGS = ("modality", "study_date", "study_uids_file", "dicomweb_token_file", "dicomweb_user",
              "dicomweb_password_file", "ca_bundle")

log = logging.getLogger(__name__)


def _common(parser: argparse.ArgumentParser, *, required_dir: bool) -> None:
    parser.add_argument("--index-dir", required=required_dir, type=Path, metavar="DIR",
                        help="folder of the Faiss index (and of the default SQLite catalog)")
    parser.add_argument("--db", default=None,
                        help="SQLAlchemy URL, e.g. postgresql://user@host/db (default "
                             "sqlite:///<index-dir>/catalog.sqlite)")


def _wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", nargs="?", type=float, const=math.inf, default=None,
                        metavar="SECONDS",
                        help="when another run holds the catalog's writer lock, wait for it "
                             "(SECONDS at most; no value: as long as it takes) instead of "
                             "stopping at once")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="index an archive (DICOM/PNG/JPEG) into SQL + Faiss",
        description="Index an archive; `index verify` and `index remove` maintain it.")
    add_data_option(parser, dest="source", type=str, metavar="PATH|URL", aliases=("--source",),
                    help="archive folder, manifest CSV, image file, or an http(s):// DICOMweb "
                         "service root (a PACS)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest CSV (path, patient_id, study_id, view, sex, age, findings); "
                             "only its files are indexed")
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint (.ckpt)")
    _common(parser, required_dir=False)
    add_device_option(parser, help="torch device for the model")
    add_precision_option(parser)
    add_compile_option(parser)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="decoding processes (0 = decode in the main process)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--index-type", default="auto", choices=INDEX_TYPES,
                        help="Faiss index; auto: flat, ivf-flat or ivf-pq by the number of vectors")
    parser.add_argument("--nprobe", type=int, default=16,  # faiss_factory.DEFAULT_NPROBE (no Faiss import here)
                        help="IVF lists searched per query, recorded with the build (a search may ask for more)")
    parser.add_argument("--detector", type=Path, default=None, help="anatomy detector weights")
    parser.add_argument("--copy-checkpoint", action=argparse.BooleanOptionalAction, default=False,
                        help="copy the checkpoint into the index folder (bundle/), so that the "
                             "folder alone can be served (`chextriev serve --index-dir DIR`); "
                             "the checkpoint's path and sha256 are recorded either way")
    parser.add_argument("--pseudonymise", action=argparse.BooleanOptionalAction, default=False,
                        help="de-identify what the catalog stores (DICOM PS3.15 basic profile): "
                             "identifiers and image ids as keyed HMAC-SHA256, UIDs as 2.25.<int> "
                             "from it, dates shifted per patient or cut to the year (key: "
                             "$CHEXTRIEV_PSEUDONYM_KEY or --pseudonym-key-file)")
    parser.add_argument("--pseudonym-key-file", type=Path, default=None, metavar="FILE",
                        help="the pseudonymisation key (else $CHEXTRIEV_PSEUDONYM_KEY)")
    parser.add_argument("--dates", choices=DATE_MODES, default=None,
                        help="with --pseudonymise: shift each patient's dates by a keyed 1..365 "
                             "days (shift, the default) or keep only the year (year)")
    parser.add_argument("--keep-burned-in", action=argparse.BooleanOptionalAction, default=False,
                        help="index DICOMs marked BurnedInAnnotation YES (else skipped: their "
                             "pixels may show patient identifiers)")
    parser.add_argument("--preview-side", type=_non_negative, default=PREVIEW_SIDE,
                        metavar="PX",
                        help="longest side of the preview stored per image, an 8-bit JPEG "
                             "beside the index that the viewer shows and Grad-CAM runs on "
                             "(0: none, the thumbnail is used)")
    scale = parser.add_argument_group(
        "scale-out (Lightning distributed predict; see indexer/README.md)")
    scale.add_argument("--devices", type=_positive, default=None, metavar="N",
                       help="embed with N processes per node, one per device (GPUs, or CPU "
                            "processes with --device cpu); rank 0 walks the source and merges")
    scale.add_argument("--num-nodes", type=_positive, default=1, metavar="M",
                       help="nodes taking part (started by torchrun or SLURM)")
    scale.add_argument("--shard-dir", type=Path, default=None, metavar="DIR",
                       help="folder every node sees for the per-rank shards (unset: "
                            "<index-dir>/shards)")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="sync the Faiss index every N batches (and at the end)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bar on stderr")
    add_json_option(parser, "the run's summary")
    _wait(parser)
    web = parser.add_argument_group("DICOMweb source (--data http(s)://...)")
    web.add_argument("--modality", nargs="+", default=None, metavar="M",
                     help="modalities searched (default CR DX; 'any' for all)")
    web.add_argument("--study-date", default=None, metavar="FROM-TO",
                     help="StudyDate range YYYYMMDD-YYYYMMDD (either end may be left open)")
    web.add_argument("--study-uids-file", type=Path, default=None,
                     help="only these studies: a file of StudyInstanceUIDs, one a line")
    web.add_argument("--dicomweb-token-file", type=Path, default=None,
                     help=f"bearer token file (else ${TOKEN_ENV})")
    web.add_argument("--dicomweb-user", default=None, help="basic-auth user")
    web.add_argument("--dicomweb-password-file", type=Path, default=None,
                     help=f"basic-auth password file (else ${PASSWORD_ENV})")
    web.add_argument("--ca-bundle", type=Path, default=None,
                     help="CA certificates to verify the service's TLS certificate with")
    web.add_argument("--insecure", action=argparse.BooleanOptionalAction, default=False,
                     help="do not verify TLS certificates (logs a warning; not for production)")
    web.add_argument("--page-size", type=int, default=500, help="QIDO-RS results per request")
    parser.set_defaults(func=stops_cleanly(_index))
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION")
    verify = actions.add_parser(
        "verify", help="check the index payload against the catalog",
        description="Checksums of every index file, the ids inside the index against the "
                    "catalog (both ways), and the vectors inside the index against the "
                    "catalog's embeddings. Exit 1 when anything differs.")
    _common(verify, required_dir=True)
    verify.add_argument("--sample", type=int, default=None, metavar="N",
                        help="compare the vectors of N random images (default: all)")
    add_json_option(verify, "the result")
    verify.set_defaults(func=stops_cleanly(_verify))
    repair = actions.add_parser("repair", help="rebuild the index from the catalog")
    _common(repair, required_dir=True)
    _wait(repair)
    repair.set_defaults(func=stops_cleanly(_repair))
    remove = actions.add_parser("remove", help="remove images from the database and the index")
    _common(remove, required_dir=True)
    _wait(remove)
    remove.add_argument("ids", nargs="+", help="database ids or dataset image ids")
    remove.set_defaults(func=stops_cleanly(_remove))

    from indexer.db_cli import register_db

    register_db(subparsers, _common, _wait, stops_cleanly)


def stops_cleanly(handler):
    """``handler`` stopping with one line (:func:`indexer.stops.stop_error`) when the catalog
    database goes away or the disk fills up, instead of a traceback."""
    import functools

    @functools.wraps(handler)
    def run(args) -> int:
        try:
            return handler(args)
        except ChextrievError:
            raise
        except Exception as error:
            from indexer.stops import stop_error

            problem = stop_error(error, index_dir=args.index_dir or Path("index"),
                                 db_url=args.db, committed=None)
            if problem is None:
                raise
            raise problem from error

    return run


def _sessions(args):
    from indexer.engine import open_sessions

    return open_sessions(args.db, args.index_dir)


def _writable(args):
    from indexer.writer import WritableCatalog

    return WritableCatalog(args.index_dir, args.db, wait=args.wait, create=False)


def source_options(args) -> dict:
    """The DICOMweb options of ``args`` (empty for a local source; DICOMweb flags with a local
    source are an error)."""
    from chextriev.io.sources import is_url

    if not is_url(args.source):
        given = [f"--{name.replace('_', '-')}" for name in _WEB_FLAGS if getattr(args, name)]
        if given or args.insecure:
            raise ChextrievError(f"{', '.join(given or ['--insecure'])} only apply to an "
                                 "http(s):// DICOMweb --data")
        return {}
    from chextriev.io.dicomweb import DEFAULT_MODALITIES, credentials_from

    modalities = [m for item in (args.modality or DEFAULT_MODALITIES) for m in item.split(",")]
    return {
        "modalities": () if [m.lower() for m in modalities] == ["any"] else tuple(modalities),
        "study_date": args.study_date,
        "study_uids": args.study_uids_file,
        "credentials": credentials_from(token_file=args.dicomweb_token_file,
                                        user=args.dicomweb_user,
                                        password_file=args.dicomweb_password_file),
        "ca_bundle": args.ca_bundle,
        "insecure": args.insecure,
        "page_size": args.page_size,
    }


def _index(args) -> int:
    from chextriev.cli_options import resolve_device
    from chextriev.io.deid import Deidentifier
    from indexer.decode import IngestPolicy
    from indexer.discovery import open_archive
    from indexer.embedder import ModelEmbedder
    from indexer.pipeline import run_index

    missing = [name for name in ("source", "checkpoint") if getattr(args, name) is None]
    if missing:
        flags = {"source": "--data", "checkpoint": "--checkpoint"}
        raise ChextrievError(f"`chextriev index` needs {' and '.join(flags[m] for m in missing)} "
                             "(or use `index verify` / `index remove`)")
    if not args.checkpoint.is_file():
        raise ChextrievError(f"checkpoint {args.checkpoint} does not exist")
    index_dir = args.index_dir or Path("index")
    if not args.pseudonymise and (args.dates or args.pseudonym_key_file):
        raise ChextrievError("--dates and --pseudonym-key-file only apply with --pseudonymise")
    policy = IngestPolicy(
        Deidentifier.from_env_or_file(args.pseudonym_key_file, dates=args.dates or "shift")
        if args.pseudonymise else None, keep_burned_in=args.keep_burned_in)
    source = open_archive(args.source, manifest=args.manifest, exclude=(index_dir,),
                          **source_options(args))
    source.check()  # an unreachable PACS or refused credentials fail before the model loads
    if args.devices is not None or args.num_nodes > 1:
        return _index_distributed(args, source, index_dir, policy)
    if args.shard_dir is not None:
        raise ChextrievError("--shard-dir only applies with --devices / --num-nodes")
    embedder = ModelEmbedder(args.checkpoint, device=args.device, detector=args.detector,
                             batch_size=args.batch_size, precision=args.precision, compile=args.compile)
    summary = run_index(
        source, embedder=embedder, index_dir=index_dir, db_url=args.db,
        workers=args.workers, batch_size=args.batch_size, index_type=args.index_type,
        device=resolve_device(args.device), policy=policy,
        manifest=args.manifest, checkpoint_every=args.checkpoint_every, nprobe=args.nprobe,
        progress=args.progress, wait=args.wait, preview_side=args.preview_side,
        copy_checkpoint=args.copy_checkpoint)
    if args.json:
        print_json(summary.figures())
    else:
        print(summary.format())
    return 0


def _index_distributed(args, source, index_dir: Path, policy) -> int:
    """``chextriev index --devices N --num-nodes M``: every process runs this (Lightning
    starts the other ranks of one node by running the same command again; torchrun / SLURM
    start them all); rank 0 prints the summary."""
    from chextriev.cli_options import resolve_device
    from indexer.distributed import run_distributed_index
    from indexer.embedder import ModelEmbedder

    def embedder_factory(device: str):
        return ModelEmbedder(args.checkpoint, device=device, detector=args.detector,
                             batch_size=args.batch_size, precision=args.precision, compile=args.compile)

    device = resolve_device(args.device)
    accelerator = "cpu" if device == "cpu" else "gpu"
    summary = run_distributed_index(
        source, embedder_factory=embedder_factory, index_dir=index_dir, db_url=args.db,
        devices=args.devices or "auto", num_nodes=args.num_nodes, accelerator=accelerator,
        shard_dir=args.shard_dir, workers=args.workers, batch_size=args.batch_size,
        index_type=args.index_type, device=device, policy=policy,
        manifest=args.manifest, nprobe=args.nprobe, progress=args.progress,
        wait=args.wait, preview_side=args.preview_side, copy_checkpoint=args.copy_checkpoint)
    if summary is not None:
        if args.json:
            print_json(summary.figures())
        else:
            print(summary.format())
    return 0


def _verify(args) -> int:
    from indexer.verify import verify

    figures = verify_figures(verify(_sessions(args), args.index_dir, sample=args.sample),
                             args.index_dir, args.sample)
    if args.json:
        print_json(figures)
    else:
        print(format_verify(figures))
    return 0 if figures["ok"] else 1


def verify_figures(problems: list[str], index_dir: Path, sample: int | None) -> dict:
    """What `index verify` found (``--json`` prints this; :func:`format_verify` as prose)."""
    return {"ok": not problems, "index_dir": str(index_dir), "vectors_checked": sample or "all",
            "differences": list(problems)}


def format_verify(figures: dict) -> str:
    lines = [f"DIFFERENCE: {problem}" for problem in figures["differences"]]
    if figures["ok"]:
        checked = "all" if figures["vectors_checked"] == "all" else f"{figures['vectors_checked']} sampled"
        lines.append(f"OK: catalog and index in {figures['index_dir']} agree (checksums, ids, "
                     f"{checked} vectors)")
    else:
        lines.append(f"run `chextriev index repair --index-dir {figures['index_dir']}` to rebuild "
                     "the index from the catalog")
    return "\n".join(lines)


def _repair(args) -> int:
    from indexer.sync import repair

    with _writable(args) as catalog:
        manifest = repair(catalog.sessions, args.index_dir)
    print(f"rebuilt index {manifest.build_id}: {manifest.n_vectors} vectors "
          f"({manifest.index_type}, {len(manifest.segments)} segment(s))")
    return 0


def _remove(args) -> int:
    from indexer.sync import remove_images

    with _writable(args) as catalog:
        removed = remove_images(catalog.sessions, args.index_dir, args.ids)
    print(f"removed {removed} image(s)")
    return 0
