"""The self-describing index bundle: what an index folder says about how it was built.

Every index save records, under the manifest key ``bundle`` (``manifest.json``, the commit
point of a build), what a server needs to answer queries the way the archive was embedded:

* ``checkpoint``: ``id`` (the checkpoint id the manifest's ``checkpoint_id`` names: the first 16
  hex digits of the file's sha256), ``sha256``, ``path`` (absolute, as indexed) and ``copy``
  (``bundle/checkpoint-<id>.ckpt`` inside the index folder with ``chextriev index
  --copy-checkpoint``, else ``null``);
* ``detector``: ``{sha256, path}`` of the anatomy detector, or ``null`` (atlas boxes);
* ``boxes``: where region boxes came from: ``given`` (a record's own boxes, used where present)
  and ``otherwise`` (``detector`` or ``atlas``);
* ``model``: a summary of the model configuration (kind, variant, backbone, image size,
  embedding dimension, classes, regions, binary codes) and the sha256 of the full configuration;
* ``build``: the index type asked for (the manifest's ``index_type``/``factory`` say what was
  built), the numerics the model ran in (``precision``, and ``precision_requested``) and the
  device; ``nprobe`` and the re-rank depth are the manifest's own ``nprobe`` and ``rerank``.

``chextriev serve --index-dir DIR`` reads it (:func:`read_bundle`) and needs nothing else:
:meth:`Bundle.checkpoint_file` is the copy when present, else the recorded path; flags override
either, and a checkpoint whose id differs from the manifest's is refused by the one check the
server has always made (``checkpoint_id`` against the manifest's).

>>> bundle = read_bundle("idx")                      # doctest: +SKIP
>>> bundle.checkpoint_file(), bundle.detector_file()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chextriev.errors import ChextrievError
from chextriev.files import atomic_copy, sha256_file
from indexer.manifest import Manifest

log = logging.getLogger(__name__)

BUNDLE_KEY = "bundle"
COPY_DIR = "bundle"
VERSION = 1
#: Model configuration fields recorded in the summary (the full configuration is hashed).
MODEL_FIELDS = ("kind", "backbone", "graph", "image_size", "binary")


class BundleError(ChextrievError):
    """An index bundle that names a file which is not there (or not the one recorded)."""


def checkpoint_copy_name(checkpoint_id: str) -> str:
    return f"{COPY_DIR}/checkpoint-{checkpoint_id}.ckpt"


def copy_checkpoint(index_dir: str | Path, path: str | Path, checkpoint_id: str) -> str:
    """Copy the checkpoint into ``index_dir/bundle/`` (temporary name, fsync, rename) unless a
    copy of that id is already there; returns its path relative to ``index_dir``."""
    index_dir, path = Path(index_dir), Path(path)
    rel = checkpoint_copy_name(checkpoint_id)
    target = index_dir / rel
    if target.is_file() and target.stat().st_size == path.stat().st_size:
        return rel
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_copy(path, target)
    log.info("checkpoint copied into the index bundle: %s", target)
    return rel


class BuildRecord:
    """What an indexing run records in every manifest it saves (see the module docstring).

    Built once per run from the embedder (:meth:`from_embedder`: files hashed once);
    :meth:`as_dict` is called at each index save, so the precision the model settled on (an
    ``auto`` bf16 choice checked on the first batch) is what the manifest says."""

    def __init__(self, *, checkpoint: dict | None, detector: dict | None, model: dict,
                 build: dict, embedder=None):
        self.checkpoint = checkpoint
        self.detector = detector
        self.model = model
        self.build = build
        self._embedder = embedder

    @classmethod
    def from_embedder(cls, embedder, *, index_dir: str | Path, index_type: str,
                      device: str, copy: bool = False) -> BuildRecord:
        """The record of ``embedder`` (an :class:`indexer.embedder.ModelEmbedder`, or any object
        with ``checkpoint_id``/``embedding_dim``/``class_names``: then without files).
        ``copy``: copy the checkpoint into the index folder (``--copy-checkpoint``)."""
        loaded = getattr(embedder, "loaded", None)
        path = getattr(loaded, "path", None)
        checkpoint = None
        if path is not None and Path(path).is_file():
            path = Path(path).resolve()
            checkpoint = {"id": embedder.checkpoint_id, "sha256": sha256_file(path),
                          "path": str(path), "copy": None}
            if checkpoint["sha256"][:16] != embedder.checkpoint_id:
                raise BundleError(f"checkpoint {path} changed while indexing (its sha256 is no "
                                  f"longer that of checkpoint {embedder.checkpoint_id})")
            if copy:
                checkpoint["copy"] = copy_checkpoint(index_dir, path, embedder.checkpoint_id)
        elif copy:
            raise BundleError("--copy-checkpoint needs a checkpoint file (this embedder has none)")
        detector_path = getattr(embedder, "detector_path", None)
        detector = None
        if detector_path is not None and Path(detector_path).is_file():
            found = Path(detector_path).resolve()
            detector = {"sha256": sha256_file(found), "path": str(found)}
        model: dict[str, Any] = {"checkpoint_id": getattr(embedder, "checkpoint_id", None),
                                 "embedding_dim": int(embedder.embedding_dim),
                                 "class_names": list(getattr(embedder, "class_names", ()))}
        if loaded is not None:
            config = loaded.config
            full = config.to_dict()
            model.update({name: full.get(name) for name in MODEL_FIELDS})
            model.update({"variant": loaded.variant, "has_regions": bool(loaded.has_regions),
                          "image_size": int(loaded.image_size),
                          "config_sha256": hashlib.sha256(
                              json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()})
        build = {"index_type": index_type, "device": device,
                 "precision_requested": getattr(embedder, "precision_requested", None)}
        return cls(checkpoint=checkpoint, detector=detector, model=model, build=build,
                   embedder=embedder)

    def as_dict(self) -> dict:
        loaded = getattr(self._embedder, "loaded", None)
        build = dict(self.build)
        build["precision"] = getattr(loaded, "precision", None)
        return {
            "version": VERSION,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checkpoint": self.checkpoint,
            "detector": self.detector,
            "boxes": {"given": "a record's own boxes, where it has them",
                      "otherwise": "detector" if self.detector else "atlas"},
            "model": self.model,
            "build": build,
        }


@dataclass(frozen=True)
class Bundle:
    """The bundle of a saved index, as read (:func:`read_bundle`)."""

    index_dir: Path
    checkpoint_id: str | None
    nprobe: int
    rerank: int
    index_type: str
    build_id: str = ""
    data: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, index_dir: str | Path, manifest) -> Bundle:
        """The bundle recorded in ``manifest`` (an :class:`indexer.manifest.Manifest`)."""
        data = manifest.extra.get(BUNDLE_KEY)
        return cls(index_dir=Path(index_dir), checkpoint_id=manifest.checkpoint_id,
                   nprobe=int(manifest.nprobe), rerank=int(manifest.rerank),
                   index_type=manifest.index_type, build_id=manifest.build_id,
                   data=data if isinstance(data, dict) else {})

    @property
    def checkpoint(self) -> dict | None:
        return self.data.get("checkpoint")

    @property
    def detector(self) -> dict | None:
        return self.data.get("detector")

    def checkpoint_file(self) -> Path:
        """The checkpoint to serve: the copy inside the index folder when there is one, else
        the recorded path. Raises :class:`BundleError` saying what to pass when neither is
        there (or the index records none)."""
        info = self.checkpoint
        if not info:
            raise BundleError(f"the index in {self.index_dir} does not record its checkpoint "
                              f"(built before bundles, or through the Python API): pass "
                              f"--checkpoint (the one with id {self.checkpoint_id}), or rebuild "
                              "with `chextriev index`")
        candidates = [self.index_dir / info["copy"]] if info.get("copy") else []
        candidates.append(Path(info["path"]))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise BundleError(f"the index in {self.index_dir} was built with checkpoint "
                          f"{info['id']} ({info['path']}), which is not there any more: pass "
                          "--checkpoint with that file (sha256 " + info["sha256"][:16] + "...), "
                          "or rebuild with `chextriev index --copy-checkpoint`")

    def detector_file(self) -> Path | None:
        """The detector the index was built with, or ``None`` (atlas boxes); raises
        :class:`BundleError` when it is recorded but not there."""
        info = self.detector
        if not info:
            return None
        path = Path(info["path"])
        if not path.is_file():
            raise BundleError(f"the index in {self.index_dir} was built with the anatomy detector "
                              f"{path}, which is not there any more: pass --detector with that "
                              "file")
        return path

    def detector_matches(self, path: str | Path | None) -> bool:
        """True when ``path`` is the detector the index records (both ``None`` counts)."""
        info = self.detector
        if path is None or info is None:
            return path is None and info is None
        return sha256_file(path) == info["sha256"]

    def summary(self) -> dict:
        """What ``/readyz`` shows of the bundle (no file paths: they never leave the server)."""
        return {"checkpoint_id": self.checkpoint_id,
                "checkpoint_copy": bool((self.checkpoint or {}).get("copy")),
                "detector": bool(self.detector), "boxes": self.data.get("boxes"),
                "model": self.data.get("model"), "build": self.data.get("build"),
                "index_type": self.index_type, "nprobe": self.nprobe, "rerank": self.rerank}


def read_bundle(index_dir: str | Path) -> Bundle:
    """The bundle of the index committed in ``index_dir`` (an index saved before bundles gives
    an empty ``data``). Raises :class:`indexer.manifest.IndexStateError` when there is no
    valid manifest."""
    return Bundle.from_manifest(index_dir, Manifest.read(index_dir))
