"""The bulk vectors of a catalog, in append-only files beside the index (not in SQL rows).

Layout (``<index_dir>/store/``)::

    meta.json           {"format": 1, "dim": D, "regions": 18, "region_dim": R | null}
    keys.i64            (n,)        int64    image primary key of each slot
    embeddings.f32      (n, D)      float32  the exact embedding (as the model gave it)
    regions.i8          (n, 18, R)  int8     region embeddings, quantised per region ...
    region_scales.f32   (n, 18)     float32  ... with this scale (max |x| / 127; NaN: missing)

A *slot* is a row in every file; ``images.vector_slot`` names it. Slots are only ever appended:
a replaced or removed image leaves its slot unused.

Commit protocol (why kill -9 at any moment leaves files and database consistent): the database
holds the committed length (``catalog_state.store_rows``), in the same transaction as the image
rows that name the new slots. :meth:`VectorStore.write` writes rows ``[committed, committed+n)``
and fsyncs every file *before* that transaction commits; :meth:`VectorStore.commit` then moves
the in-memory committed length. A run killed before the commit leaves an uncommitted tail that
no row names; the next write overwrites it. Readers never look past the committed length.

Region embeddings are int8 with a per-region scale: 18 x R bytes + 72 instead of 36 x R bytes
in float16 (the per-region cosine changes by about 1e-3), which is what keeps a million images
of a 1024-wide model within this machine's disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from chextriev.errors import ChextrievError
from chextriev.files import atomic_write, fsync_handle
from indexer.db import catalog_state

log = logging.getLogger(__name__)

STORE_DIR = "store"
META = "meta.json"
FORMAT = 1
NUM_REGIONS = 18


class StoreError(ChextrievError):
    """A vector store that is missing, shorter than the database says, or of another shape."""


def quantise_regions(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 18, R)`` float -> (``(n, 18, R)`` int8, ``(n, 18)`` float32 scales)."""
    regions = np.asarray(regions, dtype=np.float32)
    finite = np.isfinite(regions).all(axis=2)
    clean = np.where(np.isfinite(regions), regions, 0.0)
    peak = np.abs(clean).max(axis=2)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(clean / scales[..., None]), -127, 127).astype(np.int8)
    scales[~finite] = np.nan
    return codes, scales


