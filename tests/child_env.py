"""The environment of a Python child process that a test starts (``python -c SCRIPT``): the
checkout and the test helpers' folders importable, as they are in the test process (pytest's
``pythonpath`` setting), so that no script edits ``sys.path``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The checkout first (its packages over an installed copy), then the helpers' folders.
IMPORT_DIRS = (REPO_ROOT, REPO_ROOT / "tests", REPO_ROOT / "tests" / "indexer")


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with :data:`IMPORT_DIRS` before its ``PYTHONPATH``, and ``extra`` set."""
    path = [str(d) for d in IMPORT_DIRS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}
