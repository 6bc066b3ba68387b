"""Which records of a source need work: the source through :func:`chextriev.io.sources.open_source`
(the one reader path), filtered against the ledger of what earlier runs stored.

A record is **unchanged** (not fetched, not decoded) when its key is in the ledger with the same
``version`` (``"<size>:<mtime_ns>"`` for files), or with ``version`` ``None`` for an immutable
source (a DICOMweb instance, by SOPInstanceUID) -- except when that earlier attempt failed: an
immutable record that failed (a 404 or 500 of one instance) is tried again on the next run.
A changed file is re-read with its previous content hash, so a file whose mtime alone changed is
not decoded again.

The view rule, the manifest dialect, the walk and the DICOM tags all live in ``chextriev.io``;
nothing here reads a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chextriev.io.sources import RecordSource, open_source
from chextriev.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger holds for one key."""

    version: str | None  # "<size>:<mtime_ns>", or None for an immutable source
    content_hash: str | None
    failed: bool  # the image row it points at has status "failed"


def open_archive(source: str | Path | RecordSource, *, manifest: str | Path | None = None,
                 exclude: Sequence[str | Path] = (), **options: Any) -> RecordSource:
    """The record source of ``source`` with the indexer's defaults: each source's own class
    list (known findings as the source names them) and ``exclude`` kept out of folder walks."""
    if isinstance(source, RecordSource):
        return source
    return open_source(source, manifest=manifest, class_list=None, exclude=exclude, **options)


def discover(source: str | Path | RecordSource, *, manifest: str | Path | None = None,
             exclude: Sequence[str | Path] = (), **options: Any) -> list[Record]:
    """Every record of ``source`` (a list; for the distributed embedder, which shards it)."""
    return list(open_archive(source, manifest=manifest, exclude=exclude,
                             **options).iter_records())


def pending(records: Iterator[Record], ledger: dict[str, LedgerEntry], counts: Any,
            stored: Callable[[str], str] | None = None) -> Iterator[tuple[Record, str | None]]:
    """``(record, known content hash or None)`` for the records that need work.

    ``counts`` gets ``discovered`` and ``unchanged`` incremented (an ``IndexSummary``).
    ``stored``: how the ledger stores a record key (a pseudonymised run's keyed hash,
    :meth:`chextriev.io.deid.Deidentifier.ledger_key`; default: the key itself).
    """
    for record in records:
        counts.discovered += 1
        known = ledger.get(record.key if stored is None else stored(record.key))
        if known is not None:
            immutable = record.version is None and known.version is None
            if (immutable and not known.failed) or (
                    record.version is not None and record.version == known.version):
                counts.unchanged += 1
                continue
            if immutable:  # failed before: fetch again
                yield record, None
                continue
        yield record, known.content_hash if known is not None else None