def dequantise_regions(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantise_regions` (NaN rows where the region was missing)."""
    return codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)[..., None]


class VectorStore:
    """Append-only vector files of one catalog; see the module docstring."""

    def __init__(self, root: Path, meta: dict, committed: int):
        self.root = Path(root)
        self.dim = int(meta["dim"])
        self.region_dim = None if meta.get("region_dim") in (None, 0) else int(meta["region_dim"])
        self.committed = int(committed)
        self._maps: dict[str, np.ndarray] = {}
        self._mapped_rows = -1

    # ------------------------------------------------------------------ opening
    @staticmethod
    def path(index_dir: str | Path) -> Path:
        return Path(index_dir) / STORE_DIR

    @classmethod
    def exists(cls, index_dir: str | Path) -> bool:
        return (cls.path(index_dir) / META).is_file()

    @classmethod
    def open(cls, index_dir: str | Path, *, committed: int, dim: int | None = None,
             region_dim: int | None = None, create: bool = False) -> VectorStore:
        """Open the store of ``index_dir`` with ``committed`` rows (from the database).

        With ``create`` (and ``dim``) a missing store is created. A store whose files hold fewer
        rows than ``committed``, or of another dimension, raises :class:`StoreError`.
        """
        root = cls.path(index_dir)
        meta_path = root / META
        if not meta_path.is_file():
            if committed:
                raise StoreError(
                    f"the catalog names {committed} stored vector rows but {root} has no "
                    f"{META}: the vector store was deleted or the wrong --index-dir is used")
            if not create or dim is None:
                raise StoreError(f"no vector store in {root} (run `chextriev index`)")
            root.mkdir(parents=True, exist_ok=True)
            meta = {"format": FORMAT, "dim": int(dim), "regions": NUM_REGIONS,
                    "region_dim": None if region_dim is None else int(region_dim)}
            atomic_write(meta_path, json.dumps(meta))
        else:
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError as error:
                raise StoreError(f"{meta_path} is not valid JSON: {error}") from error
        store = cls(root, meta, committed)
        if dim is not None and store.dim != int(dim):
            raise StoreError(f"the vector store in {root} holds {store.dim}-d embeddings, this "
                             f"run makes {dim}-d ones: index into a new --index-dir")
        if region_dim is not None and store.region_dim is None and committed == 0:
            store._set_region_dim(int(region_dim))
        store.check_lengths()
        return store

    def _set_region_dim(self, region_dim: int) -> None:
        self.region_dim = region_dim
        meta = {"format": FORMAT, "dim": self.dim, "regions": NUM_REGIONS, "region_dim": region_dim}
        atomic_write(self.root / META, json.dumps(meta))

    # ------------------------------------------------------------------ files
    def _files(self) -> dict[str, tuple[Path, int]]:
        """name -> (path, bytes per row)."""
        files = {"keys": (self.root / "keys.i64", 8),
                 "embeddings": (self.root / "embeddings.f32", 4 * self.dim)}
        if self.region_dim:
            files["regions"] = (self.root / "regions.i8", NUM_REGIONS * self.region_dim)
            files["region_scales"] = (self.root / "region_scales.f32", 4 * NUM_REGIONS)
        return files

    def file_rows(self) -> dict[str, int]:
        """Complete rows in each file (may exceed ``committed``: an uncommitted tail)."""
        out = {}
        for name, (path, row_bytes) in self._files().items():
            out[name] = (path.stat().st_size // row_bytes) if path.exists() else 0
        return out

    def check_lengths(self) -> None:
        short = {name: rows for name, rows in self.file_rows().items() if rows < self.committed}
        if short:
            raise StoreError(
                f"the vector store in {self.root} is shorter than the catalog says "
                f"({self.committed} rows committed; files: {short}): it was truncated or "
                "replaced. Restore it, or re-index into a new --index-dir")

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p, _ in self._files().values() if p.exists())

    # ------------------------------------------------------------------ writing
    def write(self, keys, embeddings, regions=None) -> np.ndarray:
        """Write rows after the committed length and fsync; returns their slots ``(n,)``.

        ``keys`` ``(n,)`` image primary keys; ``embeddings`` ``(n, D)``; ``regions``
        ``(n, 18, R)`` or None. Nothing is committed until :meth:`commit` (call it after the
        database transaction naming these slots has committed).
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(keys), -1)
        if embeddings.shape[1] != self.dim:
            raise StoreError(f"embeddings of dimension {embeddings.shape[1]}, the store holds "
                             f"{self.dim}")
        if regions is not None and self.region_dim is None and self.committed == 0:
            self._set_region_dim(int(np.asarray(regions).shape[2]))
        blocks = {"keys": keys.tobytes(), "embeddings": embeddings.tobytes()}
        if self.region_dim:
            if regions is None:
                codes = np.zeros((len(keys), NUM_REGIONS, self.region_dim), np.int8)
                scales = np.full((len(keys), NUM_REGIONS), np.nan, np.float32)
            else:
                regions = np.asarray(regions, dtype=np.float32)
                if regions.shape[1:] != (NUM_REGIONS, self.region_dim):
                    raise StoreError(f"region embeddings of shape {regions.shape[1:]}, the store "
                                     f"holds (18, {self.region_dim})")
                codes, scales = quantise_regions(regions)
            blocks["regions"] = codes.tobytes()
            blocks["region_scales"] = scales.tobytes()
        for name, (path, row_bytes) in self._files().items():
            mode = "r+b" if path.exists() else "w+b"
            with open(path, mode) as handle:
                handle.seek(self.committed * row_bytes)
                handle.write(blocks[name])
                handle.truncate()  # drop any uncommitted tail beyond these rows
                fsync_handle(handle)
        return np.arange(self.committed, self.committed + len(keys), dtype=np.int64)

    def commit(self, rows: int) -> None:
        """The database committed ``rows`` as the store length."""
        self.committed = int(rows)

    # ------------------------------------------------------------------ reading
    def _map(self, name: str) -> np.ndarray:
        if self._mapped_rows != self.committed:
            self._maps.clear()
            self._mapped_rows = self.committed
        if name not in self._maps:
            path = self._files()[name][0]
            shape = {"keys": (self.committed,), "embeddings": (self.committed, self.dim),
                     "regions": (self.committed, NUM_REGIONS, self.region_dim or 0),
                     "region_scales": (self.committed, NUM_REGIONS)}[name]
            dtype = {"keys": np.int64, "embeddings": np.float32, "regions": np.int8,
                     "region_scales": np.float32}[name]
            if self.committed == 0:
                self._maps[name] = np.zeros(shape, dtype)
            else:
                self._maps[name] = np.memmap(path, dtype=dtype, mode="r", shape=shape)
        return self._maps[name]

    def _check_slots(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        if len(slots) and (slots.min() < 0 or slots.max() >= self.committed):
            raise StoreError(f"vector slot out of range (committed rows: {self.committed})")
        return slots

    def keys(self, slots) -> np.ndarray:
        """Image primary key stored in each slot ``(n,)``."""
        return np.asarray(self._map("keys")[self._check_slots(slots)])

    def embeddings(self, slots) -> np.ndarray:
        """Exact embeddings ``(n, D)`` float32 of ``slots`` (memory-mapped reads)."""
        slots = self._check_slots(slots)
        if not len(slots):
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._map("embeddings")[slots], dtype=np.float32)

    def regions(self, slots) -> np.ndarray | None:
        """Region embeddings ``(n, 18, R)`` float32, or None when the model has none."""
        slots = self._check_slots(slots)
        if not self.region_dim:
            return None
        return dequantise_regions(np.asarray(self._map("regions")[slots]),
                                  np.asarray(self._map("region_scales")[slots]))

    def read_block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, embeddings)`` of slots ``[start, stop)`` read with plain file reads (no
        mapping: the writer streams the store in chunks without growing its resident set)."""
        stop = min(int(stop), self.committed)
        start = max(0, min(int(start), stop))
        n = stop - start
        with open(self._files()["keys"][0], "rb") as handle:
            handle.seek(start * 8)
            keys = np.frombuffer(handle.read(n * 8), dtype=np.int64)
        with open(self._files()["embeddings"][0], "rb") as handle:
            handle.seek(start * 4 * self.dim)
            vectors = np.frombuffer(handle.read(n * 4 * self.dim), dtype=np.float32)
        return keys, vectors.reshape(n, self.dim)

    def close(self) -> None:
        self._maps.clear()
        self._mapped_rows = -1


def open_store(session, index_dir: str | Path, *, dim: int | None = None,
               create: bool = False) -> VectorStore | None:
    """The vector store of ``index_dir`` at the length the catalog (``session``) committed;
    None when there is none and ``create`` is not asked."""
    committed = int(catalog_state(session).store_rows)
    if not VectorStore.exists(index_dir) and not committed and not create:
        return None
    return VectorStore.open(index_dir, committed=committed, dim=dim, create=create)
