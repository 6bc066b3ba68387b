"""Search by text (``POST /api/v1/search/text``), Flask-free: the text embedded by the model's
own text tower, the index searched with it as with an image's embedding, and for each result
the anatomy regions the text points at.

A CLIP-family encoder model (``chextriev model init --backbone biomedclip|chexzero|medsiglip``)
keeps its image embedding in the joint image-text space, and its text tower in the checkpoint
(``LoadedModel.text_encoder``): the inner product of the text's L2-normalised embedding with a
stored image embedding is the model's own image-text cosine, so the catalog's ordinary search
ranks the archive by it. Each of the 18 region embeddings the index stores lies in the same
space (the region's RoIAlign-pooled patch tokens through the image tower's projection), so
the cosine of the text to each region of a result says which regions the text points at, as
ChEX does with text prompts: the best :data:`~server.results.TOP_REGIONS` regions present in
the image are returned with their stored boxes.

Any other model answers 409 ``no_text_search`` with the reason
(:func:`chextriev.localization.text.text_search_note`). The text is never logged or written to
the audit log (only its length is logged).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from chextriev.localization.text import text_search_note
from chextriev.vocab import NUM_REGIONS, REGIONS
from server.errors import ApiError
from server.results import TOP_REGIONS, as_boxes
from server.services import QueryEmbedding

#: The ``query.source`` of a search by text.
SOURCE = "text"


def require_text_search(model) -> None:
    """409 ``no_text_search`` with the reason, unless ``model`` (a ``LoadedModel``) has a text
    encoder in the space of its image and region embeddings."""
    note = text_search_note(model)
    if note is not None:
        raise ApiError(409, "no_text_search", f"no search by text: {note}")


def text_query(service, text: str, timings: dict[str, float]) -> QueryEmbedding:
    """The text's embedding ``(D,)`` as a query, computed under the service's model lock.
    ``timings`` receives ``wait`` (for another request's model call), ``model`` (the text tower)
    and ``embed`` (both)."""
    model = service.model
    require_text_search(model)
    started = time.perf_counter()
    with service.model_lock:
        entered = time.perf_counter()
        vector = np.asarray(model.text_encoder.embed([text])[0], dtype=np.float32)
    done = time.perf_counter()
    timings["wait"] = (entered - started) * 1000
    timings["model"] = (done - entered) * 1000
    timings["embed"] = (done - started) * 1000
    return QueryEmbedding(embedding=vector, probabilities=np.zeros(0, np.float32), region_embeddings=None,
                          region_probabilities=None, boxes=np.full((NUM_REGIONS, 4), np.nan, np.float32),
                          box_source="none")


def text_region_matches(vector: np.ndarray, region_embeddings: np.ndarray | None,
                        rows: Sequence[Mapping], top: int = TOP_REGIONS) -> list[list[dict]]:
    """Per result, the ``top`` regions the text points at: ``[{region, index, similarity, box}]``
    best first, ``similarity`` the cosine of the text embedding ``vector (D,)`` to the result's
    stored region embedding (``region_embeddings (n, 18, D)``, L2-normalised rows, zero for a
    missing region), ``box`` the stored box ``[x1, y1, x2, y2]`` in the original image's pixels.
    Regions missing in the image (no box, or a zero embedding) are never named."""
    if region_embeddings is None:
        return [[] for _ in rows]
    text = np.asarray(vector, np.float32).reshape(-1)
    text = text / max(float(np.linalg.norm(text)), 1e-12)
    regions = np.asarray(region_embeddings, np.float32)
    scores = regions @ text  # (n, 18)
    present = np.linalg.norm(regions, axis=-1) > 0
    out = []
    for row_scores, row_present, row in zip(scores, present, rows):
        boxes = as_boxes(row.get("boxes"))
        usable = row_present.copy()
        if boxes is not None:
            usable &= np.isfinite(boxes).all(axis=1)
        order = [int(i) for i in np.argsort(-row_scores, kind="stable") if usable[i]][:top]
        out.append([{"region": REGIONS[i], "index": i, "similarity": round(float(row_scores[i]), 4),
                     "box": None if boxes is None else [round(float(v), 1) for v in boxes[i]]} for i in order])
    return out


def add_text_regions(service, query: QueryEmbedding, payload: dict, rows: Sequence[Mapping],
                     timings: dict[str, float]) -> None:
    """Put each result's :func:`text_region_matches` into its ``matched_regions`` (the field
    image search fills with the regions where query and result agree, drawn the same way by the
    viewer), and mark the query as a text query with no image."""
    started = time.perf_counter()
    ids = [int(result["id"]) for result in payload["results"]]
    stored = service.region_embeddings(ids) if ids else None
    for result, matches in zip(payload["results"], text_region_matches(query.embedding, stored, rows)):
        result["matched_regions"] = matches
    payload["query"]["boxes"] = None
    payload["query"]["box_source"] = None
    payload["matched_regions_by"] = "text"
    timings["regions"] = (time.perf_counter() - started) * 1000
    payload["timing_ms"]["regions"] = round(timings["regions"], 1)
