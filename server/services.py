"""The service layer: the model and the catalog behind the HTTP handlers.

One :class:`SearchService` per worker process. It is created by :func:`server.create_app`, which
runs in each worker after any fork (``chextriev serve --workers N`` forks first, then builds the
app), and it reloads itself if it finds itself in a different process from the one that loaded
it (a pre-fork server that built the app before forking), so no model, Faiss index or
database connection is ever shared across a fork.

Concurrency: model calls (embedding, Grad-CAM with its hooks) hold ``model_lock``; searches of
a GPU index hold ``index_lock``, because a Faiss GPU index must not be searched from two threads
at once. CPU indexes are searched concurrently (Faiss CPU search is thread-safe, and a one-query
search runs on one core, so concurrent requests use all of them).
"""

from __future__ import annotations

import io
import logging
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
#: ``overlay``: the heat blended on the image (RGB); ``layer``: the same colours as a transparent
#: RGBA layer (alpha in proportion to the heat), which drawn over the grey image gives the overlay.
HEATMAP_STYLES = ("overlay", "layer")
#: Opacity of the hottest pixel (as in :func:`chextriev.localization.overlay.overlay_rgb`).
HEAT_ALPHA = 0.45
HEAT_COLORMAP = "jet"


class NotReadyError(ChextrievError):
    """The model, index or database is not loaded (yet, or it failed: ``reason`` says)."""


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
                 precision: str = "auto"):
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.db_url = db_url
        self.index_dir = Path(index_dir) if index_dir else None
        self.detector = Path(detector) if detector else None
        self.device = device
        self.torch_threads = torch_threads
        self.precision = precision  # asked for (auto/fp32/bf16); self.model.precision: what runs
        self.model = None  # chextriev.checkpoint.LoadedModel
        self.catalog = None  # indexer.catalog.Catalog
        self.state = "idle"
        self.error: str | None = None
        self.load_seconds: float | None = None
        self._pid: int | None = None
        self._load_lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.index_lock = threading.Lock()

    # ---- loading -------------------------------------------------------------------------
    def missing_settings(self) -> list[str]:
        """Required settings that are not set (``DB_URL`` defaults to the index folder's SQLite)."""
        return [name for name, value in (("CHECKPOINT", self.checkpoint), ("INDEX_DIR", self.index_dir))
                if not value]

    def load(self) -> None:
        """Load the checkpoint and open the catalog (idempotent per process). On failure the
        state becomes ``failed`` and ``error`` holds the reason (``/readyz`` shows it)."""
        with self._load_lock:
            if self.state == "ready" and self._pid == os.getpid():
                return
            self.state, self.error = "loading", None
            started = time.perf_counter()
            try:
                missing = self.missing_settings()
                if missing:
                    raise NotReadyError(f"not configured: set {', '.join(missing)} "
                                        "(chextriev serve --checkpoint/--index-dir, or CHEXTRIEV_* variables)")
                from chextriev.checkpoint import load_checkpoint
                from indexer.catalog import Catalog

                if self.torch_threads:
                    import torch

                    torch.set_num_threads(int(self.torch_threads))

                model = load_checkpoint(self.checkpoint, device=self.device, detector_path=self.detector,
                                        precision=self.precision)
                index_device = "cuda" if str(self.device).startswith("cuda") else "cpu"
                catalog = Catalog.open(self.db_url, self.index_dir, device=index_device)
                catalog_checkpoint = getattr(catalog, "checkpoint_id", None)
                if catalog_checkpoint and catalog_checkpoint != model.checkpoint_id:
                    raise NotReadyError(
                        f"the index was built with checkpoint {catalog_checkpoint} but the server loaded "
                        f"{model.checkpoint_id}: serve the checkpoint the index was built with, or re-index")
                self.model, self.catalog = model, catalog
                self._pid = os.getpid()
                self.load_seconds = time.perf_counter() - started
                self.state = "ready"
                log.info("ready in %.1f s: %d indexed images, checkpoint %s, index build %s",
                         self.load_seconds, catalog.size, model.checkpoint_id, catalog.build_id)
            except Exception as error:  # noqa: BLE001 - any failure is reported through /readyz
                self.state, self.error = "failed", f"{type(error).__name__}: {error}"
                log.error("loading failed: %s", self.error)

    def start_background_load(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="chextriev-load", daemon=True)
        thread.start()
        return thread

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def require_ready(self) -> None:
        """Raise :class:`NotReadyError` unless loaded in this process (reloads after a fork)."""
        if self.state == "ready" and self._pid != os.getpid():
            log.info("process %d inherited a loaded service: reloading after fork", os.getpid())
            self.state = "idle"
            self.load()
        if self.state != "ready":
            reason = self.error or ("loading the model, index and database" if self.state == "loading"
                                    else "not loaded")
            raise NotReadyError(reason)

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports."""
        # worker_pid: which process answered (``--workers N`` forks N that share one socket)
        info: dict[str, Any] = {"ready": self.ready, "state": self.state, "worker_pid": os.getpid()}
        if self.error:
            info["error"] = self.error
        if self.ready:
            info.update({
                "index_size": int(self.catalog.size),
                "index_build_id": self.catalog.build_id,
                "checkpoint_id": self.model.checkpoint_id,
                "class_names": list(self.model.class_names),
                "embedding_dim": int(self.model.embedding_dim),
                "has_regions": bool(self.model.has_regions),
                "precision": self.model.precision,
                "load_seconds": round(self.load_seconds or 0.0, 2),
            })
        return info

    # ---- model ---------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        self.require_ready()
        return tuple(self.model.class_names)

    @property
    def finding_thresholds(self) -> np.ndarray:
        """``(C,)`` probability from which each finding counts as predicted: the checkpoint's
        thresholds chosen on validation (max F1), 0.5 where it has none (older checkpoints)."""
        self.require_ready()
        return self.model.finding_thresholds()

    def embed(self, pixels: np.ndarray, boxes: np.ndarray | None = None,
              timings: dict[str, float] | None = None) -> QueryEmbedding:
        """Embed one ``(H, W)`` image with THE embedding function (``embed_images``).

        ``timings``, when given, receives the milliseconds of its stages: ``boxes``, ``model``
        and ``wait`` (time spent waiting for another request's model call to finish).
        """
        from chextriev.embedding import embed_images

        self.require_ready()
        waited = time.perf_counter()
        with self.model_lock:
            if timings is not None:
                timings["wait"] = (time.perf_counter() - waited) * 1000
            batch = embed_images(self.model, [pixels], None if boxes is None else [boxes], timings=timings)
        return QueryEmbedding(
            embedding=np.asarray(batch.embeddings[0], dtype=np.float32),
            probabilities=np.asarray(batch.probabilities[0], dtype=np.float32),
            region_embeddings=None if batch.region_embeddings is None else np.asarray(batch.region_embeddings[0]),
            region_probabilities=None if batch.region_probabilities is None
            else np.asarray(batch.region_probabilities[0]),
            boxes=np.asarray(batch.boxes[0], dtype=np.float32),
            box_source=str(batch.box_sources[0]),
        )

    def heatmap_png(self, pixels: np.ndarray, boxes: np.ndarray | None, finding: str,
                    style: str = "overlay") -> bytes:
        """Grad-CAM of ``finding`` on ``pixels`` ``(H, W)`` as PNG: overlaid on the image
        (``style="overlay"``) or as a transparent colour layer of the same size (``"layer"``)."""
        from chextriev.localization.cam import heatmap, overlay_png

        self.require_ready()
        with self.model_lock:
            if boxes is None:
                boxes = self.model.box_provider.boxes_for([pixels])[0][0]
            heat = heatmap(self.model, pixels, boxes, finding, method="gradcam")
        if style == "layer":
            return heat_layer_png(heat)
        return overlay_png(pixels, heat, alpha=HEAT_ALPHA, colormap=HEAT_COLORMAP)

    # ---- catalog -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        self.require_ready()
        return int(self.catalog.size)

    def search(self, vector: np.ndarray, k: int, *, exclude_ids: Sequence[int] | None = None,
               exclude_patients: Sequence[str] | None = None, filters: dict | None = None) -> list:
        """Top-``k`` hits (``Hit(image_id, score)``, best first) for one ``(D,)`` vector."""
        self.require_ready()
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        options = {"exclude_ids": exclude_ids or None, "exclude_patients": exclude_patients or None,
                   "filters": filters or None}
        if self.index_on_gpu:
            with self.index_lock:
                hits = self.catalog.search(query, k, **options)
        else:  # Faiss CPU indexes are safe to search from several threads at once
            hits = self.catalog.search(query, k, **options)
        return list(hits[0])

    @property
    def index_on_gpu(self) -> bool:
        """True when the catalog searches a GPU copy of its Faiss index (or may move it there)."""
        index = getattr(self.catalog, "index", None)
        return str(getattr(index, "device", "cpu")).startswith(("cuda", "auto", "gpu"))

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

    def thumbnail(self, image_id: int) -> bytes:
        self.require_ready()
        return self.catalog.thumbnail(image_id)

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
    """A PNG (e.g. a stored thumbnail) as ``(H, W)`` float32 in [0, 1]."""
    from chextriev.io.images import load_image

    return np.asarray(load_image(bytes(data)), dtype=np.float32)


def shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W)`` [0, 1] pixels resized (aspect kept) so the longest side is at most ``max_side``."""
    from PIL import Image

    height, width = pixels.shape
    if max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(np.asarray(pixels, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def png_bytes(pixels: np.ndarray, max_side: int | None = None) -> bytes:
    """Encode ``(H, W)`` [0, 1] pixels as an 8-bit grey PNG, shrunk to ``max_side`` if larger."""
    from PIL import Image

    image = Image.fromarray(np.clip(np.asarray(pixels) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
