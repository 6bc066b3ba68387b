"""The command-line conventions every ``chextriev`` subcommand follows, defined once.

Each package's ``cli.py`` builds its options from these helpers; ``chextriev_cli.main`` applies
:func:`apply_conventions` to the whole parser tree, and ``tests/test_cli_conventions.py`` walks
every (sub-)subcommand's ``--help`` to check them:

* ``--device`` takes the same values everywhere: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
  (:func:`add_device_option`; :func:`resolve_device` turns ``auto`` into a torch device name).
  ``--devices`` (a count or GPU ids, Lightning style) is a different option: how many.
* ``--out DIR`` is always a folder (:func:`add_out_dir`); an option that names one file to write
  is ``--out-file FILE`` (:func:`add_out_file`).
* The input is ``--data`` and the epoch count ``--epochs``, in every command.
* Booleans are ``--flag/--no-flag`` (``argparse.BooleanOptionalAction``); no ``store_true``.
* ``--help`` shows every default (:class:`HelpFormatter`; an unset ``None`` default shows
  nothing) and ``--json`` (:func:`add_json_option`) prints one JSON object on stdout.
* A renamed option keeps its old spelling as a hidden alias that still works and warns once
  (:func:`deprecate`); the aliases are listed in :data:`DEPRECATED_ALIASES`.

Standard library only: registering the subcommands must not import torch (``--help`` in 0.2 s).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The values of every ``--device`` option (``cuda:N`` picks one GPU).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_METAVAR = "{" + ",".join(DEVICES) + "}"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

#: Old spelling -> canonical spelling, for every alias kept for old scripts. An alias is hidden
#: from ``--help``, still works, and warns once per invocation. The old spellings in
#: :data:`RETIRED` are never the canonical name of an option.
DEPRECATED_ALIASES: dict[str, str] = {
    "--source": "--data",  # `chextriev index --source`
    "--max-epochs": "--epochs",  # `chextriev train` and `chextriev demo`
    "--out": "--out-file",  # `chextriev train-detector`, whose --out named a file
}
RETIRED: tuple[str, ...] = ("--source", "--max-epochs")
#: Spellings of the input other than ``--data``, refused as canonical names.
INPUT_SYNONYMS: tuple[str, ...] = ("--source", "--input", "--dataset", "--archive", "--data-dir")


# ----------------------------------------------------------------------------- device

def device_name(text: str) -> str:
    """``text`` as a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``): the ``type`` of every
    ``--device`` option. Raises ``argparse.ArgumentTypeError`` listing the valid values."""
    name = str(text).strip().lower()
    if not _DEVICE_PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"invalid device {text!r} (choose from {', '.join(DEVICES)})")
    return name


def check_device(text: str, where: str = "device") -> str:
    """:func:`device_name` for values that do not come from argparse (a configuration file, the
    environment): raises :class:`~chextriev.errors.UnknownNameError` listing the valid ones."""
    from chextriev.errors import UnknownNameError

    try:
        return device_name(text)
    except argparse.ArgumentTypeError:
        raise UnknownNameError(where, str(text), DEVICES) from None


def add_device_option(parser: argparse.ArgumentParser, *, default: str = "auto",
                      help: str = "torch device") -> argparse.Action:
    """``--device {auto,cpu,cuda,cuda:N}``; ``auto``: the GPU when torch sees one, else the CPU."""
    return parser.add_argument(
        "--device", type=device_name, default=device_name(default), metavar=DEVICE_METAVAR,
        help=f"{help}; auto: cuda when torch sees a GPU, else cpu")


def resolve_device(name: str) -> str:
    """The torch device for ``name``: ``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``;
    ``cuda``/``cuda:N`` without a GPU logs and falls back to ``cpu``. Imports torch."""
    import logging

    import torch

    name = check_device(name)
    if name == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda" if name == "auto" else name
    if name != "auto":
        logging.getLogger(__name__).info("no CUDA device visible to torch: running on the CPU")
    return "cpu"


def add_precision_option(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--precision {auto,fp32,bf16}`` of the commands that run the model
    (:mod:`chextriev.precision`; ``$CHEXTRIEV_PRECISION`` sets the default)."""
    from chextriev.precision import ENV_VAR, PRECISIONS, default_precision

    return parser.add_argument(
        "--precision", default=default_precision(), choices=PRECISIONS,
        help=f"model numerics; auto: bf16 where the CPU has AMX or AVX-512 bf16 or the GPU has "
             f"bf16, else fp32; ${ENV_VAR} overrides")


