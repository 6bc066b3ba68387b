"""The search columns of a build, in files beside the index: what a search filters and excludes
on, for every image of the build, written by the index syncer with each build and
memory-mapped by readers (the pages are shared by every server worker on the machine, and
opening costs a manifest read, not a pass over the catalog).

Layout (``<index_dir>/columns/<set>/``), one row per image of the build, sorted by id::

    ids.i64        (n,)    int64    image primary key (the index's ids)
    slots.i64      (n,)    int64    vector store slot
    patient.i64    (n,)    int64    patient primary key (-1: none)
    view.i16       (n,)    int16    code into ``views`` (upper-cased; "" = unknown)
    sex.i16        (n,)    int16    code into ``sexes``
    age.f64        (n,)    float64  years (NaN: unknown)
    findings.f64   (n, C)  float64  per class: 2 when the known label is 1, -1 when it is 0,
                                    else the predicted probability (0 when absent)

so that an image holds finding ``c`` at threshold ``t`` (0 <= t <= 1) exactly when
``findings[:, c] >= t``: its known label when it has labels, else its prediction.

The manifest's key ``columns`` (``{"set", "rows", "class_names", "views", "sexes", "files"}``) is the
commit point: a reader maps ``rows`` rows. A build that only adds images (their ids above the
last one) appends to the same set: rows past the committed count are written and fsynced
before the manifest names them, and a killed build's tail is overwritten by the next one; rows
that a reader has mapped never change. A build after removals writes a new set (the rows kept
from the previous set, plus the new ones); the previous set stays until the manifest after
next (:func:`indexer.manifest.sweep`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import UnknownNameError
from chextriev.files import fsync_dir, fsync_handle
from indexer.manifest import COLUMNS, new_name

FILTER_KEYS = ("view", "sex", "age_min", "age_max", "finding")
#: file name -> dtype of the column (``findings`` has one column per class).
FILES = {"ids": np.int64, "slots": np.int64, "patient": np.int64, "view": np.int16,
         "sex": np.int16, "age": np.float64, "findings": np.float64}
SUFFIX = {np.int64: "i64", np.int16: "i16", np.float64: "f64"}


def file_name(name: str) -> str:
    return f"{name}.{SUFFIX[FILES[name]]}"


@dataclass
class Columns:
    """The search columns of one build (mapped files, or in-memory arrays of an index built
    before column files); see the module docstring."""

    ids: np.ndarray
    slots: np.ndarray
    patient: np.ndarray
    view: np.ndarray
    sex: np.ndarray
    age: np.ndarray
    findings: np.ndarray  # (n, C)
    class_names: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    _holds: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def open(cls, index_dir: str | Path, meta: dict) -> Columns:
        """Map the ``meta["rows"]`` committed rows of the column set ``meta`` names."""
        root = Path(index_dir) / COLUMNS / meta["set"]
        rows, width = int(meta["rows"]), len(meta["class_names"])
        arrays = {}
        for name, dtype in FILES.items():
            shape = (rows, width) if name == "findings" else (rows,)
            if rows and (width or name != "findings"):
                arrays[name] = np.memmap(root / file_name(name), dtype=dtype, mode="r",
                                         shape=shape)
            else:
                arrays[name] = np.zeros(shape, dtype)
        return cls(**arrays, class_names=tuple(meta["class_names"]), views=tuple(meta["views"]),
                   sexes=tuple(meta["sexes"]))

    def mask(self, filters: dict[str, Any], thresholds: Mapping[str, float],
             default_threshold: float) -> np.ndarray:
        """``(n,)`` bool: the images that pass ``filters`` (``view``, ``sex``, ``age_min``,
        ``age_max``, ``finding``: see :mod:`indexer.catalog`); a predicted finding counts at
        ``thresholds[name]``, else ``default_threshold``."""
        unknown = set(filters) - set(FILTER_KEYS)
        if unknown:
            raise UnknownNameError("filter", min(unknown), FILTER_KEYS)
        mask = np.ones(len(self), dtype=bool)
        if filters.get("view"):
            views = filters["view"]
            views = [views] if isinstance(views, str) else list(views)
            mask &= np.isin(self.view, _codes_of(self.views, [v.upper() for v in views]))
        if filters.get("sex"):
            mask &= np.isin(self.sex, _codes_of(self.sexes, [str(filters["sex"]).upper()[:1]]))
        if filters.get("age_min") is not None:
            mask &= self.age >= float(filters["age_min"])  # NaN compares False
        if filters.get("age_max") is not None:
            mask &= self.age <= float(filters["age_max"])
        if filters.get("finding"):
            findings = filters["finding"]
            for finding in [findings] if isinstance(findings, str) else list(findings):
                if finding not in self.class_names:
                    raise UnknownNameError("finding", finding, self.class_names)
                mask &= self.holds(self.class_names.index(finding),
                                   thresholds.get(finding, default_threshold))
        return mask

    def holds(self, finding: int, threshold: float) -> np.ndarray:
        """``(n,)`` bool: which images hold finding ``finding`` at ``threshold`` (computed once
        per finding and threshold)."""
        key = (int(finding), float(threshold))
        if key not in self._holds:
            self._holds[key] = np.asarray(self.findings[:, key[0]] >= key[1])
        return self._holds[key]

    def rows_of_patients(self, pks: np.ndarray) -> np.ndarray:
        """Rows of the images of patients ``pks`` (primary keys): one pass over the column."""
        if not len(pks) or not len(self.ids):
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.isin(self.patient, pks))

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the known ``ids`` (unknown ids are ignored)."""
        if not len(self.ids) or not len(ids):
            return np.zeros(0, np.int64)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
        return pos[self.ids[pos] == ids]

    def slot_map(self, ids: list[int]) -> dict[int, int]:
        """``{id: vector-store slot}`` of the ``ids`` in this set (the others are left out)."""
        if not len(self.ids) or not ids:
            return {}
        wanted = np.asarray(ids, np.int64)
        pos = np.clip(np.searchsorted(self.ids, wanted), 0, len(self.ids) - 1)
        found = self.ids[pos] == wanted
        return dict(zip(wanted[found].tolist(), np.asarray(self.slots)[pos[found]].tolist()))

    def meta(self, name: str) -> dict:
        """The manifest entry of this column set as set ``name``."""
        return {"set": name, "rows": len(self), "class_names": list(self.class_names),
                "views": list(self.views), "sexes": list(self.sexes),
                "files": [f"{COLUMNS}/{name}/{file_name(column)}" for column in FILES]}


