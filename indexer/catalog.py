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
    db_state,
    make_engine,
    make_sessionmaker,
)
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

FILTER_KEYS = ("view", "sex", "age_min", "age_max", "finding")


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


class Catalog:
    """SQL metadata + Faiss index of one indexed archive (read only)."""

    def __init__(self, engine, index: VectorIndex, *, db_url: str, index_dir: Path):
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.index = index
        self.db_url = db_url
        self.index_dir = Path(index_dir)
        self._load_metadata()

    @classmethod
    def open(cls, db_url: str | None, index_dir: str | Path, *, device: str = "cpu") -> Catalog:
        """Open the database at ``db_url`` (default ``sqlite:///<index_dir>/catalog.sqlite``)
        and the index saved in ``index_dir``. Raises ChextrievError when either is missing."""
        from indexer.db import default_db_url

        index_dir = Path(index_dir)
        db_url = db_url or default_db_url(index_dir)
        if db_url.startswith("sqlite:///") and not Path(db_url[len("sqlite:///"):]).is_file():
            raise ChextrievError(f"no catalog database at {db_url} (run `chextriev index` first)")
        engine = make_engine(db_url, create=False)
        index = VectorIndex.load(index_dir, device=device)
        return cls(engine, index, db_url=db_url, index_dir=index_dir)

    # ------------------------------------------------------------------ state
    def _load_metadata(self) -> None:
        """Compact in-memory columns of the indexed images, for filters and exclusions."""
        with self.sessions() as session:
            rows = session.execute(
                select(Image.id, Image.patient_id, Patient.key, Image.view, Image.sex, Image.age,
                       Image.known_findings, Image.probabilities)
                .outerjoin(Patient, Patient.id == Image.patient_id)
                .where(Image.status == STATUS_INDEXED)
                .order_by(Image.id)
            ).all()
            self._db_state = db_state(session)
        self._ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._patient_pk = np.array([r[1] if r[1] is not None else -1 for r in rows], np.int64)
        self._patient_key = np.array([r[2] or "" for r in rows], dtype=object)
        self._view = np.array([(r[3] or "").upper() for r in rows], dtype=object)
        self._sex = np.array([(r[4] or "").upper() for r in rows], dtype=object)
        self._age = np.array([r[5] if r[5] is not None else np.nan for r in rows], np.float64)
        probs = [r[7] or {} for r in rows]
        self._class_names: tuple[str, ...] = tuple(probs[0]) if probs else ()
        # (n, C) bool: image holds finding c (known label, else predicted p >= 0.5).
        self._holds = np.array([[_holds(r[6], p, c) for c in self._class_names]
                                for r, p in zip(rows, probs)], dtype=bool).reshape(
                                    len(rows), len(self._class_names))
        self._patient_rows: dict[object, list[int]] = {}
        for row, (pk, key) in enumerate(zip(self._patient_pk.tolist(), self._patient_key.tolist())):
            if pk >= 0:
                self._patient_rows.setdefault(pk, []).append(row)
                self._patient_rows.setdefault(key, []).append(row)
        manifest = self.index.manifest
        if manifest is not None and manifest.db_state != self._db_state:
            log.warning(
                "index build %s does not reflect the database (run `chextriev index verify`); "
                "hits missing from the database are dropped", manifest.build_id)

    def refresh(self) -> bool:
        """Reload the index and metadata when a newer build was saved; True when reloaded."""
        from indexer.vector_index import Manifest

        manifest = Manifest.read(self.index_dir)
        if self.index.manifest is not None and manifest.build_id == self.index.manifest.build_id:
            return False
        self.index = VectorIndex.load(self.index_dir, device=self.index.device)
        self._load_metadata()
        return True

    @property
    def size(self) -> int:
        """Number of searchable images (in the index and indexed in the database)."""
        return int(np.isin(self.index.ids, self._ids).sum())

    @property
    def build_id(self) -> str | None:
        return self.index.manifest.build_id if self.index.manifest else None

    @property
    def checkpoint_id(self) -> str | None:
        return self.index.manifest.checkpoint_id if self.index.manifest else None

    @property
    def embedding_dim(self) -> int:
        return self.index.dim

    @property
    def is_current(self) -> bool:
        """True when the index build reflects the current database state."""
        return self.index.manifest is not None and self.index.manifest.db_state == self._db_state

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    # ------------------------------------------------------------------ search
    def _allowed_mask(self, filters: dict[str, Any]) -> np.ndarray:
        unknown = set(filters) - set(FILTER_KEYS)
        if unknown:
            raise UnknownNameError("filter", min(unknown), FILTER_KEYS)
        mask = np.ones(len(self._ids), dtype=bool)
        if filters.get("view"):
            views = filters["view"]
            views = [views] if isinstance(views, str) else list(views)
            mask &= np.isin(self._view, [v.upper() for v in views])
        if filters.get("sex"):
            mask &= self._sex == str(filters["sex"]).upper()[:1]
        if filters.get("age_min") is not None:
            mask &= self._age >= float(filters["age_min"])  # NaN compares False
        if filters.get("age_max") is not None:
            mask &= self._age <= float(filters["age_max"])
        if filters.get("finding"):
            findings = filters["finding"]
            findings = [findings] if isinstance(findings, str) else list(findings)
            for finding in findings:
                if finding not in self._class_names:
                    raise UnknownNameError("finding", finding, self._class_names)
                mask &= self._holds[:, self._class_names.index(finding)]
        return mask

    def search(self, vectors, k: int, *, exclude_ids: Iterable[int] | None = None,
               exclude_patients: Iterable[str | int] | None = None,
               filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """The ``k`` most similar indexed images for each query vector.

        ``vectors`` ``(n, D)`` (L2-normalised here); ``exclude_ids`` database ids to leave out;
        ``exclude_patients`` patient keys as :meth:`images` reports them (``"patient"``) or
        patient primary keys; ``filters`` see the module docstring. Returns one list of at most
        ``k`` :class:`Hit` per query, best first.
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.index.dim:
            raise ChextrievError(
                f"query vectors have dimension {vectors.shape[1]} but the index holds "
                f"{self.index.dim}-d vectors (checkpoint {self.checkpoint_id})")
        excluded = np.zeros(len(self._ids), dtype=bool)
        if exclude_ids is not None:
            excluded[self._rows_of(np.fromiter((int(i) for i in exclude_ids), np.int64))] = True
        for patient in exclude_patients or ():
            key = int(patient) if isinstance(patient, (int, np.integer)) else str(patient)
            excluded[self._patient_rows.get(key, [])] = True
        allowed_ids = None
        if filters:
            allowed_ids = self._ids[self._allowed_mask(filters) & ~excluded]
            fetch = k
        else:
            fetch = k + int(excluded.sum())
        # Over-fetch a little so that stale index entries (not in the database) can be dropped.
        fetch = min(fetch + 8, max(self.index.ntotal, 1))
        scores, ids = self.index.search(vectors, fetch, allowed_ids=allowed_ids)
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids):
            pos = np.clip(np.searchsorted(self._ids, row_ids), 0, max(len(self._ids) - 1, 0))
            keep = (row_ids >= 0) & (len(self._ids) > 0)
            if len(self._ids):
                keep &= (self._ids[pos] == row_ids) & ~excluded[pos]
            results.append([Hit(int(i), float(s))
                            for i, s in zip(row_ids[keep][:k], row_scores[keep][:k])])
        return results

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Metadata rows of the known ``ids`` (unknown ids are ignored)."""
        if not len(self._ids) or not len(ids):
            return np.zeros(0, np.int64)
        pos = np.clip(np.searchsorted(self._ids, ids), 0, len(self._ids) - 1)
        return pos[self._ids[pos] == ids]

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

    def thumbnail(self, image_id: int) -> bytes:
        """The PNG thumbnail of one image."""
        with self.sessions() as session:
            data = session.execute(select(Image.thumbnail).where(Image.id == int(image_id))).first()
        if data is None or data[0] is None:
            raise UnknownImageError([image_id])
        return bytes(data[0])

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Embeddings ``(n, D)`` float32 of ``ids`` (from the index sidecar, else the database)."""
        ids = np.asarray([int(i) for i in ids], dtype=np.int64)
        out = self.index.vectors(ids)
        missing = np.isnan(out).any(axis=1)
        if missing.any():
            with self.sessions() as session:
                rows = dict(session.execute(
                    select(Image.id, Image.embedding).where(Image.id.in_(ids[missing].tolist()))
                ).all())
            absent = [int(i) for i in ids[missing] if rows.get(int(i)) is None]
            if absent:
                raise UnknownImageError(absent)
            for pos in np.flatnonzero(missing):
                out[pos] = np.frombuffer(rows[int(ids[pos])], dtype=np.float32)
        return out

    def region_embeddings(self, ids: Sequence[int]) -> np.ndarray | None:
        """Per-region embeddings ``(n, 18, R)`` float32, or None when the model has none."""
        ids = [int(i) for i in ids]
        with self.sessions() as session:
            rows = {pk: (blob, dim) for pk, blob, dim in session.execute(
                select(Image.id, Image.region_embedding, Image.region_dim).where(Image.id.in_(ids))
            ).all()}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownImageError(missing)
        if not ids or any(rows[i][0] is None for i in ids):
            return None
        return np.stack([np.frombuffer(rows[i][0], dtype=np.float16).reshape(18, rows[i][1])
                         for i in ids]).astype(np.float32)


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