def add_compile_option(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--compile {off,on}`` of the commands that run the model at inference: the frozen trunk
    compiled ahead of time and cached on disk (:mod:`chextriev.compiled`, which imports torch
    only when it compiles; default on, ``$CHEXTRIEV_COMPILE`` sets the default)."""
    from chextriev.compiled import CACHE_ENV_VAR, ENV_VAR, default_compile

    return parser.add_argument(
        "--compile", default=default_compile(), type=compile_mode, metavar="{off,on}",
        help=f"run the frozen backbone compiled by torch (AOTInductor): faster on a CPU; compiled once "
             f"(about 1-2 min) into the compiled cache (${CACHE_ENV_VAR}, else ~/.cache/chextriev/compiled) "
             f"and loaded from there by later runs; eager where no C++ compiler is found "
             f"(${ENV_VAR} sets it for every command)")


def compile_mode(text: str) -> str:
    """The argparse ``type`` of every ``--compile`` flag: ``on``/``off`` from any spelling
    :func:`chextriev.compiled.parse_compile` accepts (1/0, true/false, yes/no)."""
    from chextriev.compiled import parse_compile
    from chextriev.errors import ChextrievError

    try:
        return parse_compile(text)
    except ChextrievError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ----------------------------------------------------------------------------- named options

def add_data_option(parser: argparse.ArgumentParser, *, help: str, required: bool = False,
                    default: Any = None, type: Any = Path, metavar: str = "DIR", dest: str = "data",
                    aliases: tuple[str, ...] = ()) -> argparse.Action:
    """``--data``: what a command reads (a dataset folder, an archive, a DICOMweb URL...)."""
    action = parser.add_argument("--data", *aliases, dest=dest, type=type, metavar=metavar,
                                 required=required, default=default, help=help)
    return deprecate(action, *aliases)


def add_out_dir(parser: argparse.ArgumentParser, *, help: str, required: bool = False,
                default: Path | None = None) -> argparse.Action:
    """``--out DIR``: the folder a command writes into (never one file: see :func:`add_out_file`)."""
    return parser.add_argument("--out", type=Path, metavar="DIR", required=required, default=default,
                               help=help)


def add_out_file(parser: argparse.ArgumentParser, *, help: str, required: bool = False,
                 default: Path | None = None, aliases: tuple[str, ...] = ()) -> argparse.Action:
    """``--out-file FILE``: the one file a command writes."""
    action = parser.add_argument("--out-file", *aliases, dest="out", type=Path, metavar="FILE",
                                 required=required, default=default, help=help)
    return deprecate(action, *aliases)


def add_epochs_option(parser: argparse.ArgumentParser, *, help: str, default: int | None = None,
                      dest: str = "epochs", aliases: tuple[str, ...] = ()) -> argparse.Action:
    """``--epochs N``."""
    action = parser.add_argument("--epochs", *aliases, dest=dest, type=int, metavar="N",
                                 default=default, help=help)
    return deprecate(action, *aliases)


def add_json_option(parser: argparse.ArgumentParser, what: str = "the summary") -> argparse.Action:
    """``--json/--no-json``: :func:`print_json` instead of prose (progress and logs stay on
    stderr)."""
    return parser.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                               help=f"print {what} as one JSON object on stdout (for scripts) "
                                    "instead of prose")


def print_json(figures: dict[str, Any]) -> None:
    """``figures`` as one JSON object on stdout (strict JSON: a NaN is refused, paths as text)."""
    print(json.dumps(figures, indent=2, allow_nan=False, default=str), flush=True)


# ----------------------------------------------------------------------------- deprecated aliases

_WITH_ALIASES: dict[type, type] = {}


def _with_aliases(cls: type) -> type:
    """``cls`` whose ``__call__`` warns (once per parser) when reached by a deprecated spelling."""
    if cls not in _WITH_ALIASES:
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in self.deprecated:
                warn_deprecated(parser, option_string, self.option_strings[0])
            cls.__call__(self, parser, namespace, values, option_string)

        _WITH_ALIASES[cls] = type(f"Deprecated{cls.__name__}", (cls,), {"__call__": __call__})
    return _WITH_ALIASES[cls]


def deprecate(action: argparse.Action, *aliases: str) -> argparse.Action:
    """Mark ``aliases`` (option strings of ``action`` after its canonical first one) as
    deprecated: hidden from ``--help``, still parsed, a warning on stderr the first time one is
    used in an invocation. Each must be listed in :data:`DEPRECATED_ALIASES`."""
    if not aliases:
        return action
    for alias in aliases:
        if alias not in action.option_strings[1:]:
            raise ValueError(f"{alias} is not an alias of {action.option_strings[0]}")
        if DEPRECATED_ALIASES.get(alias) != action.option_strings[0]:
            raise ValueError(f"{alias} -> {action.option_strings[0]} is not in DEPRECATED_ALIASES")
    action.deprecated = tuple(aliases)
    action.__class__ = _with_aliases(type(action))
    return action


def warn_deprecated(parser: argparse.ArgumentParser, used: str, instead: str) -> None:
    """``PROG: warning: USED is deprecated, use INSTEAD`` on stderr, once per parser (a parser is
    built per invocation)."""
    warned = parser.__dict__.setdefault("_deprecated_warned", set())
    if used not in warned:
        warned.add(used)
        sys.stderr.write(f"{parser.prog}: warning: {used} is deprecated, use {instead} "
                         "(the old spelling will be removed in a later release)\n")


class LegacyValueBoolean(argparse.BooleanOptionalAction):
    """``--flag/--no-flag`` that also takes the value an older version of the option took
    (``--serve 0``, ``--serve 1``), with a deprecation warning."""

    TRUE = ("1", "true", "yes", "on")
    FALSE = ("0", "false", "no", "off")

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.nargs = "?"

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            return super().__call__(parser, namespace, values, option_string)
        text = str(values).strip().lower()
        if option_string.startswith("--no-") or text not in self.TRUE + self.FALSE:
            raise argparse.ArgumentError(self, f"takes no value (got {values!r})")
        flag = self.option_strings[0] if text in self.TRUE else self.option_strings[1]
        warn_deprecated(parser, f"{option_string} {values}", flag)
        setattr(namespace, self.dest, text in self.TRUE)


# ----------------------------------------------------------------------------- help

def _show_default(value: Any, action: argparse.Action) -> str:
    if isinstance(action, argparse.BooleanOptionalAction):
        return action.option_strings[0] if value else action.option_strings[1]
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` states ``action``'s default (every default but an unset ``None``)."""
    return (action.help is not argparse.SUPPRESS and action.default is not None
            and action.default is not argparse.SUPPRESS and action.default != ""
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            and bool(action.option_strings))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` of every ``chextriev`` command: each default stated (``(default: X)``, unless the
    help already says it; nothing for an unset ``None``), deprecated aliases hidden, booleans'
    defaults as the flag that is on, multi-line descriptions (module docstrings) kept as written
    and one-line ones filled."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if shows_default(action) and "default" not in text.lower():
            text = f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text

    def _expand_help(self, action):
        params = {name: value for name, value in dict(vars(action), prog=self._prog).items()
                  if value is not argparse.SUPPRESS}
        for name, value in list(params.items()):
            if hasattr(value, "__name__"):
                params[name] = value.__name__
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        if params.get("default") is not None:
            params["default"] = _show_default(action.default, action)
        return self._get_help_string(action) % params

    def _format_action_invocation(self, action):
        hidden = getattr(action, "deprecated", ())
        if hidden:
            visible = [s for s in action.option_strings if s not in hidden]
            action = argparse.Namespace(**{**vars(action), "option_strings": visible})
        if isinstance(action, LegacyValueBoolean):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)

    def _format_args(self, action, default_metavar):
        if isinstance(action, LegacyValueBoolean):
            return ""
        return super()._format_args(action, default_metavar)


def iter_parsers(parser: argparse.ArgumentParser,
                 path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command path, parser)`` for ``parser`` and every (sub-)subcommand below it, e.g.
    ``(("index", "verify"), <parser>)``; aliases of a subcommand are listed once."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield from iter_parsers(child, (*path, name))


def apply_conventions(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and every subcommand below it :class:`HelpFormatter`."""
    for _, each in iter_parsers(parser):
        each.formatter_class = HelpFormatter
    return parser


class VersionAction(argparse.Action):
    """``--version``: prints ``PROG VERSION`` and exits; the version is looked up only then
    (importlib.metadata costs ~70 ms, too much for every ``--help``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the installed version and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def package_version(distribution: str = "chextriev") -> str:
    """The installed version of ``distribution`` (importlib.metadata), ``unknown`` when it is
    not installed (a source tree on ``sys.path``)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
