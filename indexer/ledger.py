"""How the ledger stores record keys, and converting the ledger of a pseudonymised catalog.

A run without ``--pseudonymise`` stores each record's key as it is (a file's absolute path, or
``dicomweb:<root>/studies/<S>/series/<E>/instances/<I>``). A pseudonymised run stores its keyed
hash, :func:`chextriev.io.deid.ledger_pseudonym` (``pseudonym:<key id>:file|uri:<64 hex>``),
in ``sources.path`` and ``images.source_path``, made in the decoding worker: the same key gives
the same hash, so reruns, resumed runs and DICOMweb reruns find what earlier runs stored, and no
path, file name or UID is in the catalog. A file key keeps its version check (size and mtime)
through the ``file`` marker; the ``uri`` ones are immutable.

:func:`check_mode` refuses a run whose pseudonymisation (or key) is not the catalog's;
:func:`convert` (``chextriev db upgrade``) replaces the clear keys a pseudonymised catalog of an
earlier chextriev still holds, after :func:`confirm_key` checked that the key given reproduces
the catalog's pseudonyms, and compacts the database so the old values are gone from its files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from chextriev.errors import ChextrievError
from chextriev.io.deid import LEDGER_PREFIX, Deidentifier, key_id
from indexer import db_write

#: What a pseudonymised image id looks like (a keyed hash, or a UID made from one).
_PSEUDONYMOUS_ID = re.compile(r"[0-9a-f]{32}|2\.25\.\d+")


def versioned(stored_key: str) -> bool:
    """Whether a ledger key is a file's (compared by size and mtime) rather than an immutable
    record's (a DICOMweb instance)."""
    if stored_key.startswith(LEDGER_PREFIX):
        return stored_key.split(":", 3)[2] == "file"
    return os.path.isabs(stored_key)


class LedgerModeError(ChextrievError):
    """A run whose pseudonymisation does not match what the catalog's ledger holds."""


def check_mode(stored_keys: Iterable[str], deidentifier: Deidentifier | None, where: str) -> None:
    """Refuse a run into a catalog whose ledger it would mix: a pseudonymised run into a ledger
    holding clear keys (written without ``--pseudonymise``, or by an earlier chextriev under it:
    then ``chextriev db upgrade`` converts them), a run without ``--pseudonymise`` into a
    pseudonymised ledger, or a run with another key."""
    clear, ids = ledger_mode(stored_keys)
    if deidentifier is None:
        if ids:
            raise LedgerModeError(
                f"{where} is pseudonymised (its ledger holds keyed hashes): index it with "
                "--pseudonymise and the same key, or into a new --index-dir/--db")
        return
    if clear:
        raise LedgerModeError(
            f"{where} holds {clear} source path(s) or DICOMweb key(s) in the clear: it was "
            "indexed without --pseudonymise (index into a new --index-dir/--db), or by an "
            "earlier chextriev with --pseudonymise (convert it first: `chextriev db upgrade` "
            "with the same --index-dir/--db and the pseudonymisation key)")
    other = ids - {key_id(deidentifier.key)}
    if other:
        raise LedgerModeError(
            f"{where} was pseudonymised with another key (key id {min(other)}, this key's "
            f"is {key_id(deidentifier.key)}): use the key it was indexed with")


def ledger_mode(keys: Iterable[str]) -> tuple[int, frozenset[str]]:
    """``(number of keys in the clear, key ids of the keyed hashes)`` of ledger keys."""
    clear, ids = 0, set()
    for key in keys:
        if key.startswith(LEDGER_PREFIX):
            ids.add(key.split(":", 2)[1])
        else:
            clear += 1
    return clear, frozenset(ids)


def merged_mode(mode: tuple[int, frozenset[str]], keys: Iterable[str], where: str
                ) -> tuple[int, frozenset[str]]:
    """The ledger mode after adding ``keys`` (a shard's, made by ``chextriev index --devices``'
    ranks or :func:`indexer.distributed.embed_to_shards`) to a ledger of ``mode``; refuses keys
    that would mix clear keys with keyed hashes, or hashes of two keys."""
    clear, ids = mode
    new_clear, new_ids = ledger_mode(keys)
    clear, ids = clear + new_clear, ids | new_ids
    if (clear and ids) or len(ids) > 1:
        kinds = (["source paths or DICOMweb keys in the clear"] if clear else []) + \
            [f"keyed hashes of key id {i}" for i in sorted(ids)]
        raise LedgerModeError(
            f"{where} would mix {' and '.join(kinds)} in one ledger: merge shards made with the "
            "catalog's own --pseudonymise setting and key (or into a new --index-dir/--db)")
    return clear, ids


