"""``python -m benchmarks [NAME [ARGS...]]``: run the benchmark ``NAME`` (a module of this package,
``-`` and ``_`` alike), or list them all when no name is given."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"harness", "__main__"}


def names() -> list[str]:
    """Every runnable module of the package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name not in NOT_BENCHMARKS)


def summary(name: str) -> str:
    """The first sentence of ``name``'s docstring, read without importing it (torch is slow to
    load), at most 100 characters."""
    doc = ast.get_docstring(ast.parse((PACKAGE / f"{name}.py").read_text())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = first.split(". ")[0].rstrip(".:")
    return sentence if len(sentence) <= 100 else sentence[:97].rstrip() + "..."


def listing() -> str:
    rows = [(name, summary(name)) for name in names()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(["usage: python -m benchmarks NAME [ARGS...]   (NAME --help explains one)", ""]
                     + [f"  {name:<{width}}  {text}" for name, text in rows])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(listing())
        return 0
    name = argv[0].replace("-", "_")
    if name not in names():
        print(f"error: no benchmark named {argv[0]!r}\n\n{listing()}", file=sys.stderr)
        return 2
    sys.argv = [f"python -m benchmarks {name}", *argv[1:]]  # argparse's prog in usage lines
    return int(importlib.import_module(f"benchmarks.{name}").main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
