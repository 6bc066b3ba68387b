"""`chextriev` console script.

Each subcommand is registered by the package that implements it, through a module exposing
``register(subparsers)``; a registered parser sets ``func(args) -> int`` as its default. Its
options follow the conventions of :mod:`chextriev.cli_options` (built from its helpers; checked
for every subcommand by ``tests/test_cli_conventions.py``).
This module sits above every package (it may import all of them); no package imports it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from chextriev.cli_options import VersionAction, apply_conventions

# (module, what it provides). Order is the order shown in `chextriev --help`.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "chextriev.synth.cli",  # synth
    "chextriev.training.cli",  # train, train-detector
    "chextriev.model.cli",  # model init, model encoders
    "chextriev.localization.cli",  # train-ham
    "metrics.cli",  # evaluate
    "indexer.cli",  # index, index verify, index remove
    "server.cli",  # serve
    "server.search_cli",  # search (by reference, from the PACS)
    "chextriev_cli.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chextriev",
        description="Case-based retrieval of chest radiographs.",
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("-v", "--verbose", action=argparse.BooleanOptionalAction, default=False,
                        help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return apply_conventions(parser)  # the shared help formatter, on every subcommand


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from chextriev.errors import ChextrievError
    from chextriev.logs import configure_logging

    configure_logging(args.verbose)  # libraries' set-up chatter shows with -v only

    try:
        return int(args.func(args) or 0)
    except ChextrievError as error:
        logging.getLogger("chextriev").error("%s", error)
        return 2
    except ModuleNotFoundError as error:
        if error.name != "faiss":
            raise
        logging.getLogger("chextriev").error(
            "Faiss is not installed: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA machine; "
            "the project's base install has neither, they install the same module)")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
