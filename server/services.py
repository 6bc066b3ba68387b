"""The service layer: the model and the catalog behind the HTTP handlers.

One :class:`SearchService` per worker process. It is created by :func:`server.create_app`, which
runs in each worker after any fork (``chextriev serve --workers N`` forks first, then builds the
app), and it reloads itself if it finds itself in a different process from the one that loaded
it (a pre-fork server that built the app before forking), so no model, Faiss index or
database connection is ever shared across a fork.

The index is read through :class:`indexer.catalog.Catalog` only (the one door: this module
never opens a database session, the manifest or a store itself).

Bundle and live updates: the checkpoint and detector default to what the index folder's bundle
records (:mod:`indexer.bundle`; settings override them), and a checkpoint whose id is not the
index's is refused. Each request calls :meth:`SearchService.poll`, which asks the catalog
whether a newer build is committed (:meth:`~indexer.catalog.Catalog.changed`, one ``stat``): it is loaded
in a background thread (:meth:`indexer.catalog.Catalog.reload`, an atomic swap) while requests
keep being answered from the old one, so there is no error window; a build of another
checkpoint loads the new model too (when the checkpoint comes from the bundle). A failed load
or reload is retried with exponential backoff (1 s doubling to :data:`RETRY_MAX_S`);
``Retry-After`` says when the next attempt is due. Each worker process polls on its own.

Concurrency: model calls (embedding, Grad-CAM with its hooks) hold ``model_lock``; searches of
a GPU index hold ``index_lock``, because a Faiss GPU index must not be searched from two threads
at once. CPU indexes are searched concurrently (Faiss CPU search is thread-safe, and a one-query
search runs on one core, so concurrent requests use all of them).
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import ChextrievError

log = logging.getLogger(__name__)

STATES = ("idle", "loading", "ready", "failed")
#: Extra hits asked of the index, so that hits removed since the build was loaded can be dropped.
STALE_MARGIN = 8
#: Backoff of a failed load or reload: 1 s, doubling, at most this.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0
#: ``overlay``: the heat blended on the image (RGB); ``layer``: the same colours as a transparent
#: RGBA layer (alpha in proportion to the heat), which drawn over the grey image gives the overlay.
HEATMAP_STYLES = ("overlay", "layer")
#: Opacity of the hottest pixel (as in :func:`chextriev.localization.overlay.overlay_rgb`).
HEAT_ALPHA = 0.45
HEAT_COLORMAP = "jet"


class NotReadyError(ChextrievError):
    """The model, index or database is not loaded (yet, or it failed: ``reason`` says).
    ``retry_after``: seconds until the next attempt (for the ``Retry-After`` header)."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = int(retry_after)


class CheckpointMismatchError(NotReadyError):
    """The checkpoint loaded is not the one the index was built with."""


@dataclass(frozen=True)
class QueryEmbedding:
    """What the model says about one query image.

    ``embedding (D,)`` L2-normalised; ``probabilities (C,)``; ``region_embeddings (18, R)``
    L2-normalised per region or ``None`` for global models; ``region_probabilities (18, C)`` or
    ``None``; ``boxes (18, 4)`` original pixels (NaN = missing); ``box_source`` one of
    ``given``, ``detector``, ``atlas``, ``detector+atlas``.
    """

    embedding: np.ndarray
    probabilities: np.ndarray
    region_embeddings: np.ndarray | None
    region_probabilities: np.ndarray | None
    boxes: np.ndarray
    box_source: str


