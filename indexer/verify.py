"""``chextriev index verify``: the differences between the catalog and the saved index.

It checks the payload, not only the bookkeeping: the sha256 of every immutable file the
manifest names, the ids inside each segment's Faiss structure against its ids file and the
database's indexed ids (both directions, duplicates), the vectors inside the index against the
vector store's embeddings (all, or a random sample), the store's key of each slot against the
row naming it, the search columns against the catalog's rows, the previews' entries and CRCs,
the catalog generation and checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chextriev.errors import ChextrievError
from chextriev.files import sha256_file
from indexer import columns as cols
from indexer import db_read, db_write
from indexer.db import catalog_state
from indexer.exact import StoreExact, read_vectors, unit_rows
from indexer.manifest import IndexStateError, Manifest
from indexer.preview_store import PreviewStore
from indexer.segments import payload, payload_ids
from indexer.vector_index import VectorIndex
from indexer.vector_store import StoreError, open_store


def verify(sessions, index_dir: str | Path, *, sample: int | None = None, seed: int = 0
           ) -> list[str]:
    """Differences between the catalog and the saved index (empty list: they agree).

    ``sample``: compare the vectors of this many random indexed images (default: all).
    """
    index_dir = Path(index_dir)
    problems: list[str] = []
    try:
        manifest = Manifest.read(index_dir)
    except IndexStateError as error:
        return [str(error)]
    for rel, expected in manifest.checksums().items():
        path = index_dir / rel
        if not path.is_file():
            problems.append(f"index file {rel} named by the manifest is missing")
        elif sha256_file(path) != expected:
            problems.append(f"index file {rel} does not match its sha256 in the manifest "
                            "(modified or corrupted)")
    with sessions() as session:
        state = catalog_state(session)
        try:
            ids, slots = db_write.indexed_slots(session)
        except ChextrievError as error:
            return problems + [str(error)]
        checkpoints = set(db_write.indexed_checkpoints(session))
        try:
            store = open_store(session, index_dir)
        except StoreError as error:
            problems.append(str(error))
            store = None
        problems += _columns_problems(index_dir, manifest, session.connection())
    if store is None and len(ids):
        problems.append(f"no vector store in {index_dir}")
    try:
        index = VectorIndex.load(index_dir, mmap=True, lazy=True, manifest=manifest,
                                 exact=StoreExact(store, ids, slots) if store else None)
    except IndexStateError as error:
        return problems + [str(error)]
    if manifest.catalog_generation != state.generation:
        problems.append(f"the index reflects catalog generation {manifest.catalog_generation}, "
                        f"the catalog is at {state.generation} (run `chextriev index` or "
                        "`chextriev index repair`)")
    foreign = {c for c in checkpoints if c != manifest.checkpoint_id}
    if foreign:
        problems.append(f"database rows embedded with checkpoint(s) {sorted(foreign)}, "
                        f"index built for {manifest.checkpoint_id}")
    stored = _stored_ids(index, problems)
    missing = np.setdiff1d(ids, stored)
    extra = np.setdiff1d(stored, ids)
    if len(missing):
        problems.append(f"{len(missing)} indexed image(s) missing from the index: "
                        f"{missing[:10].tolist()}")
    if len(extra):
        problems.append(f"{len(extra)} id(s) in the index not indexed in the database: "
                        f"{extra[:10].tolist()}")
    common = np.intersect1d(ids, stored)
    if store is not None and len(common):
        pick = common
        if sample is not None and sample < len(common):
            pick = np.sort(np.random.default_rng(seed).choice(common, sample, replace=False))
        try:
            exact = unit_rows(read_vectors(store, pick, slots[np.searchsorted(ids, pick)]))
        except StoreError as error:
            problems.append(str(error))
        else:
            bad = _payload_mismatch(index, pick, exact)
            if len(bad):
                problems.append(f"{len(bad)} of {len(pick)} vector(s) inside the index differ "
                                f"from the catalog's embeddings: {bad[:10].tolist()}")
        # The previews share the store's slots: entries name their images, CRCs hold.
        problems += PreviewStore(index_dir, state.store_rows).verify(
            dict(zip(ids.tolist(), slots.tolist())), sample=pick.tolist())
    return problems


def _stored_ids(index: VectorIndex, problems: list[str]) -> np.ndarray:
    """The ids inside the Faiss structures (checked against each ids file, the manifest's
    count, duplicates), sorted."""
    parts = []
    for segment in index.segments:
        try:
            inside = payload_ids(segment)
            listed = np.asarray(segment.ids)
        except (IndexStateError, RuntimeError) as error:
            problems.append(str(error))
            continue
        if len(inside) != segment.n or not np.array_equal(inside, listed):
            problems.append(f"segment {segment.name}: the ids inside the Faiss structure differ "
                            f"from its ids file ({len(inside)} vs {len(listed)} ids)")
        parts.append(inside)
    stored = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    dupes = len(stored) - len(np.unique(stored))
    if dupes:
        problems.append(f"the index holds {dupes} duplicate id(s)")
    if index.manifest.n_vectors != len(stored):
        problems.append(f"manifest says {index.manifest.n_vectors} vectors, the index holds "
                        f"{len(stored)}")
    return stored


def _payload_mismatch(index: VectorIndex, ids: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Ids whose vector inside the index is not the catalog's (cosine < 0.999 for exact
    codes, < 0.9 for PQ codes)."""
    threshold = 0.9 if index.index_type == "ivf-pq" else 0.999
    found = np.full(len(ids), np.nan)
    for segment in index.segments:
        try:
            seg_ids, vectors = payload(segment, wanted=ids)
        except (IndexStateError, RuntimeError):
            continue
        if not len(seg_ids):
            continue
        pos = np.searchsorted(ids, seg_ids)
        with np.errstate(invalid="ignore", over="ignore"):
            cos = np.einsum("nd,nd->n", unit_rows(np.nan_to_num(vectors)), exact[pos])
        found[pos] = cos
    return ids[~(found >= threshold)]