def check_merge(sessions, shards: Iterable[str | os.PathLike]) -> None:
    """Refuse shard files (in merge order) whose keys would mix the ledger of the catalog of
    ``sessions`` (:func:`merged_mode`), before any of them is written."""
    from indexer.shards import shard_keys

    with sessions() as session:
        mode = ledger_mode(key for key, *_ in db_write.ledger_rows(session))
    for shard in shards:
        mode = merged_mode(mode, shard_keys(shard), f"merging {shard}")


def needs_conversion(session, *, pseudonymised: bool = False) -> int:
    """How many ledger rows a pseudonymised catalog still holds in the clear (0: nothing to
    convert). ``pseudonymised``: the caller knows the catalog is (``db upgrade
    --pseudonymise``); else it counts as pseudonymised when a patient was stored so or a ledger
    row is already a keyed hash."""
    clear = db_write.clear_ledger_count(session, LEDGER_PREFIX)
    if not clear or pseudonymised:
        return clear
    return clear if db_write.pseudonymised_rows(session, LEDGER_PREFIX) else 0


def _candidates(path: str) -> list[str]:
    """The identifiers a reader may have named the record at ``path`` by: each tail of the path
    without its extension (``img``, ``study/img``, ...), and a DICOMweb key's instance UID."""
    if "/instances/" in path:
        return [path.rsplit("/instances/", 1)[1]]
    parts = os.path.splitext(path)[0].strip("/").split("/")
    return ["/".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]


def _file_sop(path: str) -> str | None:
    """The SOPInstanceUID of a DICOM file still at ``path`` (header only), else None."""
    try:
        import pydicom

        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - gone, not DICOM, unreadable: no evidence either way
        return None


def confirm_key(session, deidentifier: Deidentifier, sample: int = 200) -> bool | None:
    """Whether ``deidentifier``'s key reproduces this catalog's pseudonyms from its clear
    ledger (an image id from a path tail, an instance UID from a DICOMweb key or from a DICOM
    file still on disk), on up to ``sample`` rows: True at the first match, False when none
    matched, None when there was nothing to check."""
    rows = db_write.clear_ledger_sample(session, LEDGER_PREFIX, sample)
    for path, image_id, sop in rows:
        for name in _candidates(path):
            if image_id in (deidentifier.pseudonym(name), deidentifier.uid(name)) or (
                    sop and sop == deidentifier.uid(name)):
                return True
        found = _file_sop(path) if sop and os.path.isabs(path) else None
        if found and deidentifier.uid(found) == sop:
            return True
    return False if rows else None


def convert(engine, deidentifier: Deidentifier, *, batch: int = 5000) -> tuple[int, int]:
    """Replace the clear ledger keys and source paths of a pseudonymised catalog by their keyed
    hashes, and image ids a crashed decoder left in the clear by their pseudonyms, in one
    transaction; then compact the database (SQLite: ``VACUUM`` and a truncating WAL checkpoint;
    PostgreSQL: ``VACUUM FULL`` of the tables), so the old values are not left in free pages,
    the WAL file or dead rows. Returns ``(ledger rows, image rows)`` changed."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        sources, images = db_write.clear_ledger_rows(session, LEDGER_PREFIX)
        ledger = [{"id": pk, "path": deidentifier.ledger_key(path)} for pk, path in sources]
        changed = [{"id": pk, "source_path": deidentifier.ledger_key(path),
                    "image_id": image_id if not image_id or _PSEUDONYMOUS_ID.fullmatch(image_id)
                    else deidentifier.pseudonym(image_id)} for pk, path, image_id in images]
        for start in range(0, max(len(ledger), len(changed)), batch):
            db_write.rewrite_ledger(session, ledger[start:start + batch],
                                    changed[start:start + batch])
        session.commit()
    db_write.compact(engine, ("sources", "images", "writer_lock"))
    return len(ledger), len(changed)
