"""``chextriev index``: build or update an index; ``index verify``; ``index remove``.

    chextriev index --source ARCHIVE --checkpoint model.ckpt --index-dir idx [--db URL]
        [--device auto|cpu|cuda] [--precision auto|fp32|bf16] [--workers N] [--batch-size B]
        [--index-type auto|flat|ivf-flat|ivf-pq] [--detector PATH] [--pseudonymise]
    chextriev index verify --index-dir idx [--db URL]      # exit 1 when they disagree
    chextriev index remove --index-dir idx [--db URL] ID [ID ...]
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from chextriev.errors import ChextrievError
from chextriev.precision import PRECISIONS, default_precision

# indexer.vector_index.INDEX_TYPES, here so that argument parsing does not import Faiss
# (tests/test_cli_startup.py checks that the two agree).
INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq")

log = logging.getLogger(__name__)


def _common(parser: argparse.ArgumentParser, *, required_dir: bool) -> None:
    parser.add_argument("--index-dir", required=required_dir, type=Path,
                        help="folder of the Faiss index (and of the default SQLite catalog)")
    parser.add_argument("--db", default=None,
                        help="SQLAlchemy URL (default sqlite:///<index-dir>/catalog.sqlite)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="index an archive (DICOM/PNG/JPEG) into SQL + Faiss",
        description="Index an archive; `index verify` and `index remove` maintain it.")
    parser.add_argument("--source", type=Path, help="archive folder, manifest CSV or image file")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest CSV (path, patient_id, study_id, view, sex, age, findings); "
                             "only its files are indexed")
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint (.ckpt)")
    _common(parser, required_dir=False)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default=default_precision(), choices=PRECISIONS,
                        help="auto (default; $CHEXTRIEV_PRECISION overrides): bf16 where the CPU has AMX or AVX-512 bf16 or the GPU has bf16, else fp32")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="decoding processes (0 = decode in the main process)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--index-type", default="auto", choices=INDEX_TYPES)
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query")
    parser.add_argument("--detector", type=Path, default=None, help="anatomy detector weights")
    parser.add_argument("--pseudonymise", action="store_true",
                        help="store patient/study identifiers as keyed HMAC-SHA256 "
                             "(key: $CHEXTRIEV_PSEUDONYM_KEY or --pseudonym-key-file)")
    parser.add_argument("--pseudonym-key-file", type=Path, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="sync the Faiss index every N batches (and at the end)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_index)
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION")
    verify = actions.add_parser("verify", help="check that database and index agree")
    _common(verify, required_dir=True)
    verify.set_defaults(func=_verify)
    remove = actions.add_parser("remove", help="remove images from the database and the index")
    _common(remove, required_dir=True)
    remove.add_argument("ids", nargs="+", help="database ids or dataset image ids")
    remove.set_defaults(func=_remove)


def _sessions(args):
    from indexer.db import default_db_url, make_engine, make_sessionmaker

    url = args.db or default_db_url(args.index_dir)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ChextrievError(f"no catalog database at {url}")
    return make_sessionmaker(make_engine(url))


def _index(args) -> int:
    from indexer.db import Pseudonymiser
    from indexer.embedder import ModelEmbedder, resolve_device
    from indexer.pipeline import run_index

    missing = [name for name in ("source", "checkpoint") if getattr(args, name) is None]
    if missing:
        raise ChextrievError(f"`chextriev index` needs --{' and --'.join(missing)} "
                             "(or use `index verify` / `index remove`)")
    if not args.checkpoint.is_file():
        raise ChextrievError(f"checkpoint {args.checkpoint} does not exist")
    index_dir = args.index_dir or Path("index")
    pseudonymiser = Pseudonymiser.from_env_or_file(args.pseudonym_key_file) \
        if args.pseudonymise else None
    embedder = ModelEmbedder(args.checkpoint, device=args.device, detector=args.detector,
                             batch_size=args.batch_size, precision=args.precision)
    summary = run_index(
        args.source, embedder=embedder, index_dir=index_dir, db_url=args.db,
        workers=args.workers, batch_size=args.batch_size, index_type=args.index_type,
        device=resolve_device(args.device), pseudonymiser=pseudonymiser,
        manifest=args.manifest, checkpoint_every=args.checkpoint_every, nprobe=args.nprobe,
        progress=not args.no_progress)
    print(summary.format())
    return 0


def _verify(args) -> int:
    from indexer.sync import verify

    problems = verify(_sessions(args), args.index_dir)
    for problem in problems:
        print(f"DIFFERENCE: {problem}")
    if not problems:
        print(f"OK: database and index in {args.index_dir} agree")
    return 1 if problems else 0


def _remove(args) -> int:
    from indexer.sync import remove_images

    removed = remove_images(_sessions(args), args.index_dir, args.ids)
    print(f"removed {removed} image(s)")
    return 0
