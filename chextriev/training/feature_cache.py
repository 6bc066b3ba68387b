"""On-disk cache of frozen backbone features (``model.extract`` output, before the projection).

Key = sha256 of: the image content hash, the backbone name and weights id (file hash or
``random-seed<N>``), the model kind, the feature mode, the image size and RoIAlign grid (roi)
or the crop size (crop: the crops come from the original, so the image size plays no part),
and the model-input boxes (rounded to 1/100 px; original pixels in crop mode). So every variant trained on the same archive with
the same frozen backbone reuses one set of features, and a change of any of these recomputes.

The global classifier's key adds its fixed pooling (not for ``avg``) or ``map`` when it caches
the whole feature map (PCAM, attention).

Layout: ``CACHE_DIR/<key[:2]>/<key>.npy`` (float32, ``(18, F)`` region, ``(F,)`` global, or
``(F, h, w)`` global feature map).

The image content hash needs the file's bytes, so computing the keys of an archive would re-read
all of it at every training start. :meth:`FeatureCache.content_hashes` therefore memoises it in
``CACHE_DIR/content-hashes.sqlite`` (stdlib ``sqlite3``), keyed by resolved absolute path, file
size and ``st_mtime_ns``: a file whose size or mtime changed is rehashed, and a second start
only ``stat``s the files. Sources given as bytes are hashed directly, never memoised. A file
modified less than :data:`RACY_SECONDS` before it was hashed is not memoised (a rewrite within
the file system's timestamp granularity could keep size and mtime). Several training processes
may share the directory: each batch of new hashes is one ``INSERT OR REPLACE`` transaction, with
a lock timeout. An unreadable or corrupt memo is logged, deleted and recreated; hashing falls
back to reading the files, so it never stops training. The memo changes no key: caches made
before it existed stay valid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from chextriev.files import atomic_open, sha256_file
from chextriev.model.backbone import weights_id
from chextriev.model.config import ModelConfig

log = logging.getLogger(__name__)

MEMO_NAME = "content-hashes.sqlite"
RACY_SECONDS = 2.0  # files modified this recently are hashed but not memoised (FAT has 2 s mtimes)
_LOCK_TIMEOUT_S = 60.0
_QUERY_CHUNK = 500  # paths per SELECT (below SQLite's bound-parameter limit)


def default_cache_dir() -> Path:
    """``$CHEXTRIEV_CACHE`` or ``~/.cache/chextriev/features``."""
    return Path(os.environ.get("CHEXTRIEV_CACHE", Path.home() / ".cache" / "chextriev" / "features"))


def content_hash(source: str | Path | bytes) -> str:
    """sha256 of the image file's bytes (or of the bytes themselves)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(source).hexdigest()
    return sha256_file(source)


def config_signature(config: ModelConfig) -> str:
    """The part of the key that depends on the model: backbone, weights, mode, sizes, and the
    centre crop when there is one (keys of models without one are unchanged)."""
    kind = "global" if config.kind == "global" else "regions"
    if config.is_encoder:  # the encoder's weights checksum, its architecture and input preparation
        weights = "encoder-" + encoder_identity(config.encoder)
    else:
        weights = weights_id(config.backbone_weights, config.backbone_seed, config.backbone_weights_format)
    center = [f"center-{config.center_crop:g}"] if config.center_crop < 1.0 else []
    if kind == "regions" and config.feature_mode == "crop":  # crops of the original: no image_size
        return "|".join([kind, config.backbone, weights, "crop-original", str(config.crop_size), *center])
    parts = [kind, config.backbone, weights, str(config.image_size)]
    if kind == "regions":
        parts += [config.feature_mode, str(config.roi_output)]
    elif config.pools_feature_map:  # the whole map (PCAM, attention); the average's key is unchanged
        parts += ["map"]
    elif config.pooling != "avg":
        parts += [f"pool-{config.pooling}" + (f"-{config.lse_gamma:g}" if config.pooling == "lse" else "")]
    return "|".join(parts + center)


def encoder_identity(spec: dict) -> str:
    """An encoder's weights checksum (or random seed) with a digest of its architecture and input
    preparation: the frozen features' identity."""
    import json

    shape = json.dumps({"architecture": spec["architecture"], "input": {k: v for k, v in spec["input"].items()
                                                                      if k != "source"}},
                       sort_keys=True, default=str)
    return f"{spec['weights_id']}-{hashlib.sha256(shape.encode()).hexdigest()[:12]}"


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


