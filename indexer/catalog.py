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
  known label is 1, or, when its labels are unknown, when its predicted probability reaches the
  class's threshold (``Catalog.open(..., finding_thresholds=)``: the server passes the
  checkpoint's, chosen on validation; 0.5 for a class without one).

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
import operator
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Text, and_, case, cast, func, literal, or_, select

from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.io.pixels import image_mimetype
from indexer.bundle import Bundle
from indexer.db import (
    STATUS_INDEXED,
    CatalogSchemaError,
    CatalogUnavailableError,
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
from indexer.vector_index import MANIFEST, IndexStateError, Manifest, VectorIndex
from indexer.vector_store import StoreError

log = logging.getLogger(__name__)

#: The errors of the door: what a caller of :class:`Catalog` catches.
__all__ = ["Catalog", "CatalogSchemaError", "CatalogUnavailableError", "Hit", "IndexStateError",
           "UnknownImageError"]

FILTER_KEYS = ("view", "sex", "age_min", "age_max", "finding")
_CHUNK = 20_000
#: Finding bits packed per integer column of the metadata query.
_BITS = 60


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
    """Everything a search reads, from one committed build (replaced whole on reload).

    One row per indexed image, sorted by id; columns are numpy arrays (no Python object per
    row): ``view``/``sex`` are codes into ``views``/``sexes``, ``holds`` the finding bits."""

    index: VectorIndex
    store: Any  # VectorStore | None
    generation: int
    ids: np.ndarray
    slots: np.ndarray
    patient_pk: np.ndarray
    view: np.ndarray  # int16 codes into ``views``
    sex: np.ndarray  # int16 codes into ``sexes``
    age: np.ndarray
    class_names: tuple[str, ...]
    holds: np.ndarray  # (n, C) bool: image holds finding c (known label, else p >= its threshold)
    views: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    size: int = 0
    checkpoint_id: str | None = None
    removals: int = 0  # catalog_state.removals when read
    top: int = 0  # the highest indexed id when read (rows above it are new)
    patient_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def rows_of_patients(self, pks: np.ndarray) -> np.ndarray:
        """Metadata rows of the images of patients ``pks`` (primary keys)."""
        if not len(pks) or not len(self.ids):
            return np.zeros(0, np.int64)
        sorted_pk = self.patient_pk[self.patient_order]
        lo = np.searchsorted(sorted_pk, pks, side="left")
        hi = np.searchsorted(sorted_pk, pks, side="right")
        return np.concatenate([self.patient_order[a:b] for a, b in zip(lo, hi)] or
                              [np.zeros(0, np.int64)])


#: the predicted-finding threshold of a class the caller gave none for
DEFAULT_FINDING_THRESHOLD = 0.5


def _metadata_query(class_names: Sequence[str], thresholds: Mapping[str, float] | None = None):
    """The columns of :class:`_Snapshot` for indexed rows, the finding bits computed by the
    database from the JSON columns (packed: bit c of ``holds<g>`` is class ``60 g + c``); a
    prediction counts at ``thresholds[name]`` (default :data:`DEFAULT_FINDING_THRESHOLD`)."""
    thresholds = thresholds or {}
    known_text = cast(Image.known_findings, Text)
    has_known = and_(Image.known_findings.isnot(None), known_text.notin_(("null", "{}")))
    columns = [Image.id, Image.vector_slot, Image.patient_id, func.upper(Image.view),
               func.upper(Image.sex), Image.age]
    for group in range(0, len(class_names), _BITS):
        bits = []
        for bit, name in enumerate(class_names[group:group + _BITS]):
            known = func.coalesce(Image.known_findings[name].as_float(), 0.0) != 0
            cut = float(thresholds.get(name, DEFAULT_FINDING_THRESHOLD))
            predicted = func.coalesce(Image.probabilities[name].as_float(), 0.0) >= cut
            bits.append(case((or_(and_(has_known, known), and_(~has_known, predicted)),
                              literal(1 << bit, BigInteger)), else_=literal(0, BigInteger)))
        columns.append(reduce(operator.add, bits))
    return select(*columns).where(Image.status == STATUS_INDEXED)


def _codes(values: np.ndarray, vocab: list[str]) -> np.ndarray:
    """``values`` (object array, None = "") as int16 codes into ``vocab`` (extended in place
    with new values): one hash pass in C (``pandas.factorize``)."""
    import pandas as pd

    codes, uniques = pd.factorize(np.where(values == None, "", values))
    lookup = {v: i for i, v in enumerate(vocab)}
    for value in uniques:
        lookup.setdefault(str(value), len(lookup))
    vocab[:] = sorted(lookup, key=lookup.get)
    remap = np.array([lookup[str(v)] for v in uniques] or [0], np.int16)
    return remap[codes] if len(codes) else np.zeros(0, np.int16)


class Catalog:
    """SQL metadata + vector store + Faiss index of one indexed archive (read only)."""

    def __init__(self, engine, *, db_url: str, index_dir: Path, device: str = "cpu",
                 finding_thresholds: Mapping[str, float] | None = None):
        self.engine = engine
        self.finding_thresholds = dict(finding_thresholds or {})
        self.sessions = make_sessionmaker(engine)
        self.db_url = db_url
        self.index_dir = Path(index_dir)
        self.device = device
        self._reload_lock = threading.Lock()
        self._seen = build_signature(self.index_dir)  # before reading: a race only reloads again
        self._snap = self._load()

    @classmethod
    def open(cls, db_url: str | None, index_dir: str | Path, *, device: str = "cpu",
             finding_thresholds: Mapping[str, float] | None = None) -> Catalog:
        """Open the database at ``db_url`` (default ``sqlite:///<index_dir>/catalog.sqlite``)
        and the index saved in ``index_dir``; ``finding_thresholds`` (class name -> threshold)
        decide which predicted findings the ``finding`` filter counts (0.5 for the others). Raises ChextrievError when either is missing, or
        when the catalog's schema revision is not this code's (naming ``chextriev db upgrade``)."""
        index_dir = Path(index_dir)
        db_url = db_url or default_db_url(index_dir)
        engine = make_engine(db_url, create=False)
        try:
            return cls(engine, db_url=db_url, index_dir=index_dir, device=device,
                       finding_thresholds=finding_thresholds)
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ state
    def _load(self, previous: _Snapshot | None = None) -> _Snapshot:
        """Read the newest committed build and the metadata of its images (one snapshot).

        Columns are read in bulk into numpy arrays; with ``previous`` (a snapshot of the same
        checkpoint) only the rows it does not hold are read: an image row's metadata never
        change while it is indexed (the writer inserts rows; only the status moves), so a
        reload costs the ids of the indexed set plus what was added."""
        index = VectorIndex.load(self.index_dir, device=self.device, mmap=True)
        manifest = index.manifest
        checkpoint_id = manifest.checkpoint_id if manifest is not None else None
        if previous is not None and previous.checkpoint_id != checkpoint_id:
            previous = None
        with self.sessions() as session:
            state = catalog_state(session)
            store = open_store(session, self.index_dir)
            connection = session.connection()  # Core rows: no ORM per row
            if previous is not None:
                class_names = previous.class_names
                new_rows = _columns(connection.execute(
                    _metadata_query(class_names, self.finding_thresholds).where(Image.id > previous.top)
                    .order_by(Image.id)).all(), 6 + -(-len(class_names) // _BITS))
                if int(state.removals) == previous.removals:
                    # nothing left the indexed set: the old rows and the new ones (ids only grow)
                    ids = np.concatenate([previous.ids, new_rows[0].astype(np.int64)])
                else:  # the indexed ids (a covering index scan), the old rows' slots kept
                    ids = np.fromiter(connection.execute(
                        select(Image.id).where(Image.status == STATUS_INDEXED).order_by(Image.id)
                    ).scalars(), np.int64)
                slots = np.full(len(ids), -1, np.int64)
            else:
                first = session.execute(select(Image.probabilities).where(
                    Image.status == STATUS_INDEXED).order_by(Image.id).limit(1)).scalar()
                class_names = tuple(first or ())
            query = _metadata_query(class_names, self.finding_thresholds)
            width = 6 + -(-len(class_names) // _BITS)
            if previous is None:
                cols = _columns(connection.execute(query.order_by(Image.id)).all(), width)
                ids = cols[0].astype(np.int64)
                slots = np.where(cols[1] == None, -1, cols[1]).astype(np.int64)
                parts = [cols]
            n = len(ids)
            views = list(previous.views) if previous is not None else []
            sexes = list(previous.sexes) if previous is not None else []
            patient_pk = np.full(n, -1, np.int64)
            view = np.zeros(n, np.int16)
            sex = np.zeros(n, np.int16)
            age = np.full(n, np.nan)
            holds = np.zeros((n, len(class_names)), bool)
            if previous is not None:
                fresh = np.ones(n, bool)
                if len(previous.ids) and n:
                    pos = np.clip(np.searchsorted(previous.ids, ids), 0, len(previous.ids) - 1)
                    known = previous.ids[pos] == ids
                    old = pos[known]
                    slots[known] = previous.slots[old]
                    patient_pk[known], view[known] = previous.patient_pk[old], previous.view[old]
                    sex[known], age[known] = previous.sex[old], previous.age[old]
                    holds[known] = previous.holds[old]
                    fresh = ~known
                # the new rows: above the previous top id (ids only grow), any others by id
                below = ids[fresh & (ids <= previous.top)]
                parts = [new_rows] + [_columns(connection.execute(
                    query.where(Image.id.in_(below[i:i + _CHUNK].tolist()))).all(), width)
                    for i in range(0, len(below), _CHUNK)]
            for cols in parts:
                if not len(cols[0]):
                    continue
                found = np.isin(cols[0].astype(np.int64), ids)  # (new rows not indexed: skipped)
                cols = [col[found] for col in cols]
                at = _rows_of(ids, cols[0].astype(np.int64))
                slots[at] = np.where(cols[1] == None, -1, cols[1]).astype(np.int64)
                patient_pk[at] = np.where(cols[2] == None, -1, cols[2]).astype(np.int64)
                view[at] = _codes(cols[3], views)
                sex[at] = _codes(cols[4], sexes)
                age[at] = np.where(cols[5] == None, np.nan, cols[5]).astype(np.float64)
                for g, packed in enumerate(cols[6:]):
                    packed = packed.astype(np.int64)
                    bits = min(_BITS, len(class_names) - g * _BITS)
                    holds[at, g * _BITS:g * _BITS + bits] = (
                        (packed[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(bool)
        snap = _Snapshot(
            index=index, store=store, generation=int(state.generation), ids=ids, slots=slots,
            patient_pk=patient_pk, view=view, sex=sex, age=age, class_names=class_names,
            holds=holds, views=tuple(views), sexes=tuple(sexes),
            size=int(np.isin(index.ids, ids, assume_unique=True).sum()),
            checkpoint_id=checkpoint_id, removals=int(state.removals),
            top=max(int(ids[-1]) if len(ids) else 0, previous.top if previous is not None else 0),
            patient_order=np.argsort(patient_pk, kind="stable"))
        if store is not None:
            known = snap.slots >= 0
            index.exact = StoreExact(store, snap.ids[known], snap.slots[known])
        if manifest is not None and manifest.catalog_generation != snap.generation:
            log.info("index build %s reflects catalog generation %d, the catalog is at %d "
                     "(indexing in progress, or run `chextriev index verify`); hits missing from "
                     "the catalog are dropped", manifest.build_id, manifest.catalog_generation,
                     snap.generation)
        return snap

    def changed(self) -> bool:
        """Whether a build other than the one loaded is committed now (one ``stat`` of the
        manifest, which every save renames into place): call :meth:`reload` when True."""
        return build_signature(self.index_dir) != self._seen

    def reload(self) -> bool:
        """Open the newest committed build when it is not the one in use; True when swapped.

        The new snapshot is built beside the old one (reading only the rows the old one does
        not hold) and swapped in with one assignment, so concurrent searches never see a
        half-loaded state. On failure the old snapshot stays in use and the error is raised
        (retry later). One reload at a time per catalog."""
        with self._reload_lock:
            seen = build_signature(self.index_dir)
            manifest = Manifest.read(self.index_dir)
            current = self._snap.index.manifest
            if current is not None and manifest.build_id == current.build_id:
                self._seen = seen
                return False
            try:
                snap = self._load(self._snap)
            except (IndexStateError, StoreError):
                snap = self._load(self._snap)  # the build moved on while we read it: once more
            self._snap, self._seen = snap, seen
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
        return self._snap.size

    @property
    def build_id(self) -> str | None:
        return self._snap.index.manifest.build_id if self._snap.index.manifest else None

    @property
    def manifest(self) -> Manifest | None:
        return self._snap.index.manifest

    @property
    def bundle(self) -> Bundle | None:
        """What the loaded build records about how it was made (:mod:`indexer.bundle`)."""
        manifest = self._snap.index.manifest
        return None if manifest is None else Bundle.from_manifest(self.index_dir, manifest)

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
            mask &= np.isin(snap.view, _codes_of(snap.views, [v.upper() for v in views]))
        if filters.get("sex"):
            mask &= np.isin(snap.sex, _codes_of(snap.sexes, [str(filters["sex"]).upper()[:1]]))
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
               filters: dict[str, Any] | None = None, nprobe: int | None = None,
               rerank: int | None = None) -> list[list[Hit]]:
        """The ``k`` most similar indexed images for each query vector.

        ``vectors`` ``(n, D)`` (L2-normalised here); ``exclude_ids`` database ids to leave out;
        ``exclude_patients`` patient keys as :meth:`images` reports them (``"patient"``) or
        patient primary keys; ``filters`` see the module docstring; ``nprobe`` IVF lists to
        scan and ``rerank`` the IVF-PQ re-rank depth (``rerank`` x k candidates re-scored with
        the exact vectors), both defaulting to the build's (:meth:`search_settings`). Returns
        one list of at most ``k`` :class:`Hit` per query, best first.
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
        if exclude_patients:
            excluded[snap.rows_of_patients(self._patient_pks(exclude_patients))] = True
        allowed_ids = None
        if filters:
            allowed_ids = snap.ids[self._allowed_mask(snap, filters) & ~excluded]
            fetch = k
        else:
            fetch = k + int(excluded.sum())
        # Over-fetch a little so that stale index entries (not in the database) can be dropped.
        fetch = min(fetch + 8, max(snap.index.ntotal, 1))
        scores, ids = snap.index.search(vectors, fetch, allowed_ids=allowed_ids, nprobe=nprobe,
                                        rerank=rerank)
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids):
            pos = np.clip(np.searchsorted(snap.ids, row_ids), 0, max(len(snap.ids) - 1, 0))
            keep = (row_ids >= 0) & (len(snap.ids) > 0)
            if len(snap.ids):
                keep &= (snap.ids[pos] == row_ids) & ~excluded[pos]
            results.append([Hit(int(i), float(s))
                            for i, s in zip(row_ids[keep][:k], row_scores[keep][:k])])
        return results

    def _patient_pks(self, patients: Iterable[str | int]) -> np.ndarray:
        """Primary keys of ``patients`` (ints as they are; strings looked up by stored key)."""
        pks = [int(p) for p in patients if isinstance(p, (int, np.integer))]
        keys = [str(p) for p in patients if not isinstance(p, (int, np.integer))]
        if keys:
            with self.sessions() as session:
                pks += session.scalars(select(Patient.id).where(Patient.key.in_(keys))).all()
        return np.unique(np.asarray(pks, np.int64))

    def search_settings(self, nprobe: int | None = None, rerank: int | None = None
                        ) -> dict[str, Any]:
        """What a search with these per-search settings uses (the build's where ``None``):
        ``index_type``, ``nprobe`` (capped at ``nlist``; ``None`` for flat indexes), ``nlist``
        (IVF lists, ``None`` for flat), ``rerank`` (``None`` unless IVF-PQ)."""
        index = self._snap.index
        ivf = index.trained is not None
        nlist = index.nlist if ivf else None
        used = {"index_type": index.index_type,
                "nprobe": min(int(nprobe or index.nprobe), nlist) if ivf else None,
                "nlist": nlist,
                "rerank": int(rerank or index.rerank) if index.index_type == "ivf-pq" else None}
        return used

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

    def lookup_instance(self, sop_instance_uid: str, *,
                        pseudonym_key: bytes | None = None) -> int | None:
        """The database id of an indexed image by its DICOM SOP Instance UID, or ``None``.

        The UID as stored; in a pseudonymised catalog (``chextriev index --pseudonymise``) the
        stored UID is its keyed pseudonym (:func:`chextriev.io.deid.uid_pseudonym`), found
        when ``pseudonym_key`` (the indexer's key) is given. One indexed (unique) lookup each."""
        from chextriev.io.deid import uid_pseudonym

        uid = str(sop_instance_uid).strip()
        candidates = [uid] + ([uid_pseudonym(pseudonym_key, uid)] if pseudonym_key else [])
        with self.sessions() as session:
            for candidate in candidates:
                found = session.execute(select(Image.id).where(
                    Image.sop_instance_uid == candidate, Image.status == STATUS_INDEXED)).scalar()
                if found is not None:
                    return int(found)
        return None

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
        """The stored thumbnail as it is stored (the decoding worker's JPEG,
        :func:`chextriev.io.pixels.encode_thumbnail`; PNG in older catalogs) and its MIME type."""
        with self.sessions() as session:
            data = session.execute(select(Image.thumbnail).where(Image.id == int(image_id))).first()
        if data is None or data[0] is None:
            raise UnknownImageError([image_id])
        return bytes(data[0]), image_mimetype(data[0])

    def preview_bytes(self, image_id: int) -> tuple[bytes, str] | None:
        """The stored preview (grey JPEG, about ``--preview-side`` px) of one image and its MIME
        type, or None when the index stores none for it (built before previews, or with
        ``--preview-side 0``, or damaged: then the caller shows the thumbnail)."""
        from indexer.preview_store import preview_of

        with self.sessions() as session:
            data = preview_of(session, self.index_dir, image_id)
        return None if data is None else (data, "image/jpeg")

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
            vec = self._store_for(rows).embeddings(rows)
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
        rows = np.array([slots[i] for i in ids], np.int64)
        return self._store_for(rows).regions(rows)

    def _store_for(self, slots: np.ndarray):
        """The snapshot's vector store, or, for slots committed after it was opened (images
        indexed since the last reload), the store at the database's committed length now."""
        store = self._snap.store
        if store is not None and (not len(slots) or int(np.max(slots)) < store.committed):
            return store
        with self.sessions() as session:
            fresh = open_store(session, self.index_dir)
        if fresh is None:
            raise UnknownImageError([])
        return fresh


def build_signature(index_dir: Path) -> tuple | None:
    """What identifies the committed build on disk without reading it: the manifest's inode,
    modification time and size (a save renames a new file into place); None without one."""
    try:
        info = os.stat(Path(index_dir) / MANIFEST)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _rows_of(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Metadata rows of the known ``ids`` (unknown ids are ignored)."""
    if not len(known) or not len(ids):
        return np.zeros(0, np.int64)
    pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
    return pos[known[pos] == ids]


def _codes_of(vocab: Sequence[str], values: Sequence[str]) -> list[int]:
    """Codes of the ``values`` found in ``vocab`` (absent values match nothing)."""
    return [vocab.index(v) for v in values if v in vocab]


def _columns(rows: Sequence[Sequence], width: int) -> list[np.ndarray]:
    """Result rows as ``width`` object columns (one C-level transpose, no per-row Python)."""
    if not rows:
        return [np.zeros(0, object) for _ in range(width)]
    return [np.array(col, dtype=object) for col in zip(*rows)]


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
