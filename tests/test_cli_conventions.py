"""Every `chextriev` subcommand (found by walking the parser, so a new one is checked without
being listed here) follows the conventions of ``chextriev.cli_options``: ``--help`` exits 0 and
states every default, ``--device`` takes the same values everywhere, ``--out`` is a folder, the
input is ``--data`` and the epoch count ``--epochs``, booleans are ``--flag/--no-flag``, and an
old spelling survives only as a documented deprecated alias that still works and warns once.

A failure names the command, the option and the rule it breaks."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from importlib import metadata
from pathlib import Path

import pytest

from chextriev import cli_options as conventions
from chextriev_cli.main import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [path for path, _ in conventions.iter_parsers(build_parser())]
SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction,
           conventions.VersionAction)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    return dict(conventions.iter_parsers(build_parser()))[path]


def action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text ``--help`` prints for ``action`` (without its option strings), one line."""
    if not action.help:
        return ""  # argparse prints no help line at all, not even the default
    return " ".join(parser._get_formatter()._expand_help(action).split())


def violations(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """Each convention ``parser`` breaks, as ``chextriev CMD: OPTION: what is wrong``."""
    command = " ".join(("chextriev", *path))
    found = []

    def bad(action: argparse.Action | None, rule: str) -> None:
        name = "/".join(action.option_strings or [action.dest]) if action else "--help"
        found.append(f"`{command}`: {name}: {rule}")

    if not issubclass(parser.formatter_class, conventions.HelpFormatter):
        bad(None, "not formatted by chextriev.cli_options.HelpFormatter (apply_conventions)")
    if "default: None" in parser.format_help():
        bad(None, "prints 'default: None'")
    for action in parser._actions:
        if isinstance(action, SKIPPED) or action.help is argparse.SUPPRESS:
            continue
        strings = action.option_strings
        hidden = getattr(action, "deprecated", ())
        canonical = [s for s in strings if s not in hidden]
        shown = action_help(parser, action)
        # Defaults shown (and a hand-written default must be the real one).
        if conventions.shows_default(action):
            value = conventions._show_default(action.default, action)
            if "default" not in shown.lower():
                bad(action, f"its default ({value}) is not shown in --help (give it a help text)")
            elif "(default: " + value + ")" not in shown and value not in shown:
                bad(action, f"--help states a default other than the real one ({value}); drop the "
                            "hand-written default, the formatter states it")
        # Booleans: --flag/--no-flag.
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or (
                isinstance(action, argparse._StoreConstAction) and isinstance(action.const, bool)):
            bad(action, "boolean flag without its --no- form: use "
                        "action=argparse.BooleanOptionalAction")
        if action.type is bool:
            bad(action, "type=bool (any non-empty text is True): use argparse.BooleanOptionalAction")
        if isinstance(action, argparse.BooleanOptionalAction):
            for string in canonical:
                if string.startswith("--") and not string.startswith("--no-") \
                        and "--no-" + string[2:] not in strings:
                    bad(action, f"{string} has no --no-{string[2:]}")
        elif any(s.startswith("--no-") for s in canonical):
            bad(action, "a --no-X option alone: make X an argparse.BooleanOptionalAction")
        # --device: the one shared definition.
        if "--device" in strings and (action.type is not conventions.device_name
                                      or action.metavar != conventions.DEVICE_METAVAR):
            bad(action, f"--device not built by add_device_option (values {conventions.DEVICE_METAVAR})")
        # --out is a folder; one file is --out-file.
        for string in canonical:
            if string == "--out" and action.metavar != "DIR":
                bad(action, "--out must be a folder (add_out_dir: --out DIR); a file is --out-file FILE")
            if string == "--out-file" and action.metavar != "FILE":
                bad(action, "--out-file must name a FILE (add_out_file)")
            if string.startswith(("--out", "--output")) and string not in ("--out", "--out-file"):
                bad(action, f"{string}: the output is --out DIR or --out-file FILE")
        # One spelling for the input and for epochs.
        if canonical and canonical[0] in conventions.RETIRED + conventions.INPUT_SYNONYMS:
            bad(action, f"{canonical[0]} is not the canonical spelling (the input is --data, epochs "
                        "are --epochs)")
        for string in canonical:
            if "epoch" in string and string != "--epochs" and "-per-epoch" not in string:
                bad(action, f"{string}: the epoch count is --epochs")
        # Old spellings: documented aliases only, hidden.
        for alias in hidden:
            if conventions.DEPRECATED_ALIASES.get(alias) != strings[0]:
                bad(action, f"{alias} is an undocumented alias (add it to DEPRECATED_ALIASES)")
            invocation = parser._get_formatter()._format_action_invocation(action)
            if re.search(rf"(?<![\w-]){re.escape(alias)}(?![\w-])", invocation + parser.format_usage()):
                bad(action, f"the deprecated alias {alias} is shown in --help")
        for string in canonical[1:]:
            if string in conventions.DEPRECATED_ALIASES:
                bad(action, f"{string} is a deprecated spelling but not marked (deprecate())")
    return found


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "chextriev")
def test_help_exits_0_and_follows_the_conventions(path):
    code, out, err = run_cli([*path, "--help"])
    assert code == 0 and "usage:" in out, err[-2000:]
    problems = violations(path, parser_of(path))
    assert not problems, "\n".join(problems)


