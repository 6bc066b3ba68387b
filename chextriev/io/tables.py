"""Small helpers shared by the dataset readers: find a CSV that may be gzipped, read it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from chextriev.errors import DataFormatError


def find_table(root: Path, stem: str, *, depth: int = 2) -> Path | None:
    """``root/<stem>`` or ``root/<stem>.gz``, also in sub-folders up to ``depth`` deep.

    ``stem`` may hold a glob (``Data_Entry_2017*.csv``). The shallowest match wins.
    """
    root = Path(root)
    for level in range(depth + 1):
        prefix = "*/" * level
        matches = sorted(root.glob(prefix + stem)) + sorted(root.glob(prefix + stem + ".gz"))
        if matches:
            return matches[0]
    return None


def read_csv(path: Path, *, required: tuple[str, ...] = (), **kwargs: Any) -> pd.DataFrame:
    """Read a CSV (``.gz`` handled) as strings; check ``required`` columns are present.

    Raises:
        DataFormatError: unreadable file, or a required column is missing (lists the columns).
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(frame.columns)}"
        )
    return frame


def cell(value: Any) -> str | None:
    """A CSV cell as a stripped string, ``None`` when empty/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def int_or_none(value: Any) -> int | None:
    """A CSV cell as an int (``"512"``, ``"512.0"``), ``None`` when empty or not a number."""
    text = cell(value)
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None
