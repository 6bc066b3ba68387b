"""What the ranks of a distributed indexing run hand to each other on disk: the work list
(rank 0 -> every rank) and the shards (every rank -> rank 0's merge). :mod:`indexer.distributed`
runs them.

Work list (``worklist.pkl`` + ``worklist.offsets.i64``): one pickled ``(record, known content
hash)`` per record that needs work, with its byte offset, streamed in and out (nothing but its
length is held in memory); each rank reads its contiguous block (:func:`rank_block`).

Shard format (``shard-r<rank>-b<batch>.npz``, no pickles): ``paths`` (ledger keys), ``hashes``,
``sizes``, ``mtimes``, ``status``, ``reasons``, ``meta`` (JSON per record), ``emb_row`` (row of
each record in the arrays below, -1 when not embedded), ``embeddings (n, D)``,
``probabilities (n, C)``, ``region_probabilities (n, 18, C)`` and ``region_embeddings
(n, 18, R)`` (absent for global models), ``boxes (n, 18, 4)`` original pixels, ``box_sources``,
``thumbs`` / ``previews`` (concatenated bytes) with ``thumb_offsets`` / ``preview_offsets``, and
``info`` (JSON: checkpoint id, dimension, class names). A shard is written to a temporary name,
fsynced and renamed, so a killed rank leaves no partial shard.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chextriev.files import atomic_open, is_tmp_name
from indexer.decode import OK, Decoded

WORKLIST = "worklist.pkl"
WORKLIST_OFFSETS = "worklist.offsets.i64"


@dataclass
class EmbedderInfo:
    """What the merge needs to know about the model that made the shards."""

    checkpoint_id: str
    embedding_dim: int
    class_names: tuple[str, ...]


def info_of(embedder) -> EmbedderInfo:
    return EmbedderInfo(embedder.checkpoint_id, int(embedder.embedding_dim),
                        tuple(embedder.class_names))


# ---------------------------------------------------------------------- shards
def _packed(blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    blobs = [b or b"" for b in blobs]
    return (np.frombuffer(b"".join(blobs), np.uint8),
            np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64))


def write_shard(path: str | Path, items: Sequence[Decoded], batch, info: EmbedderInfo) -> Path:
    """Write one shard: ``items`` (decoded records) and ``batch`` (model outputs of the items
    with pixels, in order; None when there are none). Atomic (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    embedded = [i for i, d in enumerate(items) if d.status == OK and d.pixels is not None]
    emb_row = np.full(len(items), -1, np.int64)
    emb_row[embedded] = np.arange(len(embedded))
    arrays: dict[str, np.ndarray] = {
        "paths": np.array([d.key for d in items], dtype=str),
        "hashes": np.array([d.content_hash or "" for d in items], dtype=str),
        "sizes": np.array([d.file_size for d in items], np.int64),
        "mtimes": np.array([d.mtime_ns for d in items], np.int64),
        "status": np.array([d.status for d in items], dtype=str),
        "reasons": np.array([d.reason or "" for d in items], dtype=str),
        "formats": np.array([d.fmt or "" for d in items], dtype=str),
        "hw": np.array([d.original_hw or (0, 0) for d in items], np.int64).reshape(-1, 2),
        "meta": np.array([json.dumps(d.meta) for d in items], dtype=str),
        "emb_row": emb_row,
        "info": np.array(json.dumps(info.__dict__ | {"class_names": list(info.class_names)})),
    }
    arrays["thumbs"], arrays["thumb_offsets"] = _packed([d.thumbnail for d in items])
    arrays["previews"], arrays["preview_offsets"] = _packed([d.preview for d in items])
    if embedded:
        from indexer.writer import model_outputs

        outputs = [model_outputs(batch, row, items[i]) for row, i in enumerate(embedded)]
        arrays["embeddings"] = np.asarray(batch.embeddings, np.float32)
        arrays["probabilities"] = np.asarray(batch.probabilities, np.float32)
        arrays["boxes"] = np.stack([o["boxes"] for o in outputs]).astype(np.float32)
        arrays["box_sources"] = np.array(batch.box_sources, dtype=str)
        if batch.region_probabilities is not None:
            arrays["region_probabilities"] = np.asarray(batch.region_probabilities, np.float32)
        if batch.region_embeddings is not None:
            arrays["region_embeddings"] = np.asarray(batch.region_embeddings, np.float32)
    with atomic_open(path) as handle:  # a file object: np.savez adds no suffix
        np.savez(handle, **arrays)
    return path


def shard_keys(path: str | Path) -> list[str]:
    """The ledger keys of one shard's records, without reading its pixels or outputs."""
    with np.load(path, allow_pickle=False) as data:
        return [str(p) for p in data["paths"]]


def read_shard(path: str | Path) -> tuple[list[Decoded], EmbedderInfo]:
    """The decoded records of one shard, each with ``embedded`` model outputs when it has them."""
    with np.load(path, allow_pickle=False) as data:
        info = json.loads(str(data["info"]))
        offsets = data["thumb_offsets"]
        thumbs = data["thumbs"].tobytes()
        has_previews = "previews" in data
        previews = data["previews"].tobytes() if has_previews else b""
        preview_offsets = data["preview_offsets"] if has_previews else None
        out = []
        for i, p in enumerate(data["paths"]):
            thumb = thumbs[offsets[i]:offsets[i + 1]] or None
            hw = tuple(int(v) for v in data["hw"][i])
            d = Decoded(str(p), int(data["sizes"][i]), int(data["mtimes"][i]),
                        str(data["hashes"][i]) or None, str(data["status"][i]),
                        str(data["reasons"][i]) or None, str(data["formats"][i]) or None,
                        json.loads(str(data["meta"][i])), None, hw if hw != (0, 0) else None, thumb)
            if has_previews:
                d.preview = previews[preview_offsets[i]:preview_offsets[i + 1]] or None
            row = int(data["emb_row"][i])
            if row >= 0:
                d.embedded = {
                    "embedding": data["embeddings"][row],
                    "probabilities": data["probabilities"][row],
                    "region_probabilities": data["region_probabilities"][row]
                    if "region_probabilities" in data else None,
                    "region_embeddings": data["region_embeddings"][row]
                    if "region_embeddings" in data else None,
                    "boxes": data["boxes"][row],
                    "box_source": str(data["box_sources"][row]),
                }
            out.append(d)
    return out, EmbedderInfo(info["checkpoint_id"], int(info["embedding_dim"]),
                             tuple(info["class_names"]))


def shard_files(shard_dir: str | Path) -> list[Path]:
    """The complete shards of ``shard_dir`` in merge order (rank, then batch)."""
    return sorted(Path(shard_dir).glob("shard-*.npz"))


# ---------------------------------------------------------------------- the work list
def write_worklist(tasks: Iterator[tuple], shard_dir: Path) -> int:
    """Write ``(record, known content hash)`` pairs to the work list of ``shard_dir`` (streamed:
    one pickle per record, offsets beside); returns how many. Atomic (temporary names)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    data, offsets = shard_dir / WORKLIST, shard_dir / WORKLIST_OFFSETS
    n, position = 0, 0
    with atomic_open(data) as out, atomic_open(offsets) as index:
        for task in tasks:
            blob = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
            index.write(np.int64(position).tobytes())
            out.write(blob)
            position += len(blob)
            n += 1
        index.write(np.int64(position).tobytes())
    return n


def worklist_length(shard_dir: Path) -> int:
    return max(0, (shard_dir / WORKLIST_OFFSETS).stat().st_size // 8 - 1)


def rank_block(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``n`` work-list positions that ``rank`` of ``world`` embeds."""
    return range(n * rank // world, n * (rank + 1) // world)


def read_worklist(shard_dir: Path, block: range) -> Iterator[tuple]:
    """The ``(record, known hash)`` pairs at the positions of ``block``, streamed."""
    if not len(block):
        return
    offsets = np.fromfile(shard_dir / WORKLIST_OFFSETS, np.int64)
    with open(shard_dir / WORKLIST, "rb") as data:
        data.seek(int(offsets[block.start]))
        for i in block:
            yield pickle.loads(data.read(int(offsets[i + 1] - offsets[i])))


def clear_shards(shard_dir: Path) -> int:
    """Remove the shards and the work list of ``shard_dir`` (and the temporary files of a killed
    writer); returns how many complete shards."""
    shards = shard_files(shard_dir) if shard_dir.is_dir() else []
    leftovers = [p for p in shard_dir.glob("*") if is_tmp_name(p)] if shard_dir.is_dir() else []
    for path in shards + leftovers + [shard_dir / WORKLIST, shard_dir / WORKLIST_OFFSETS]:
        path.unlink(missing_ok=True)
    return len(shards)