def _columns_problems(index_dir: Path, manifest: Manifest, connection) -> list[str]:
    """The search columns of the build against the catalog's rows of the same images (an
    indexed row's columns never change, so any difference is damage)."""
    if manifest.columns is None:
        return [(f"the build in {index_dir} has no search column files (made before them): run "
                "`chextriev index repair` (or the next `chextriev index`) to write them")]
    try:
        stored = cols.Columns.open(index_dir, manifest.columns)
    except (OSError, ValueError, KeyError) as error:
        return [f"the search columns of the build are unreadable: {error}"]
    if len(stored) != manifest.n_vectors:
        return [f"the search columns hold {len(stored)} rows, the index {manifest.n_vectors}"]
    names = stored.class_names
    fresh = cols.from_rows(db_read.column_rows(connection, names,
                                               ids=np.asarray(stored.ids).tolist()), names)
    if not np.array_equal(fresh.ids, stored.ids):
        return [(f"the search columns name {len(stored)} images, {len(fresh)} of them are indexed "
                "in the catalog")]
    problems = []
    checks = {"slots": (fresh.slots, stored.slots), "patient": (fresh.patient, stored.patient),
              "age": (fresh.age, stored.age), "findings": (fresh.findings, stored.findings),
              "view": (np.array(fresh.views, object)[fresh.view],
                       np.array(stored.views, object)[stored.view]),
              "sex": (np.array(fresh.sexes, object)[fresh.sex],
                      np.array(stored.sexes, object)[stored.sex])}
    for name, (want, got) in checks.items():
        same = np.asarray(want == got) | (np.isnan(want) & np.isnan(got) if want.dtype.kind == "f"
                                          else False)
        rows = np.flatnonzero(~same.all(axis=1) if same.ndim == 2 else ~same)
        if len(rows):
            problems.append(f"search column {name} differs from the catalog for {len(rows)} "
                            f"image(s): {np.asarray(stored.ids)[rows[:10]].tolist()}")
    return problems