class SearchService:
    """Model + catalog, loaded once per process; thread-safe for a threaded WSGI server."""

    def __init__(self, checkpoint: str | Path | None, db_url: str | None, index_dir: str | Path | None,
                 *, detector: str | Path | None = None, device: str = "cpu", torch_threads: int | None = None,
                 precision: str = "auto", compile: str = "off"):
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.db_url = db_url
        self.index_dir = Path(index_dir) if index_dir else None
        self.detector = Path(detector) if detector else None
        self.device = device
        self.torch_threads = torch_threads
        self.compile = compile  # "on": the trunk compiled at load (chextriev.compiled)
        self.precision = precision  # asked for (auto/fp32/bf16); self.model.precision: what runs
        self.model = None  # chextriev.checkpoint.LoadedModel
        self.catalog = None  # indexer.catalog.Catalog
        self.state = "idle"
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.reload_error: str | None = None
        self.reloads = 0
        self._index_device = "cpu"  # where the catalog searches its Faiss index
        self._failures = 0
        self._next_attempt = 0.0  # time.monotonic() of the next retry after a failure
        self._pid: int | None = None
        self._load_lock = threading.Lock()
        self._busy = threading.Lock()  # one background load or reload at a time
        self.model_lock = threading.Lock()
        self.index_lock = threading.Lock()

    # ---- loading -------------------------------------------------------------------------
    def missing_settings(self) -> list[str]:
        """Required settings that are not set (``DB_URL`` defaults to the index folder's
        SQLite; the checkpoint and detector to the index bundle's)."""
        return [] if self.index_dir else ["INDEX_DIR"]

    def _open(self):
        """``(model, catalog)`` for the build committed now: the checkpoint and detector from
        the settings, else from the bundle; a checkpoint that is not the index's refused."""
        from chextriev.checkpoint import load_checkpoint
        from indexer.bundle import read_bundle
        from indexer.catalog import Catalog

        bundle = read_bundle(self.index_dir)
        checkpoint = self.checkpoint or bundle.checkpoint_file()
        detector = self.detector if self.detector else bundle.detector_file()
        if self.detector and bundle.detector and not bundle.detector_matches(self.detector):
            log.warning("the detector %s is not the one the index was built with (%s): query "
                        "boxes may differ from the archive's", self.detector.name,
                        Path(bundle.detector["path"]).name)
        if self.torch_threads:
            import torch

            torch.set_num_threads(int(self.torch_threads))
        from chextriev.cli_options import resolve_device

        self.device = resolve_device(self.device)  # "auto" -> cuda or cpu
        model = load_checkpoint(checkpoint, device=self.device, detector_path=detector,
                                precision=self.precision, compile=self.compile == "on")
        self._index_device = "cuda" if str(self.device).startswith("cuda") else "cpu"
        thresholds = dict(zip(model.class_names, map(float, model.finding_thresholds())))
        catalog = Catalog.open(self.db_url, self.index_dir, device=self._index_device,
                               finding_thresholds=thresholds, warm=True)  # read ahead in the background
        try:
            self._check_checkpoint(model, catalog, checkpoint)
        except BaseException:
            catalog.close()
            raise
        return model, catalog

    def _check_checkpoint(self, model, catalog, path) -> None:
        """The one checkpoint check: the model's id against the index's (the bundle records
        the same id with the full sha256 and the path)."""
        built = getattr(catalog, "checkpoint_id", None)
        if built and built != model.checkpoint_id:
            where = "given in the settings (--checkpoint)" if self.checkpoint else "named by the bundle"
            raise CheckpointMismatchError(
                f"the index was built with checkpoint {built} but the checkpoint {where}, "
                f"{Path(path).name}, is {model.checkpoint_id}: serve the checkpoint the index was "
                "built with (or leave --checkpoint out to use the one the index records), or "
                "re-index", retry_after=self.retry_after())

    def load(self) -> None:
        """Load the checkpoint and open the catalog (idempotent per process). On failure the
        state becomes ``failed``, ``error`` holds the reason (``/readyz`` shows it) and the next
        :meth:`poll` after the backoff tries again."""
        with self._load_lock:
            if self.state == "ready" and self._pid == os.getpid():
                return
            self.state, self.error = "loading", None
            started = time.perf_counter()
            try:
                missing = self.missing_settings()
                if missing:
                    raise NotReadyError(f"not configured: set {', '.join(missing)} "
                                        "(chextriev serve --index-dir, or CHEXTRIEV_* variables)")
                self.model, self.catalog = self._open()
                self._pid = os.getpid()
                self._failures, self.reload_error = 0, None
                self.load_seconds = time.perf_counter() - started
                self.state = "ready"
                log.info("ready in %.1f s: %d indexed images, checkpoint %s, index build %s",
                         self.load_seconds, self.catalog.size, self.model.checkpoint_id,
                         self.catalog.build_id)
            except Exception as error:  # noqa: BLE001 - any failure is reported through /readyz
                self._failed()
                self.state, self.error = "failed", f"{type(error).__name__}: {error}"
                log.error("loading failed (next attempt in %d s): %s", self.retry_after(),
                          self.error)

    def _failed(self) -> None:
        self._failures += 1
        delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (self._failures - 1))
        self._next_attempt = time.monotonic() + delay

    def retry_after(self) -> int:
        """Whole seconds until the next load attempt (at least 1)."""
        return max(1, math.ceil(self._next_attempt - time.monotonic()))

    # ---- live updates --------------------------------------------------------------------
    def poll(self) -> None:
        """Called on every request (cheap: one ``stat``). Retries a failed load once its backoff
        has passed, and loads a newly committed build, both in a background thread: requests
        meanwhile are answered from what is loaded (or 503 while nothing is)."""
        if self.index_dir is None or self._pid not in (None, os.getpid()):
            return
        if self.state == "failed":
            if time.monotonic() >= self._next_attempt:
                self._in_background(self._retry, "chextriev-retry")
            return
        if self.state != "ready" or not self.catalog.changed():
            return
        if time.monotonic() >= self._next_attempt:
            self._in_background(self.refresh, "chextriev-reload")

    def _in_background(self, work, name: str) -> None:
        if not self._busy.acquire(blocking=False):
            return  # one is running already

        def run():
            try:
                work()
            finally:
                self._busy.release()

        threading.Thread(target=run, name=name, daemon=True).start()

    def _retry(self) -> None:
        log.info("retrying the load (attempt %d)", self._failures + 1)
        self.load()

    def refresh(self) -> bool:
        """Swap in the build committed now if it is not the one loaded; True when swapped.
        Failures keep the loaded build serving (retried after the backoff), except a build of
        a checkpoint this server must not serve, which makes the service ``failed``."""
        from indexer.bundle import read_bundle

        started = time.perf_counter()
        try:
            built = read_bundle(self.index_dir).checkpoint_id
            if built != self.model.checkpoint_id:
                log.info("the index was rebuilt with checkpoint %s: loading it", built)
                model, catalog = self._open()
                old = self.catalog
                self.model, self.catalog = model, catalog
                old.close()
                swapped = True
            else:
                swapped = self.catalog.reload()
        except CheckpointMismatchError as error:
            self._failed()
            self.state, self.error = "failed", f"{type(error).__name__}: {error}"
            log.error("%s", self.error)
            return False
        except Exception as error:  # noqa: BLE001 - keep serving the loaded build, retry later
            self._failed()
            self.reload_error = f"{type(error).__name__}: {error}"
            log.warning("reloading the index failed (serving build %s; next attempt in %d s): %s",
                        self.catalog.build_id, self.retry_after(), self.reload_error)
            return False
        self._failures, self.reload_error = 0, None
        if swapped:
            self.reloads += 1
            log.info("index build %s loaded in %.2f s: %d indexed images", self.catalog.build_id,
                     time.perf_counter() - started, self.catalog.size)
        return swapped

    def start_background_load(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="chextriev-load", daemon=True)
        thread.start()
        return thread

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def bundle(self):
        """The :class:`indexer.bundle.Bundle` of the loaded build (None before loading)."""
        return None if self.catalog is None else self.catalog.bundle

    def require_ready(self) -> None:
        """Raise :class:`NotReadyError` unless loaded in this process (reloads after a fork)."""
        if self.state == "ready" and self._pid != os.getpid():
            log.info("process %d inherited a loaded service: reloading after fork", os.getpid())
            self.state = "idle"
            self.load()
        if self.state != "ready":
            reason = self.error or ("loading the model, index and database" if self.state == "loading"
                                    else "not loaded")
            raise NotReadyError(reason, retry_after=self.retry_after() if self.state == "failed" else 5)

    def catalog_problem(self):
        """None when loaded and the catalog database answers (one round trip), else why not:
        the :class:`~indexer.db.CatalogUnavailableError` (down, restarting, failing over)."""
        if not self.ready or self._pid != os.getpid():
            return None
        from indexer.catalog import CatalogUnavailableError

        try:
            self.catalog.ping()
        except CatalogUnavailableError as error:
            return error
        return None

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports (not ready while the catalog database is unreachable)."""
        # worker_pid: which process answered (``--workers N`` forks N that share one socket)
        info: dict[str, Any] = {"ready": self.ready, "state": self.state, "worker_pid": os.getpid()}
        problem = self.catalog_problem()
        if problem is not None:
            info.update(ready=False, error=str(problem), retry_after_s=problem.retry_after)
        if self.error:
            info["error"] = self.error
        if self.state == "failed":
            info["retry_after_s"] = self.retry_after()
        if self.reload_error:
            info["reload_error"] = self.reload_error
        if self.ready:
            info.update({
                "index_size": int(self.catalog.size),
                "index_build_id": self.catalog.build_id,
                "checkpoint_id": self.model.checkpoint_id,
                "class_names": list(self.model.class_names),
                "embedding_dim": int(self.model.embedding_dim),
                "has_regions": bool(self.model.has_regions),
                "has_findings": bool(self.model.has_findings),
                "findings_note": self.model.findings_note,
                "text_search": self.text_search_note is None,
                "text_search_note": self.text_search_note,
                "precision": self.model.precision,
                "compiled": self.compiled,
                "load_seconds": round(self.load_seconds or 0.0, 2),
                "reloads": self.reloads,
                "search": self.catalog.search_settings(),
                "bundle": self.bundle.summary() if self.bundle is not None else None,
            })
        return info

    @property
    def compiled(self) -> bool:
        """Whether the model's trunk runs compiled (``--compile on``, the default, and no
        failure; under ``auto`` the bf16 trunk compiled at load counts: it runs from the query
        after the first, which checks bf16 eagerly, if that check keeps bf16)."""
        from chextriev.compiled import compiled_trunk

        if self.model is None:
            return False
        trunk = compiled_trunk(self.model.model) or getattr(self.model, "_pending_trunk", None)
        return trunk is not None and trunk.failed is None

    # ---- model ---------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        self.require_ready()
        return tuple(self.model.class_names)

    @property
    def text_search_note(self) -> str | None:
        """Why the loaded model cannot search by text (``POST /api/v1/search/text``), or None
        when it can (:func:`chextriev.localization.text.text_search_note`)."""
        from chextriev.localization.text import text_search_note

        self.require_ready()
        return text_search_note(self.model)

    @property
    def finding_thresholds(self) -> np.ndarray:
        """``(C,)`` probability from which each finding counts as predicted: the checkpoint's
        thresholds chosen on validation (max F1), 0.5 where it has none (older checkpoints)."""
        self.require_ready()
        return self.model.finding_thresholds()

    def embed(self, pixels: np.ndarray, boxes: np.ndarray | None = None,
              timings: dict[str, float] | None = None) -> QueryEmbedding:
        """Embed one ``(H, W)`` image with THE embedding function (``embed_images``), its pixels
        prepared by THE image contract as the indexer prepares an archived image's
        (:func:`chextriev.io.pixels.model_pixels` for the model's ``max_input_side``); ``boxes``
        and the returned boxes are in ``pixels``' own (original) pixels.

        ``timings``, when given, receives the milliseconds of its stages: ``boxes``, ``model``
        and ``wait`` (time spent waiting for another request's model call to finish).
        """
        from chextriev.embedding import embed_images
        from chextriev.io.pixels import model_pixels

        self.require_ready()
        prepared = model_pixels(pixels, self.model.max_input_side)
        given = None if boxes is None else [prepared.to_model(boxes)]
        waited = time.perf_counter()
        with self.model_lock:
            if timings is not None:
                timings["wait"] = (time.perf_counter() - waited) * 1000
            batch = embed_images(self.model, [prepared.pixels], given, timings=timings)
        return QueryEmbedding(
            embedding=np.asarray(batch.embeddings[0], dtype=np.float32),
            probabilities=np.asarray(batch.probabilities[0], dtype=np.float32),
            region_embeddings=None if batch.region_embeddings is None else np.asarray(batch.region_embeddings[0]),
            region_probabilities=None if batch.region_probabilities is None
            else np.asarray(batch.region_probabilities[0]),
            boxes=prepared.to_original(batch.boxes[0]),
            box_source=str(batch.box_sources[0]),
        )

    @property
    def heatmap_method(self) -> str:
        """What the heatmaps are: the model's own PCAM map for a ``--pooling pcam`` classifier,
        else Grad-CAM (:func:`chextriev.localization.cam.own_method`)."""
        from chextriev.localization.cam import own_method

        self.require_ready()
        return own_method(self.model)

    def heatmap_png(self, pixels: np.ndarray, boxes: np.ndarray | None, finding: str,
                    style: str = "overlay") -> bytes:
        """The heatmap of ``finding`` on ``pixels`` ``(H, W)`` (:attr:`heatmap_method`) as PNG:
        overlaid on the image (``style="overlay"``) or as a transparent colour layer of the same
        size (``"layer"``)."""
        from chextriev.localization.cam import heatmap, overlay_png

        self.require_ready()
        with self.model_lock:
            if boxes is None:
                boxes = self.model.box_provider.boxes_for([pixels])[0][0]
            heat = heatmap(self.model, pixels, boxes, finding, method=self.heatmap_method)
        if style == "layer":
            return heat_layer_png(heat)
        return overlay_png(pixels, heat, alpha=HEAT_ALPHA, colormap=HEAT_COLORMAP)

    # ---- catalog -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        self.require_ready()
        return int(self.catalog.size)

    def search_hits(self, vector: np.ndarray, k: int, *, exclude_ids: Sequence[int] | None = None,
                    exclude_patients: Sequence[str] | None = None, filters: dict | None = None,
                    nprobe: int | None = None, rerank: int | None = None) -> list:
        """The index search for one ``(D,)`` vector: ``k`` + :data:`STALE_MARGIN` hits
        (``Hit(image_id, score)``) of the loaded build, best first, hits removed since it was
        loaded included (:meth:`rows_of_hits` drops them with the rows it reads).
        ``nprobe``/``rerank``: per-request search settings (default: the build's)."""
        self.require_ready()
        catalog = self.catalog
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        options = {"exclude_ids": exclude_ids or None, "exclude_patients": exclude_patients or None,
                   "filters": filters or None, "nprobe": nprobe, "rerank": rerank}
        fetch = k + STALE_MARGIN
        if self.index_on_gpu:
            with self.index_lock:
                return catalog.search(query, fetch, **options)[0]
        # Faiss CPU indexes are safe to search from several threads at once
        return catalog.search(query, fetch, **options)[0]

    def rows_of_hits(self, hits: list, k: int) -> tuple[list, list[dict]]:
        """The first ``k`` of ``hits`` that are indexed now and their catalog rows, read once:
        ``(hits, rows)``. One query reads the rows of the first ``k`` hits (their status is in
        them); only when some were removed since the loaded build are the next hits' rows read
        (a status query and then a rows query would be two)."""
        kept: list = []
        rows: list[dict] = []
        start = 0
        while len(kept) < k and start < len(hits):
            part = hits[start:start + k - len(kept)]
            start += len(part)
            found = self._rows_by_id([int(hit.image_id) for hit in part])
            for hit in part:
                row = found.get(int(hit.image_id))
                if row is not None and row.get("status", "indexed") == "indexed":
                    kept.append(hit)
                    rows.append(row)
        return kept, rows

    def _rows_by_id(self, ids: list[int]) -> dict[int, dict]:
        """``{id: row}`` of the ids the catalog knows (a row deleted since the loaded build is
        absent: its id is left out and the rest read again)."""
        from indexer.catalog import UnknownImageError

        try:
            return {int(row["id"]): row for row in self.catalog.images(ids)}
        except UnknownImageError as error:
            known = [i for i in ids if i not in set(error.ids)]
            return {int(row["id"]): row for row in self.catalog.images(known)} if known else {}

    def search_settings(self, nprobe: int | None = None, rerank: int | None = None) -> dict:
        """What a search with these per-request settings uses: ``index_type``, ``nprobe``
        (capped at ``nlist``; ``None`` for flat indexes), ``nlist``, ``rerank`` (``None``
        unless IVF-PQ); the build's defaults where not given."""
        self.require_ready()
        return self.catalog.search_settings(nprobe=nprobe, rerank=rerank)

    @property
    def index_on_gpu(self) -> bool:
        """True when the catalog searches a GPU copy of its Faiss index (or may move it there)."""
        return str(self._index_device).startswith(("cuda", "auto", "gpu"))

    def lookup_instance(self, sop_instance_uid: str, *, pseudonym_key: bytes | None = None) -> int | None:
        """The catalog id of the indexed image with this SOPInstanceUID (its pseudonym in a
        pseudonymised index, given the key), or ``None``: :meth:`Catalog.lookup_instance`."""
        self.require_ready()
        return self.catalog.lookup_instance(sop_instance_uid, pseudonym_key=pseudonym_key)

    def images(self, ids: Sequence[int]) -> list[dict]:
        self.require_ready()
        return list(self.catalog.images(list(ids)))

    def images_or_none(self, ids: Sequence[int]) -> list[dict] | None:
        """Catalog rows for ``ids``, or ``None`` when any id is not indexed."""
        self.require_ready()
        try:
            rows = list(self.catalog.images(list(ids)))
        except (KeyError, IndexError, LookupError):
            return None
        if len(rows) != len(ids) or any(row is None for row in rows):
            return None
        return rows

    def thumbnail_bytes(self, image_id: int) -> tuple[bytes, str]:
        """The stored thumbnail as stored and its MIME type."""
        self.require_ready()
        return self.catalog.thumbnail_bytes(image_id)

    def preview(self, image_id: int, *, check_only: bool = False) -> bytes | bool | None:
        """The stored preview (JPEG, about 1024 px) of an archived image, or None when the index
        stores none for it (built before previews, or with ``--preview-side 0``): callers fall
        back to the thumbnail. ``check_only``: whether it has one."""
        self.require_ready()
        found = self.catalog.preview_bytes(image_id)
        if check_only:
            return found is not None
        return None if found is None else found[0]

    def archived_pixels(self, image_id: int) -> tuple[np.ndarray, str]:
        """What Grad-CAM and region overlays of an archived image are computed on (the server
        never reads the archive): its stored preview as ``(H, W)`` float32 in [0, 1], or its
        thumbnail when it has no preview; and which of the two (``"preview"`` / ``"thumbnail"``)."""
        data = self.preview(image_id)
        if data is None:
            return decode_png(self.thumbnail_bytes(image_id)[0]), "thumbnail"
        return decode_png(data), "preview"

    def vector(self, image_id: int) -> np.ndarray:
        """``(D,)`` stored embedding of an indexed image."""
        self.require_ready()
        return np.asarray(self.catalog.vectors([image_id]), dtype=np.float32)[0]

    def region_embeddings(self, ids: Sequence[int]) -> np.ndarray | None:
        """``(n, 18, R)`` stored region embeddings, or ``None`` (global model)."""
        self.require_ready()
        if not ids:
            return None
        stored = self.catalog.region_embeddings(list(ids))
        return None if stored is None else np.asarray(stored, dtype=np.float32)


def heat_layer_png(heat: np.ndarray, alpha: float = HEAT_ALPHA, colormap: str = HEAT_COLORMAP) -> bytes:
    """``heat (H, W)`` in [0, 1] as an RGBA PNG: the colour map's colour at opacity
    ``alpha * heat``, so that it composited over the grey image equals the overlay PNG."""
    from matplotlib import colormaps
    from PIL import Image

    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    rgba = colormaps[colormap](heat)
    rgba[..., 3] = alpha * heat
    buffer = io.BytesIO()
    Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """A PNG or JPEG (a stored thumbnail or preview) as ``(H, W)`` float32 in [0, 1]."""
    from chextriev.io.images import load_image

    return np.asarray(load_image(bytes(data)), dtype=np.float32)