class FeatureCache:
    """``get(key)`` / ``put(key, array)``, :meth:`ensure` that fills misses in batches, and
    :meth:`content_hashes` (memoised image content hashes, see the module docstring).

    ``hits`` / ``misses`` count feature entries, ``hash_hits`` / ``hash_misses`` content hashes
    read from the memo / computed from the bytes.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.memo_path = self.directory / MEMO_NAME
        self.hash_hits = 0  # content hashes found in the memo
        self.hash_misses = 0  # content hashes computed from the bytes

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.memo_path, timeout=_LOCK_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                         "mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL)")
        except BaseException:
            conn.close()
            raise
        return conn

    def _reset_memo(self, error: Exception) -> sqlite3.Connection | None:
        """Delete a broken memo and start an empty one (``None``: go on without a memo)."""
        log.warning("content-hash memo %s unusable (%s): recreating it, hashing files", self.memo_path, error)
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{self.memo_path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("content-hash memo: cannot delete %s%s (%s)", self.memo_path, suffix, exc)
        try:
            return self._connect()
        except sqlite3.Error as exc:
            log.warning("content-hash memo %s cannot be recreated (%s): hashing without it", self.memo_path, exc)
            return None

    def _memo_lookup(self, conn: sqlite3.Connection, paths: list[str]) -> dict[str, tuple[int, int, str]]:
        known: dict[str, tuple[int, int, str]] = {}
        for start in range(0, len(paths), _QUERY_CHUNK):
            chunk = paths[start:start + _QUERY_CHUNK]
            rows = conn.execute(f"SELECT path, size, mtime_ns, digest FROM hashes WHERE path IN "
                                f"({','.join('?' * len(chunk))})", chunk)
            known.update((path, (size, mtime, digest)) for path, size, mtime, digest in rows)
        return known

    def content_hashes(self, sources: Iterable[str | Path | bytes]) -> list[str]:
        """:func:`content_hash` of each source, read from the memo where size and mtime still match.

        Raises:
            OSError: a source file is missing or unreadable (as :func:`content_hash` does).
        """
        sources = list(sources)
        out: list[str | None] = [None] * len(sources)
        files: list[tuple[int, str, int, int]] = []  # (index, resolved path, size, mtime_ns)
        for i, source in enumerate(sources):
            if isinstance(source, (bytes, bytearray, memoryview)):
                out[i] = content_hash(source)
            else:
                path = Path(source).resolve()
                stat = path.stat()
                files.append((i, str(path), stat.st_size, stat.st_mtime_ns))
        if not files:
            return out  # type: ignore[return-value]
        conn: sqlite3.Connection | None = None
        known: dict[str, tuple[int, int, str]] = {}
        try:
            conn = self._connect()
            known = self._memo_lookup(conn, [path for _, path, _, _ in files])
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            conn, known = None, {}
            if _is_busy(exc):  # another process holds the lock past the timeout: leave its memo alone
                log.warning("content-hash memo %s busy (%s): hashing files this time", self.memo_path, exc)
            else:
                conn = self._reset_memo(exc)
        hits = 0
        new_rows: list[tuple[str, int, int, str]] = []
        try:
            for i, path, size, mtime_ns in files:
                entry = known.get(path)
                if entry is not None and entry[0] == size and entry[1] == mtime_ns:
                    out[i] = entry[2]
                    hits += 1
                    continue
                started = time.time_ns()
                out[i] = content_hash(path)
                if mtime_ns < started - int(RACY_SECONDS * 1e9):
                    new_rows.append((path, size, mtime_ns, out[i]))
            if conn is not None and new_rows:
                try:
                    with conn:  # one transaction for the whole batch
                        conn.execute("BEGIN IMMEDIATE")
                        conn.executemany("INSERT OR REPLACE INTO hashes (path, size, mtime_ns, digest) "
                                         "VALUES (?, ?, ?, ?)", new_rows)
                except sqlite3.Error as exc:
                    log.warning("content-hash memo %s: cannot store %d hashes (%s)", self.memo_path,
                                len(new_rows), exc)
        finally:
            if conn is not None:
                conn.close()
        misses = len(files) - hits
        self.hash_hits += hits
        self.hash_misses += misses
        log.info("content-hash memo %s: %d hits, %d hashed", self.memo_path, hits, misses)
        return out  # type: ignore[return-value]

    @staticmethod
    def key(image_hash: str, signature: str, boxes: np.ndarray | None) -> str:
        digest = hashlib.sha256(f"{image_hash}|{signature}|".encode())
        if boxes is not None:
            digest.update(np.nan_to_num(np.round(np.asarray(boxes, np.float64), 2), nan=-1.0).tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("feature cache: unreadable entry %s, recomputing", path)
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            np.save(handle, np.asarray(array, dtype=np.float32))

    def ensure(self, keys: Sequence[str], compute: Callable[[list[int]], torch.Tensor | np.ndarray]) -> None:
        """Make sure every key is cached; ``compute(indices)`` returns features of the missing ones."""
        missing = [i for i, key in enumerate(keys) if not self.path(key).is_file()]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            values = compute(missing)
            values = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
            for i, value in zip(missing, values):
                self.put(keys[i], value)
