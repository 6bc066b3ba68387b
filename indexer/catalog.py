"""The read side of an index: SQL metadata + Faiss vectors, for the server and for evaluation.

>>> catalog = Catalog.open("sqlite:///idx/catalog.sqlite", "idx")      # doctest: +SKIP
>>> hits = catalog.search(query_vectors, k=10, exclude_patients=["p1"])  # doctest: +SKIP
>>> catalog.images([h.image_id for h in hits[0]])                       # doctest: +SKIP

Ids are the database primary keys (``images.id``), also the Faiss ids. ``Hit.image_id`` is that
integer; the dataset's own image identifier (file stem, dicom id, SOPInstanceUID) is the
``"image_id"`` key of :meth:`Catalog.images`.

Filters (``search(..., filters={...})``), all optional and combined with AND:

* ``view``: ``"PA"``/``"AP"`` or a list of them (images with an unknown view never match);
* ``sex``: ``"M"``/``"F"``;
* ``age_min`` / ``age_max``: years, inclusive (unknown ages never match);
* ``finding``: a finding name or a list (all must hold). An image holds a finding when its
  known label is 1, or, when its labels are unknown, when its predicted probability is >= 0.5.

A search with filters is exact over the allowed set when that set is at most 50,000 images
(brute force on the exact vectors), else it runs on the approximate index with an ID selector.
Exclusions (ids, patients) are applied by over-fetching, so a search always returns k hits when
k images remain.

Storage: metadata in SQL; exact embeddings and region embeddings in the vector store beside the
index (memory-mapped, :mod:`indexer.vector_store`); the Faiss segments mapped from disk
(``IO_FLAG_MMAP``). Everything a search reads is one immutable snapshot: :meth:`Catalog.reload`
builds the snapshot of the newest committed build beside the old one and swaps it in with one
assignment, so searches running meanwhile finish on the old one (no error window).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from chextriev.errors import ChextrievError, UnknownNameError
from indexer.db import (
    STATUS_INDEXED,
    Image,
    Patient,
    Study,
    catalog_state,
    default_db_url,
    image_status,
    make_engine,
    make_sessionmaker,
)
from indexer.sync import StoreExact, open_store
from indexer.thumbnails import as_png, mimetype
from indexer.vector_index import IndexStateError, Manifest, VectorIndex
from indexer.vector_store import StoreError

log = logging.getLogger(__name__)

FILTER_KEYS = ("view", "sex", "age_min", "age_max", "finding")
_CHUNK = 20_000


class UnknownImageError(ChextrievError, LookupError):
    """Image ids that are not in the catalog."""

    def __init__(self, ids: Sequence[int]):
        self.ids = list(ids)
        shown = ", ".join(map(str, self.ids[:10])) + (" ..." if len(self.ids) > 10 else "")
        super().__init__(f"{len(self.ids)} image id(s) not in the catalog: {shown}")


@dataclass(frozen=True)
class Hit:
    """One search result: the database primary key and the cosine similarity."""

    image_id: int
    score: float


@dataclass
class _Snapshot:
    """Everything a search reads, from one committed build (replaced whole on reload)."""

    index: VectorIndex
    store: Any  # VectorStore | None
    generation: int
    ids: np.ndarray
    slots: np.ndarray
    patient_pk: np.ndarray
    patient_key: np.ndarray
    view: np.ndarray
    sex: np.ndarray
    age: np.ndarray
    class_names: tuple[str, ...]
    holds: np.ndarray  # (n, C) bool: image holds finding c (known label, else p >= 0.5)
    patient_rows: dict


class Catalog:
    """SQL metadata + vector store + Faiss index of one indexed archive (read only)."""

    def __init__(self, engine, *, db_url: str, index_dir: Path, device: str = "cpu"):
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.db_url = db_url
        self.index_dir = Path(index_dir)
        self.device = device
        self._snap = self._load()

    @classmethod
    def open(cls, db_url: str | None, index_dir: str | Path, *, device: str = "cpu") -> Catalog:
        """Open the database at ``db_url`` (default ``sqlite:///<index_dir>/catalog.sqlite``)
        and the index saved in ``index_dir``. Raises ChextrievError when either is missing, or
        when the catalog's schema revision is not this code's (naming ``chextriev db upgrade``)."""
        index_dir = Path(index_dir)
        db_url = db_url or default_db_url(index_dir)
        engine = make_engine(db_url, create=False)
        try:
            return cls(engine, db_url=db_url, index_dir=index_dir, device=device)
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ state
    def _load(self) -> _Snapshot:
        """Read the newest committed build and the metadata of its images (one snapshot)."""
        index = VectorIndex.load(self.index_dir, device=self.device, mmap=True)
        with self.sessions() as session:
            state = catalog_state(session)
            store = open_store(session, self.index_dir)
            ids, slots, ppk, pkey, view, sex, age, holds = [], [], [], [], [], [], [], []
            class_names: tuple[str, ...] | None = None
            query = (select(Image.id, Image.vector_slot, Image.patient_id, Patient.key,
                            Image.view, Image.sex, Image.age, Image.known_findings,
                            Image.probabilities)
                     .outerjoin(Patient, Patient.id == Image.patient_id)
                     .where(Image.status == STATUS_INDEXED).order_by(Image.id)
                     .execution_options(yield_per=_CHUNK))
            for rows in session.execute(query).partitions():
                for r in rows:
                    probs = r[8] or {}
                    if class_names is None:
                        class_names = tuple(probs)
                    ids.append(r[0])
                    slots.append(-1 if r[1] is None else r[1])
                    ppk.append(-1 if r[2] is None else r[2])
                    pkey.append(r[3] or "")
                    view.append((r[4] or "").upper())
                    sex.append((r[5] or "").upper())
                    age.append(np.nan if r[6] is None else r[6])
                    holds.append([_holds(r[7], probs, c) for c in class_names])
        class_names = class_names or ()
        snap = _Snapshot(
            index=index, store=store, generation=int(state.generation),
            ids=np.array(ids, np.int64), slots=np.array(slots, np.int64),
            patient_pk=np.array(ppk, np.int64), patient_key=np.array(pkey, dtype=object),
            view=np.array(view, dtype=object), sex=np.array(sex, dtype=object),
            age=np.array(age, np.float64), class_names=class_names,
            holds=np.array(holds, dtype=bool).reshape(len(ids), len(class_names)),
            patient_rows={})
        if store is not None:
            known = snap.slots >= 0
            index.exact = StoreExact(store, snap.ids[known], snap.slots[known])
        for row, (pk, key) in enumerate(zip(snap.patient_pk.tolist(), snap.patient_key.tolist())):
            if pk >= 0:
                snap.patient_rows.setdefault(pk, []).append(row)
                snap.patient_rows.setdefault(key, []).append(row)
        manifest = index.manifest
        if manifest is not None and manifest.catalog_generation != snap.generation:
            log.info("index build %s reflects catalog generation %d, the catalog is at %d "
                     "(indexing in progress, or run `chextriev index verify`); hits missing from "
                     "the catalog are dropped", manifest.build_id, manifest.catalog_generation,
                     snap.generation)
        return snap

    def reload(self) -> bool:
        """Open the newest committed build when it is not the one in use; True when swapped.

        The new snapshot is built beside the old one and swapped in with one assignment, so
        concurrent searches never see a half-loaded state. On failure the old snapshot stays in
        use and the error is raised (retry later)."""
        manifest = Manifest.read(self.index_dir)
        current = self._snap.index.manifest
        if current is not None and manifest.build_id == current.build_id:
            return False
        try:
            snap = self._load()
        except (IndexStateError, StoreError):
            snap = self._load()  # the build moved on while we read it: once more
        self._snap = snap
        return True

    def refresh(self) -> bool:
        """Alias of :meth:`reload`."""
        return self.reload()

    @property
    def index(self) -> VectorIndex:
        return self._snap.index

    @property
    def size(self) -> int:
        """Number of searchable images (in the index and indexed in the database)."""
        snap = self._snap
        return int(np.isin(snap.index.ids, snap.ids).sum())

    @property
    def build_id(self) -> str | None:
        return self._snap.index.manifest.build_id if self._snap.index.manifest else None

    @property
    def manifest(self) -> Manifest | None:
        return self._snap.index.manifest

    @property
    def checkpoint_id(self) -> str | None:
        return self._snap.index.manifest.checkpoint_id if self._snap.index.manifest else None

    @property
    def embedding_dim(self) -> int:
        return self._snap.index.dim

    @property
    def is_current(self) -> bool:
        """True when the index build reflects the catalog state it was opened with."""
        manifest = self._snap.index.manifest
        return manifest is not None and manifest.catalog_generation == self._snap.generation

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._snap.class_names

    def status(self, ids: Iterable[int]) -> dict[int, str]:
        """``{id: status}`` (``indexed`` / ``skipped`` / ``failed`` / ``removed``) of the known
        ids; unknown ids are absent. One indexed query: cheap per request."""
        with self.sessions() as session:
            return image_status(session, ids)

    # ------------------------------------------------------------------ search
    def _allowed_mask(self, snap: _Snapshot, filters: dict[str, Any]) -> np.ndarray:
        unknown = set(filters) - set(FILTER_KEYS)
        if unknown:
            raise UnknownNameError("filter", min(unknown), FILTER_KEYS)
        mask = np.ones(len(snap.ids), dtype=bool)
        if filters.get("view"):
            views = filters["view"]
            views = [views] if isinstance(views, str) else list(views)
            mask &= np.isin(snap.view, [v.upper() for v in views])
        if filters.get("sex"):
            mask &= snap.sex == str(filters["sex"]).upper()[:1]
        if filters.get("age_min") is not None:
            mask &= snap.age >= float(filters["age_min"])  # NaN compares False
        if filters.get("age_max") is not None:
            mask &= snap.age <= float(filters["age_max"])
        if filters.get("finding"):
            findings = filters["finding"]
            findings = [findings] if isinstance(findings, str) else list(findings)
            for finding in findings:
                if finding not in snap.class_names:
                    raise UnknownNameError("finding", finding, snap.class_names)
                mask &= snap.holds[:, snap.class_names.index(finding)]
        return mask

    def search(self, vectors, k: int, *, exclude_ids: Iterable[int] | None = None,
               exclude_patients: Iterable[str | int] | None = None,
               filters: dict[str, Any] | None = None, nprobe: int | None = None
               ) -> list[list[Hit]]:
        """The ``k`` most similar indexed images for each query vector.

        ``vectors`` ``(n, D)`` (L2-normalised here); ``exclude_ids`` database ids to leave out;
        ``exclude_patients`` patient keys as :meth:`images` reports them (``"patient"``) or
        patient primary keys; ``filters`` see the module docstring; ``nprobe`` IVF lists to
        scan (default: the build's). Returns one list of at most ``k`` :class:`Hit` per query,
        best first.
        """
        snap = self._snap
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != snap.index.dim:
            raise ChextrievError(
                f"query vectors have dimension {vectors.shape[1]} but the index holds "
                f"{snap.index.dim}-d vectors (checkpoint {self.checkpoint_id})")
        excluded = np.zeros(len(snap.ids), dtype=bool)
        if exclude_ids is not None:
            excluded[_rows_of(snap.ids, np.fromiter((int(i) for i in exclude_ids), np.int64))] = True
        for patient in exclude_patients or ():
            key = int(patient) if isinstance(patient, (int, np.integer)) else str(patient)
            excluded[snap.patient_rows.get(key, [])] = True
        allowed_ids = None
        if filters:
            allowed_ids = snap.ids[self._allowed_mask(snap, filters) & ~excluded]
            fetch = k
        else:
            fetch = k + int(excluded.sum())
        # Over-fetch a little so that stale index entries (not in the database) can be dropped.
        fetch = min(fetch + 8, max(snap.index.ntotal, 1))
        scores, ids = snap.index.search(vectors, fetch, allowed_ids=allowed_ids, nprobe=nprobe)
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids):
            pos = np.clip(np.searchsorted(snap.ids, row_ids), 0, max(len(snap.ids) - 1, 0))
            keep = (row_ids >= 0) & (len(snap.ids) > 0)
            if len(snap.ids):
                keep &= (snap.ids[pos] == row_ids) & ~excluded[pos]
            results.append([Hit(int(i), float(s))
                            for i, s in zip(row_ids[keep][:k], row_scores[keep][:k])])
        return results

    # ------------------------------------------------------------------ rows
    def lookup(self, image_id: str) -> int | None:
        """The database id of an indexed image by its dataset image id (or source path)."""
        with self.sessions() as session:
            pk = session.execute(
                select(Image.id).where(Image.image_id == image_id, Image.status == STATUS_INDEXED)
            ).scalar()
            if pk is None:
                pk = session.execute(select(Image.id).where(
                    Image.source_path == image_id, Image.status == STATUS_INDEXED)).scalar()
        return pk

    def images(self, ids: Sequence[int]) -> list[dict]:
        """Metadata of ``ids`` in the given order; raises UnknownImageError for unknown ids.

        Keys: ``id``, ``image_id``, ``patient`` (stored key, pseudonymised when indexed with
        ``--pseudonymise``), ``study``, ``view``, ``sex``, ``age``, ``study_date``,
        ``known_findings`` ({finding: 0/1} or None), ``probabilities`` ({finding: p}),
        ``region_probabilities`` ((18, C) nested lists), ``boxes`` ((18, 4) nested lists, None
        rows missing), ``box_source``, ``source_path``, ``width``, ``height``, ``status``,
        ``format``, ``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid``
        (keyed HMACs when pseudonymised), ``pseudonymised``.
        """
        ids = [int(i) for i in ids]
        with self.sessions() as session:
            rows = session.execute(
                select(Image, Patient.key, Study.key, Patient.pseudonymised)
                .outerjoin(Patient, Patient.id == Image.patient_id)
                .outerjoin(Study, Study.id == Image.study_id)
                .where(Image.id.in_(ids))
            ).all()
        by_id = {image.id: (image, patient, study, pseudo) for image, patient, study, pseudo in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise UnknownImageError(missing)
        return [_image_dict(*by_id[i]) for i in ids]

    def thumbnail_bytes(self, image_id: int) -> tuple[bytes, str]:
        """The stored thumbnail as it is stored (JPEG; PNG in older catalogs) and its MIME type."""
        with self.sessions() as session:
            data = session.execute(select(Image.thumbnail).where(Image.id == int(image_id))).first()
        if data is None or data[0] is None:
            raise UnknownImageError([image_id])
        return bytes(data[0]), mimetype(data[0])

    def thumbnail(self, image_id: int) -> bytes:
        """The thumbnail of one image as PNG."""
        return as_png(self.thumbnail_bytes(image_id)[0])

    def _slots(self, ids: Sequence[int]) -> dict[int, int | None]:
        with self.sessions() as session:
            return dict(session.execute(select(Image.id, Image.vector_slot)
                                        .where(Image.id.in_([int(i) for i in ids]))).all())

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Exact embeddings ``(n, D)`` float32, L2-normalised, of ``ids`` (indexed or not, as
        long as they have one)."""
        snap = self._snap
        ids = np.asarray([int(i) for i in ids], dtype=np.int64)
        out = snap.index.vectors(ids) if snap.index.exact is not None else np.full(
            (len(ids), snap.index.dim), np.nan, np.float32)
        missing = ~np.isfinite(out).all(axis=1)
        if missing.any():
            slots = self._slots(ids[missing].tolist())
            absent = [int(i) for i in ids[missing] if slots.get(int(i)) is None]
            if absent or snap.store is None:
                raise UnknownImageError(absent or ids[missing].tolist())
            rows = np.array([slots[int(i)] for i in ids[missing]], np.int64)
            vec = snap.store.embeddings(rows)
            out[missing] = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        return out

    def region_embeddings(self, ids: Sequence[int]) -> np.ndarray | None:
        """Per-region embeddings ``(n, 18, R)`` float32, or None when the model has none."""
        ids = [int(i) for i in ids]
        slots = self._slots(ids)
        missing = [i for i in ids if i not in slots]
        if missing:
            raise UnknownImageError(missing)
        store = self._snap.store
        if not ids or store is None or not store.region_dim or any(slots[i] is None for i in ids):
            return None
        return store.regions(np.array([slots[i] for i in ids], np.int64))


def _rows_of(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Metadata rows of the known ``ids`` (unknown ids are ignored)."""
    if not len(known) or not len(ids):
        return np.zeros(0, np.int64)
    pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
    return pos[known[pos] == ids]


def _holds(known: dict | None, probs: dict, finding: str) -> bool:
    if known:
        return bool(known.get(finding, 0))
    return float(probs.get(finding, 0.0)) >= 0.5


def _image_dict(image: Image, patient_key: str | None, study_key: str | None,
                pseudonymised: bool | None = None) -> dict:
    return {
        "id": image.id,
        "image_id": image.image_id,
        "patient": patient_key,
        "study": study_key,
        "view": image.view,
        "sex": image.sex,
        "age": image.age,
        "study_date": image.study_date,
        "known_findings": image.known_findings,
        "probabilities": image.probabilities,
        "region_probabilities": image.region_probabilities,
        "boxes": image.boxes,
        "box_source": image.box_source,
        "source_path": image.source_path,
        "width": image.width,
        "height": image.height,
        "status": image.status,
        "format": image.format,
        # DICOM UIDs as stored (keyed HMACs when the run pseudonymised: then ``pseudonymised``)
        "study_instance_uid": image.study_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "sop_instance_uid": image.sop_instance_uid,
        "pseudonymised": bool(pseudonymised),
    }
