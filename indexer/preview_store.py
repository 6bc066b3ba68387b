"""Per-image previews (about 1024 px on the long side, 8-bit grey JPEG) in files beside the index,
never in SQL rows: what the viewer shows an archived case at, and what Grad-CAM of an archived
image is computed on.

Layout (``<index_dir>/previews/``)::

    entries.i64   (n, 4) int64   per vector slot: image primary key, offset, length, CRC-32
    data.bin                     the JPEG bytes, one after the other

A preview belongs to a *slot* of the vector store (:mod:`indexer.vector_store`): row ``s`` of
``entries.i64`` is the preview of the image stored in slot ``s`` (``images.vector_slot``), so
the catalog's committed store length (``catalog_state.store_rows``) is the commit point of both
files, and the same protocol makes them crash-safe: :meth:`PreviewStore.write` writes the
entries ``[committed, committed + n)`` and their bytes after the committed data, and fsyncs
both *before* the database transaction naming those slots commits; an uncommitted tail left by
a killed run is cut off by the next write. Readers never read an entry at or past the committed
length, and check that the entry names the image asked for (its primary key) and that its bytes
have the recorded CRC: a torn or foreign preview is never served, the thumbnail is.

An image without a preview (indexed with ``--preview-side 0``, or before previews existed) has
length 0, or no entry at all (an older catalog has no ``previews/`` folder): callers fall back to
the thumbnail.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chextriev.files import fsync_handle

log = logging.getLogger(__name__)

PREVIEW_DIR = "previews"
ENTRIES = "entries.i64"
DATA = "data.bin"
#: int64 fields of an entry: image primary key, offset in data.bin, length, CRC-32.
FIELDS = 4
ENTRY_BYTES = 8 * FIELDS


class PreviewStore:
    """The preview files of one index folder; see the module docstring."""

    def __init__(self, index_dir: str | Path, committed: int):
        self.root = Path(index_dir) / PREVIEW_DIR
        self.committed = int(committed)

    @property
    def entries_path(self) -> Path:
        return self.root / ENTRIES

    @property
    def data_path(self) -> Path:
        return self.root / DATA

    def exists(self) -> bool:
        return self.entries_path.is_file()

    def file_rows(self) -> int:
        """Complete entries in the entries file (may exceed ``committed``: an uncommitted tail)."""
        return self.entries_path.stat().st_size // ENTRY_BYTES if self.exists() else 0

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in (self.entries_path, self.data_path) if p.exists())

    # ------------------------------------------------------------------ writing
    def _committed_end(self, entries) -> int:
        """End of the committed bytes in data.bin (after the last committed entry)."""
        rows = min(self.committed, self.file_rows())
        if rows == 0:
            return 0
        entries.seek((rows - 1) * ENTRY_BYTES)
        _, offset, length, _ = np.frombuffer(entries.read(ENTRY_BYTES), np.int64)
        return int(offset + length)

    def write(self, keys: Sequence[int], previews: Sequence[bytes | None]) -> None:
        """Write the entries of slots ``[committed, committed + n)`` (``keys``: their image
        primary keys, ``previews``: JPEG bytes or None) and fsync; nothing is committed until
        :meth:`commit`. Slots before ``committed`` that have no entry (a catalog made before
        previews) are padded with empty entries. Does nothing when no preview was ever stored
        and none is given (an index without previews gets no files)."""
        keys = [int(k) for k in keys]
        if len(keys) != len(previews):
            raise ValueError(f"{len(keys)} keys for {len(previews)} previews")
        if not self.exists() and not any(previews):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        mode = "r+b" if self.exists() else "w+b"
        with open(self.entries_path, mode) as entries, \
                open(self.data_path, "r+b" if self.data_path.exists() else "w+b") as data:
            end = self._committed_end(entries)
            have = min(self.committed, self.file_rows())
            rows = [(-1, end, 0, 0)] * (self.committed - have)  # padding: no preview
            start, blobs = end, []
            for key, blob in zip(keys, previews):
                blob = bytes(blob or b"")
                rows.append((key, end, len(blob), zlib.crc32(blob)))
                blobs.append(blob)
                end += len(blob)
            data.seek(start)
            data.write(b"".join(blobs))
            data.truncate()  # drop any uncommitted tail beyond these bytes
            fsync_handle(data)
            entries.seek(have * ENTRY_BYTES)
            entries.write(np.asarray(rows, np.int64).reshape(-1, FIELDS).tobytes())
            entries.truncate()
            fsync_handle(entries)

    def commit(self, rows: int) -> None:
        """The database committed ``rows`` as the store length."""
        self.committed = int(rows)

    # ------------------------------------------------------------------ reading
    def entry(self, slot: int) -> tuple[int, int, int, int] | None:
        """``(image pk, offset, length, crc)`` of a committed slot, or None when it has none."""
        slot = int(slot)
        if not 0 <= slot < min(self.committed, self.file_rows()):
            return None
        with open(self.entries_path, "rb") as entries:
            raw = os.pread(entries.fileno(), ENTRY_BYTES, slot * ENTRY_BYTES)
        key, offset, length, crc = (int(v) for v in np.frombuffer(raw, np.int64))
        return key, offset, length, crc

    def get(self, slot: int | None, image_pk: int) -> bytes | None:
        """The preview JPEG of ``image_pk`` stored at ``slot``, or None when there is none (or
        what is stored there is not that image's intact preview: logged)."""
        if slot is None:
            return None
        found = self.entry(slot)
        if found is None or found[2] == 0:
            return None
        key, offset, length, crc = found
        if key != int(image_pk):
            log.warning("preview slot %d names image %d, not %d: not served", slot, key, image_pk)
            return None
        with open(self.data_path, "rb") as data:
            blob = os.pread(data.fileno(), length, offset)
        if len(blob) != length or zlib.crc32(blob) != crc:
            log.warning("preview of image %d is damaged (run `chextriev index verify`): not "
                        "served", image_pk)
            return None
        return blob

    def verify(self, slots_by_pk: dict[int, int], *, sample: Sequence[int] | None = None
               ) -> list[str]:
        """Differences between the entries and the catalog's indexed images (``{pk: slot}``):
        an entry naming another image, bytes beyond data.bin; the CRC of every preview (or of
        the ``sample`` of primary keys). No preview files at all is not a difference."""
        if not self.exists():
            return []
        rows = min(self.committed, self.file_rows())
        problems: list[str] = []
        if self.file_rows() < self.committed:  # every write since the first covers its slots
            problems.append(f"previews: {self.entries_path} holds {self.file_rows()} entries, "
                            f"the catalog names {self.committed} slots (truncated)")
        table = np.fromfile(self.entries_path, np.int64, count=rows * FIELDS).reshape(-1, FIELDS)
        size = self.data_path.stat().st_size if self.data_path.exists() else 0
        checked = set(slots_by_pk) if sample is None else {int(pk) for pk in sample}
        bad = 0
        with open(self.data_path, "rb") if size else open(os.devnull, "rb") as data:
            for pk, slot in slots_by_pk.items():
                if slot >= rows or table[slot, 2] == 0:
                    continue
                key, offset, length, crc = (int(v) for v in table[slot])
                if key != pk:
                    problems.append(f"previews: slot {slot} names image {key}, the catalog says "
                                    f"{pk}")
                elif offset < 0 or offset + length > size:
                    problems.append(f"previews: the preview of image {pk} lies beyond {DATA}")
                elif pk in checked and zlib.crc32(os.pread(data.fileno(), length, offset)) != crc:
                    bad += 1
                    if bad <= 10:
                        problems.append(f"previews: the preview of image {pk} is damaged "
                                        "(CRC mismatch; it is not served, the thumbnail is)")
        if bad > 10:
            problems.append(f"previews: {bad - 10} more damaged preview(s)")
        return problems