def test_the_walk_finds_every_subcommand():
    assert {("train",), ("train-detector",), ("evaluate",), ("index",), ("index", "verify"),
            ("index", "repair"), ("index", "remove"), ("db", "upgrade"), ("serve",), ("demo",),
            ("synth",)} <= set(COMMANDS)


def test_device_option_is_identical_everywhere():
    seen = {}
    for path, parser in conventions.iter_parsers(build_parser()):
        for action in parser._actions:
            if "--device" in action.option_strings:
                seen[" ".join(path)] = (action.type, action.metavar)
    assert {"evaluate", "index", "serve", "train-detector"} <= set(seen)
    assert len(set(seen.values())) == 1, seen


def test_the_checks_catch_what_they_claim_to():
    """A parser that breaks every rule: each break is reported, naming the option."""
    parser = argparse.ArgumentParser(prog="bad", formatter_class=conventions.HelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", help="file to write")
    parser.add_argument("--source", help="input")
    parser.add_argument("--max-epochs", type=int, default=3, help="epochs (default 5)")
    parser.add_argument("--quiet", action="store_true", help="less output")
    parser.add_argument("--no-cache", action="store_true", help="no cache")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", default="x", help="where")
    found = "\n".join(violations(("bad",), parser))
    for expected in ("--device: --device not built by add_device_option",
                     "--out: --out must be a folder",
                     "--source: --source is not the canonical spelling",
                     "--max-epochs: the epoch count is --epochs",
                     "--max-epochs: --help states a default other than the real one (3)",
                     "--quiet: boolean flag without its --no- form",
                     "--no-cache: a --no-X option alone",
                     "--output-dir: --output-dir: the output is --out DIR"):
        assert expected in found, found
    assert "--workers: its default (2) is not shown in --help (give it a help text)" in found
    plain = argparse.ArgumentParser(prog="plain")
    assert "not formatted by" in "\n".join(violations(("plain",), plain))


def test_help_of_an_unset_option_shows_no_default_noise():
    text = parser_of(("train",)).format_help()
    assert "(default: None)" not in text and "default: None" not in text
    assert "--seed SEED           random seed (default: 0)" in text
    assert "(default: --progress)" in text  # a boolean's default is the form that is on


def test_version_is_the_package_version():
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"chextriev {metadata.version('chextriev')}"


ALIAS_CASES = [
    (["index", "--source", "archive/"], ["index", "--data", "archive/"], "source", "--data"),
    (["train", "--data", "d", "--out", "r", "--max-epochs", "3"],
     ["train", "--data", "d", "--out", "r", "--epochs", "3"], "max_epochs", "--epochs"),
    (["demo", "--max-epochs", "2"], ["demo", "--epochs", "2"], "max_epochs", "--epochs"),
    (["train-detector", "--data", "d", "--out", "det.pt"],
     ["train-detector", "--data", "d", "--out-file", "det.pt"], "out", "--out-file"),
    (["demo", "--serve", "0"], ["demo", "--no-serve"], "serve", "--no-serve"),
    (["demo", "--serve", "1"], ["demo", "--serve"], "serve", "--serve"),
]


@pytest.mark.parametrize(("old", "new", "dest", "instead"), ALIAS_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_deprecated_spellings_still_work_and_warn_once(old, new, dest, instead, capsys):
    old_args = build_parser().parse_args(old + old[-2:])  # the old spelling twice
    warning = capsys.readouterr().err
    assert getattr(old_args, dest) == getattr(build_parser().parse_args(new), dest)
    assert warning.count("is deprecated") == 1 and f"use {instead}" in warning
    assert capsys.readouterr().err == ""  # the canonical spelling does not warn


def test_every_alias_in_use_is_documented_and_listed():
    used = set()
    for _, parser in conventions.iter_parsers(build_parser()):
        for action in parser._actions:
            used.update((alias, action.option_strings[0]) for alias in getattr(action, "deprecated", ()))
    assert used == set(conventions.DEPRECATED_ALIASES.items())
    readme = (REPO_ROOT / "README.md").read_text()
    for alias, canonical in conventions.DEPRECATED_ALIASES.items():
        assert re.search(rf"`{re.escape(alias)}`[^\n|]*\|[^\n]*`{re.escape(canonical)}", readme), \
            f"README's table of deprecated spellings lacks {alias} -> {canonical}"


def test_deprecate_refuses_an_undocumented_alias():
    parser = argparse.ArgumentParser()
    with pytest.raises(ValueError, match="DEPRECATED_ALIASES"):
        conventions.deprecate(parser.add_argument("--data", "--input"), "--input")


def test_device_values():
    assert conventions.device_name(" CUDA:1 ") == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:x", "mps"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto, cpu, cuda, cuda:N"):
            conventions.device_name(bad)
    code, _, err = run_cli(["evaluate", "--checkpoint", "c", "--data", "d", "--device", "gpu"])
    assert code == 2 and "invalid device 'gpu'" in err
    assert conventions.resolve_device("cpu") == "cpu"


def test_device_from_a_serve_configuration_file_is_checked(tmp_path):
    from server.config import ConfigError, read_config_file

    (tmp_path / "good.toml").write_text('device = "auto"\n')
    assert read_config_file(tmp_path / "good.toml")["DEVICE"] == "auto"
    (tmp_path / "bad.toml").write_text('device = "gpu"\n')
    with pytest.raises(ConfigError, match="invalid device 'gpu'"):
        read_config_file(tmp_path / "bad.toml")
