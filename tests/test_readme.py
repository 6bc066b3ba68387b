"""The README's commands must work: every `chextriev ...` line in its shell blocks parses with
the real argument parser, every `make` target it names exists, and the demo runs end to end on
a tiny archive (tests/test_demo.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from chextriev_cli.main import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def shell_commands(text: str) -> list[str]:
    """Commands in ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = shell_commands(README)
CHEXTRIEV_COMMANDS = [c for c in COMMANDS if c.startswith("chextriev ")]


def test_readme_has_the_two_commands_first():
    assert COMMANDS[:2] == ["make test", "make demo"]


@pytest.mark.parametrize("command", CHEXTRIEV_COMMANDS)
def test_readme_chextriev_commands_parse(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_readme_make_targets_exist():
    makefile = (REPO_ROOT / "Makefile").read_text()
    for command in COMMANDS:
        if command.startswith("make "):
            words = command.split()
            target = words[1]
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.MULTILINE), target
            for assignment in words[2:]:
                variable = assignment.split("=")[0]
                assert f"{variable} ?=" in makefile, variable


def test_readme_has_no_unfilled_placeholders():
    assert not re.search(r"\b(RESULTS_[A-Z]+|BENCHMARK_TABLE|TODO|TBD)\b", README)


BENCHMARK_COMMANDS = [c for c in COMMANDS if c.startswith("python -m benchmarks ")]


def test_readme_names_no_script_outside_the_packages():
    """The recipes are modules of the benchmarks package, run with ``python -m``: no command runs
    a Python file by its path."""
    assert not [c for c in COMMANDS if re.match(r"python\S* \S+\.py\b", c)]


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS)
def test_readme_benchmark_commands_parse(command, monkeypatch, capsys):
    """Each ``python -m benchmarks NAME ...`` line names a benchmark that answers ``--help``."""
    import sys

    from benchmarks.__main__ import main, names

    name = shlex.split(command)[3]
    assert name.replace("-", "_") in names(), command
    monkeypatch.setattr(sys, "argv", ["python -m benchmarks"])
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert f"python -m benchmarks {name}" in capsys.readouterr().out