def _codes_of(vocab: Sequence[str], values: Sequence[str]) -> list[int]:
    """Codes of the ``values`` found in ``vocab`` (absent values match nothing)."""
    return [vocab.index(v) for v in values if v in vocab]


def codes(values: np.ndarray, vocab: list[str]) -> np.ndarray:
    """``values`` (object array, None = "") as int16 codes into ``vocab`` (extended in place
    with new values): one hash pass in C (``pandas.factorize``)."""
    import pandas as pd

    found, uniques = pd.factorize(np.where(values == None, "", values))
    lookup = {v: i for i, v in enumerate(vocab)}
    for value in uniques:
        lookup.setdefault(str(value), len(lookup))
    vocab[:] = sorted(lookup, key=lookup.get)
    remap = np.array([lookup[str(v)] for v in uniques] or [0], np.int16)
    return remap[found] if len(found) else np.zeros(0, np.int16)


def from_rows(rows: Sequence[Sequence], class_names: Sequence[str], *,
              views: Sequence[str] = (), sexes: Sequence[str] = ()) -> Columns:
    """Columns (in memory) of :func:`indexer.db_read.column_rows` result rows (sorted by id);
    ``views``/``sexes``: the vocabularies to extend (codes of a previous set stay valid)."""
    width = 6 + len(class_names)
    cols = ([np.array(col, dtype=object) for col in zip(*rows)] if rows else
            [np.zeros(0, object) for _ in range(width)])
    view_vocab, sex_vocab = list(views), list(sexes)
    n = len(cols[0])
    findings = (np.array(cols[6:], dtype=np.float64).T if class_names else
                np.zeros((n, 0), np.float64)).reshape(n, len(class_names))
    return Columns(
        ids=cols[0].astype(np.int64), slots=np.where(cols[1] == None, -1, cols[1]).astype(np.int64),
        patient=np.where(cols[2] == None, -1, cols[2]).astype(np.int64),
        view=codes(cols[3], view_vocab), sex=codes(cols[4], sex_vocab),
        age=np.where(cols[5] == None, np.nan, cols[5]).astype(np.float64),
        findings=np.ascontiguousarray(findings), class_names=tuple(class_names),
        views=tuple(view_vocab), sexes=tuple(sex_vocab))


def concat(old: Columns, new: Columns, keep: np.ndarray | None = None) -> Columns:
    """``old`` (its rows ``keep``, all when None) followed by ``new`` (vocabularies of ``new``,
    which extend ``old``'s), sorted by id."""
    pick = slice(None) if keep is None else keep
    parts = {name: np.concatenate([np.asarray(getattr(old, name)[pick]), getattr(new, name)])
             for name in ("ids", "slots", "patient", "view", "sex", "age", "findings")}
    order = np.argsort(parts["ids"], kind="stable")
    return Columns(**{name: np.ascontiguousarray(a[order]) for name, a in parts.items()},
                   class_names=new.class_names, views=new.views, sexes=new.sexes)


def write(index_dir: str | Path, columns: Columns, *, append_to: dict | None = None) -> dict:
    """Write ``columns`` as a new column set, or, with ``append_to`` (the manifest's ``columns``
    of the previous build), append them to that set after its committed rows (their ids must
    be above its last one; ``columns``' vocabularies extend its). The files are fsynced but
    not committed: the next manifest names them. Returns the manifest entry."""
    name = append_to["set"] if append_to else new_name()
    start = int(append_to["rows"]) if append_to else 0
    root = Path(index_dir) / COLUMNS / name
    root.mkdir(parents=True, exist_ok=True)
    for column, dtype in FILES.items():
        path = root / file_name(column)
        data = np.ascontiguousarray(getattr(columns, column), dtype)
        row_bytes = data.itemsize * (data.shape[1] if data.ndim == 2 else 1)
        with open(path, "r+b" if append_to and path.exists() else "w+b") as handle:
            handle.seek(start * row_bytes)
            handle.write(data.tobytes())
            handle.truncate()  # a killed build's uncommitted tail goes
            fsync_handle(handle)
    fsync_dir(root)
    meta = columns.meta(name)
    meta["rows"] = start + len(columns)
    return meta
