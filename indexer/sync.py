"""Keep the Faiss index in step with the database (the durable source of truth).

* :func:`sync_index` brings the saved index to the database's ``indexed`` rows: a no-op when the
  manifest already records the current database state, an incremental add/remove when the saved
  build is compatible, else a rebuild from the stored vectors. Called at checkpoints during a run,
  at its end, and after ``remove``. A run killed at any moment leaves the last committed batches
  in the database; the next run's sync makes the index agree again.
* :func:`verify` lists every disagreement between the database and the saved index.
* :func:`remove_images` marks images ``removed`` (their files stay known, so reruns do not add
  them back) and syncs the index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from chextriev.errors import ChextrievError
from indexer.db import (
    STATUS_INDEXED,
    STATUS_REMOVED,
    Image,
    IndexBuild,
    db_state,
)
from indexer.vector_index import (
    IndexStateError,
    Manifest,
    VectorIndex,
    resolve_index_type,
)

log = logging.getLogger(__name__)

_CHUNK = 5_000


def indexed_ids(session) -> np.ndarray:
    """Sorted ids of the ``indexed`` rows, int64."""
    ids = session.scalars(select(Image.id).where(Image.status == STATUS_INDEXED).order_by(Image.id))
    return np.fromiter(ids, dtype=np.int64)


def stored_vectors(session, ids: np.ndarray, dim: int) -> np.ndarray:
    """The embeddings of ``ids`` from the database, ``(n, dim)`` float32, in ``ids`` order."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    position = {int(i): p for p, i in enumerate(ids)}
    for start in range(0, len(ids), _CHUNK):
        chunk = [int(i) for i in ids[start:start + _CHUNK]]
        for pk, blob in session.execute(select(Image.id, Image.embedding).where(Image.id.in_(chunk))):
            if blob is None:
                raise ChextrievError(f"image {pk} is marked indexed but has no stored embedding")
            vector = np.frombuffer(blob, dtype=np.float32)
            if vector.shape[0] != dim:
                raise ChextrievError(
                    f"image {pk} has a {vector.shape[0]}-d embedding, the index is {dim}-d: "
                    "the database mixes checkpoints; index into a new --index-dir")
            out[position[pk]] = vector
    return out


def _try_load(index_dir: Path, device: str) -> VectorIndex | None:
    try:
        return VectorIndex.load(index_dir, device=device, mmap=False)
    except IndexStateError as error:
        if (index_dir / "manifest.json").exists():
            log.warning("rebuilding the index: %s", error)
        return None


def sync_index(sessions, index_dir: str | Path, *, checkpoint_id: str | None, dim: int,
               index_type: str = "auto", device: str = "cpu", nprobe: int = 32,
               rebuild: bool = False) -> Manifest:
    """Make the saved index in ``index_dir`` reflect the database; returns the manifest."""
    index_dir = Path(index_dir)
    with sessions() as session:
        state = db_state(session)
        ids = indexed_ids(session)
        existing = None if rebuild else _try_load(index_dir, device)
        if (existing is not None and existing.manifest.db_state == state
                and existing.manifest.checkpoint_id == checkpoint_id):
            return existing.manifest
        wanted = resolve_index_type(index_type, len(ids))
        usable = (
            existing is not None and existing.dim == dim
            and existing.manifest.checkpoint_id == checkpoint_id
            and existing.index_type == wanted
            and (wanted == "flat" or len(ids) <= 2 * max(existing.ntotal, 1))
        )
        if usable:
            to_remove = np.setdiff1d(existing.ids, ids)
            to_add = np.setdiff1d(ids, existing.ids)
            existing.remove(to_remove)
            existing.add(to_add, stored_vectors(session, to_add, dim))
            index = existing
            log.info("index updated: +%d -%d -> %d vectors", len(to_add), len(to_remove), index.ntotal)
        else:
            index = VectorIndex.build(ids, stored_vectors(session, ids, dim).reshape(-1, dim),
                                      index_type=index_type, device=device, nprobe=nprobe)
            log.info("index built: %s (%s), %d vectors", index.index_type, index.factory, index.ntotal)
        manifest = index.save(index_dir, db_state=state, checkpoint_id=checkpoint_id)
        session.add(IndexBuild(
            checkpoint_id=checkpoint_id, embedding_dim=dim, index_type=index.index_type,
            factory=index.factory, n_vectors=index.ntotal, db_state=state,
            build_dir=manifest.build_dir))
        session.commit()
        return manifest


