"""The manifest of a saved index: the commit point of a build.

``index_dir/manifest.json`` names every file of the build (segments with their sha256, the
trained quantizer, the column files), the build parameters (index type, factory, nprobe, re-rank
depth, checkpoint id) and the catalog state it reflects (``catalog_generation``, ``store_rows``,
``removals``). A save writes every file first and then this one (temporary name, fsync,
rename, folder fsync): a reader that finds a manifest finds everything it names.

Files named by the manifest or by its predecessor (``previous_files``) are never deleted, so a
reader that has just read the previous manifest can still open its files; :func:`sweep`
deletes the rest. Unknown keys are kept in ``extra`` and written back (the bundle, for one:
:mod:`indexer.bundle`), so later code can record more without a new format.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chextriev.errors import ChextrievError
from chextriev.files import atomic_write, is_tmp_name

MANIFEST = "manifest.json"
SEGMENTS = "segments"
COLUMNS = "columns"
FORMAT = 2


class IndexStateError(ChextrievError):
    """An index folder that is missing, corrupt or does not match its manifest."""


def new_name() -> str:
    """A fresh, time-ordered name for a build, a segment or a column set."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


@dataclass
class Manifest:
    """What a saved index is: its segments (with checksums), build parameters, the column files
    and the catalog state it reflects; unknown keys in ``extra``."""

    build_id: str
    created: str
    index_type: str
    factory: str
    dim: int
    n_vectors: int
    checkpoint_id: str | None
    nprobe: int
    rerank: int
    segments: list[dict] = field(default_factory=list)  # name, n, tier, sha256, ids_sha256
    trained: dict | None = None  # name, sha256, n_train, trained_for
    catalog_generation: int = 0
    store_rows: int = 0
    removals: int = 0
    db_state: str = ""
    previous_files: list[str] = field(default_factory=list)
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def build_dir(self) -> str:
        return SEGMENTS

    @property
    def columns(self) -> dict | None:
        """The column files of this build (:mod:`indexer.columns`), or None (an older build)."""
        found = self.extra.get(COLUMNS)
        return found if isinstance(found, dict) else None

    def files(self) -> list[str]:
        """Every file this manifest names, relative to the index folder."""
        out = list(self.checksums())
        if self.columns:
            out += list(self.columns.get("files", ()))  # the column set lists its own files
        return out

    def checksums(self) -> dict[str, str]:
        """``{file: sha256}`` of the immutable files (the column files grow: they are checked
        against the catalog by ``index verify`` instead)."""
        out = {}
        if self.trained:
            out[f"{SEGMENTS}/{self.trained['name']}.faiss"] = self.trained["sha256"]
        for seg in self.segments:
            out[f"{SEGMENTS}/{seg['name']}.faiss"] = seg["sha256"]
            out[f"{SEGMENTS}/{seg['name']}.ids.npy"] = seg["ids_sha256"]
        return out

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        data.update(self.extra)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def read(cls, index_dir: str | Path) -> Manifest:
        path = Path(index_dir) / MANIFEST
        if not path.is_file():
            raise IndexStateError(f"no index in {index_dir}: {MANIFEST} is missing "
                                  "(run `chextriev index`)")
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise IndexStateError(f"{path} is not a valid index manifest: {error}") from error
        if not isinstance(data, dict):
            raise IndexStateError(f"{path} is not a valid index manifest")
        if data.get("format", 1) != FORMAT:
            raise IndexStateError(
                f"{path} is an index of format {data.get('format', 1)} (this chextriev reads "
                f"{FORMAT}): run `chextriev index repair --index-dir {index_dir}` to rebuild it "
                "from the catalog")
        known = set(cls.__dataclass_fields__) - {"extra"}
        try:
            manifest = cls(**{k: data[k] for k in known if k in data})
        except TypeError as error:
            raise IndexStateError(f"{path} is not a valid index manifest: {error}") from error
        manifest.extra = {k: v for k, v in data.items() if k not in known}
        return manifest

    def write(self, index_dir: str | Path) -> None:
        """Commit this manifest (the build's commit point)."""
        atomic_write(Path(index_dir) / MANIFEST, self.to_json(), dir_sync=True)


def signature(index_dir: str | Path) -> tuple | None:
    """What identifies the committed build on disk without reading it: the manifest's inode,
    modification time and size (a save renames a new file into place); None without one."""
    try:
        info = os.stat(Path(index_dir) / MANIFEST)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def sweep(index_dir: str | Path) -> list[str]:
    """Delete index files named neither by the manifest on disk nor by its predecessor
    (``previous_files``), and leftover temporary files; returns what was deleted. Never touches
    what the current manifest names, even when called by another process."""
    index_dir = Path(index_dir)
    try:
        manifest = Manifest.read(index_dir)
    except IndexStateError:
        return []
    keep = set(manifest.files()) | set(manifest.previous_files)
    deleted = []
    for folder in (SEGMENTS, COLUMNS):
        root = index_dir / folder
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            rel = path.relative_to(index_dir).as_posix()
            if path.is_file() and rel not in keep:
                path.unlink(missing_ok=True)
                deleted.append(rel)
        for sub in sorted(root.iterdir()) if root.is_dir() else []:
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
    legacy = index_dir / "builds"  # format 1 builds: superseded once a format 2 manifest exists
    if legacy.is_dir() and not any(f.startswith("builds/") for f in keep):
        shutil.rmtree(legacy, ignore_errors=True)
        deleted.append("builds/")
    for path in index_dir.glob(f"{MANIFEST}.tmp-*"):
        if is_tmp_name(path):
            path.unlink(missing_ok=True)
    return deleted
