"""``chextriev db``: catalog database maintenance. ``chextriev db upgrade`` brings a catalog to
this chextriev's schema revision in place (:mod:`indexer.migrations`) and converts the ledger of
a pseudonymised catalog an earlier chextriev left in the clear (:mod:`indexer.ledger`).

    chextriev db upgrade (--db URL | --index-dir DIR) [--pseudonymise] [--pseudonym-key-file F]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chextriev.errors import ChextrievError


def register_db(subparsers, common, wait, stops_cleanly) -> None:
    """The ``db`` subcommand (``common``/``wait``: the index commands' shared options;
    ``stops_cleanly``: their one-line stop on a lost database or a full disk)."""
    db = subparsers.add_parser("db", help="catalog database maintenance",
                               description="Catalog database maintenance.")
    db_actions = db.add_subparsers(dest="db_action", metavar="ACTION")
    db_actions.required = True
    upgrade = db_actions.add_parser(
        "upgrade", help="upgrade a catalog's schema in place (rows kept)",
        description="Upgrade a catalog to this chextriev's schema revision, in place. Give the "
                    "index folder: revisions that move data beside the index need it.")
    common(upgrade, required_dir=False)
    wait(upgrade)
    upgrade.add_argument("--pseudonymise", action=argparse.BooleanOptionalAction, default=False,
                         help="the catalog was indexed with --pseudonymise (found by itself when a "
                              "patient was stored pseudonymised): its ledger's source paths and "
                              "keys become keyed hashes; needs the key")
    upgrade.add_argument("--pseudonym-key-file", type=Path, default=None, metavar="FILE",
                         help="the key the catalog was pseudonymised with (else "
                              "$CHEXTRIEV_PSEUDONYM_KEY)")
    upgrade.add_argument("--key-check", action=argparse.BooleanOptionalAction, default=True,
                         help="before converting, check that the key reproduces the catalog's "
                              "pseudonyms from its paths (--no-key-check for image ids that no "
                              "path gives, e.g. a manifest's)")
    upgrade.set_defaults(func=stops_cleanly(_db_upgrade))


def _db_upgrade(args) -> int:
    from indexer import migrations
    from indexer.db import default_db_url, safe_url
    from indexer.engine import make_engine
    from indexer.lock import CatalogLock

    if args.db is None and args.index_dir is None:
        raise ChextrievError("`chextriev db upgrade` needs --db URL or --index-dir DIR")
    url = args.db or default_db_url(args.index_dir)
    engine = make_engine(url, create=False, check=False, schema=False)
    try:
        with engine.connect() as connection:
            if migrations.current_revision(connection) is None:
                raise ChextrievError(f"no catalog in {safe_url(url)} (run `chextriev index`)")
        with CatalogLock(args.index_dir, engine=engine, db_url=url, wait=args.wait):
            deidentifier = _ledger_key(args, engine, safe_url(url))  # before anything changes
            before, after = migrations.upgrade(engine, index_dir=args.index_dir)
            converted = _convert_ledger(engine, deidentifier) if deidentifier else None
    finally:
        engine.dispose()
    if before == after:
        print(f"the catalog in {safe_url(url)} is already at revision {after}")
    else:
        print(f"upgraded the catalog in {safe_url(url)} from revision {before} to {after}")
    if converted:
        print(f"pseudonymised the ledger: {converted[0]} source key(s) and {converted[1]} "
              "image row(s) now hold keyed hashes, not paths, file names or UIDs (database "
              "compacted)")
    return 0


def _ledger_key(args, engine, where: str):
    """The de-identifier to convert a pseudonymised catalog's clear ledger with (None: nothing
    to convert); the key is required then, and checked against the catalog's pseudonyms."""
    from sqlalchemy.orm import Session

    from chextriev.io.deid import Deidentifier, read_key
    from indexer.ledger import confirm_key, needs_conversion

    with Session(engine) as session:
        clear = needs_conversion(session, pseudonymised=args.pseudonymise)
        if not clear:
            return None
        deidentifier = Deidentifier(read_key(
            args.pseudonym_key_file,
            what=f"the catalog in {where} was indexed with --pseudonymise, and its ledger still "
                 f"holds {clear} source path(s) or DICOMweb key(s) in the clear (an earlier "
                 "chextriev kept them); `chextriev db upgrade` replaces them by keyed hashes and"))
        if args.key_check and confirm_key(session, deidentifier) is False:
            raise ChextrievError(
                f"the pseudonymisation key given does not reproduce the pseudonyms of the "
                f"catalog in {where} from its paths: is it the key it was indexed with? "
                "(--no-key-check converts anyway, e.g. when image ids came from a manifest)")
    return deidentifier


def _convert_ledger(engine, deidentifier) -> tuple[int, int]:
    from indexer.ledger import convert

    return convert(engine, deidentifier)
