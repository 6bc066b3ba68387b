"""Retrieval metrics of ``chextriev evaluate``: the one retrieval core, :mod:`chextriev.retrieval`.

Exact k-NN and the CheXtriev protocol's mAP/mHR/mRR@k live in the bottom-layer module
:mod:`chextriev.retrieval` (training validation and the Faiss oracle tests use it too); this
module re-exports it under the name the evaluators and the architecture contract use
(``metrics.retrieval.retrieval_metrics``).
"""

from chextriev.retrieval import (
    EMPTY_CLASS_MODES,
    EXCLUDE_SAME_MODES,
    METRIC_NAMES,
    apply_exclusions,
    exact_knn,
    neighbors_from_embeddings,
    normalize_rows,
    per_query_scores,
    retrieval_metrics,
    retrieval_metrics_at,
    retrieval_scores,
    same_group_mask,
)

__all__ = ["EMPTY_CLASS_MODES", "EXCLUDE_SAME_MODES", "METRIC_NAMES", "apply_exclusions", "exact_knn",
           "neighbors_from_embeddings", "normalize_rows", "per_query_scores", "retrieval_metrics",
           "retrieval_metrics_at", "retrieval_scores", "same_group_mask"]