def verify(sessions, index_dir: str | Path, *, sample: int = 2_000) -> list[str]:
    """Differences between the database and the saved index (empty list: they agree)."""
    problems: list[str] = []
    try:
        index = VectorIndex.load(index_dir)
    except IndexStateError as error:
        return [str(error)]
    manifest = index.manifest
    with sessions() as session:
        ids = indexed_ids(session)
        state = db_state(session)
        checkpoints = set(session.scalars(
            select(Image.checkpoint_id).where(Image.status == STATUS_INDEXED).distinct()))
        faiss_ids = index.faiss_ids()
        if len(np.unique(faiss_ids)) != len(faiss_ids):
            problems.append(f"the Faiss index holds {len(faiss_ids) - len(np.unique(faiss_ids))} "
                            "duplicate ids")
        if not np.array_equal(np.unique(faiss_ids), index.ids):
            problems.append("the Faiss ids and the exact-vector sidecar ids differ")
        missing = np.setdiff1d(ids, index.ids)
        extra = np.setdiff1d(index.ids, ids)
        if len(missing):
            problems.append(f"{len(missing)} indexed image(s) missing from the index: "
                            f"{missing[:10].tolist()}")
        if len(extra):
            problems.append(f"{len(extra)} id(s) in the index not indexed in the database: "
                            f"{extra[:10].tolist()}")
        if manifest.db_state != state:
            problems.append(f"manifest db_state {manifest.db_state[:12]} != database {state[:12]}")
        if manifest.n_vectors != index.ntotal:
            problems.append(f"manifest says {manifest.n_vectors} vectors, index has {index.ntotal}")
        foreign = {c for c in checkpoints if c != manifest.checkpoint_id}
        if foreign:
            problems.append(f"database rows embedded with checkpoint(s) {sorted(foreign)}, "
                            f"index built for {manifest.checkpoint_id}")
        common = np.intersect1d(ids, index.ids)
        if len(common):
            pick = common if len(common) <= sample else np.random.default_rng(0).choice(
                common, sample, replace=False)
            try:
                stored = stored_vectors(session, np.sort(pick), index.dim)
            except ChextrievError as error:
                problems.append(str(error))
            else:
                stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
                diff = np.abs(index.vectors(np.sort(pick)) - stored).max(axis=1)
                bad = np.sort(pick)[diff > 1e-2]
                if len(bad):
                    problems.append(f"{len(bad)} vector(s) differ between database and index: "
                                    f"{bad[:10].tolist()}")
    return problems


def remove_images(sessions, index_dir: str | Path, ids: Iterable[int | str], *,
                  device: str = "cpu") -> int:
    """Mark ``ids`` (database ids, or dataset image ids as strings) removed and sync the index.

    Returns the number of images removed. Unknown ids raise ChextrievError listing them.
    """
    wanted = list(ids)
    with sessions() as session:
        found: set[int] = set()
        unknown = []
        for item in wanted:
            text = str(item)
            if text.isdigit() and session.get(Image, int(text)) is not None:
                found.add(int(text))
                continue
            pks = session.scalars(select(Image.id).where(Image.image_id == text)).all()
            if pks:
                found.update(pks)
            else:
                unknown.append(text)
        if unknown:
            raise ChextrievError(f"not in the catalog: {', '.join(unknown[:10])}")
        result = session.execute(
            update(Image).where(Image.id.in_(sorted(found)), Image.status == STATUS_INDEXED)
            .values(status=STATUS_REMOVED, reason="removed by `chextriev index remove`"))
        session.commit()
        removed = result.rowcount
    manifest = Manifest.read(index_dir)
    sync_index(sessions, index_dir, checkpoint_id=manifest.checkpoint_id, dim=manifest.dim,
               index_type=manifest.index_type, device=device, nprobe=manifest.nprobe)
    return int(removed)
