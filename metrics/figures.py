"""PNG figures of an evaluation (matplotlib, Agg backend): per-class bars and a query grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def per_class_bars(report: dict[str, Any], path: Path, k: int | None = None) -> Path:
    """Grouped bars of mAP, mHR, mRR per class at ``k`` (default: the largest k)."""
    ks = list(report["retrieval"])
    k = k if k is not None else max(ks)
    res = report["retrieval"][k]
    names = [str(n) for n in res["per_class"]]
    metrics = ("mAP", "mHR", "mRR")
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    for i, m in enumerate(metrics):
        vals = [np.nan if e[m] is None else e[m] for e in res["per_class"].values()]
        ax.bar(x + (i - 1) * 0.27, vals, width=0.27, label=m)
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"score @ k={k}")
    ax.set_title(f"Retrieval per class (k={k}, skip={res['options']['skip']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def auroc_bars(report: dict[str, Any], path: Path) -> Path | None:
    """Bars of per-class AUROC (undefined classes shown empty); None when no classification."""
    cls = report.get("classification")
    if not cls:
        return None
    per = cls["auroc"]["per_class"]
    names = [str(n) for n in per]
    vals = [np.nan if v is None else v for v in per.values()]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    ax.bar(np.arange(len(names)), vals, color="tab:purple")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("AUROC per class", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short(labels: np.ndarray, class_names: Sequence[str]) -> str:
    names = [class_names[c] for c in np.flatnonzero(np.nan_to_num(labels) == 1)]
    text = ", ".join(n[:14] for n in names) or "normal"
    return text if len(text) <= 40 else text[:37] + "..."


def query_grid(
    thumbnails: Sequence[np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    neighbors: np.ndarray,
    queries: Sequence[int],
    path: Path,
    n_results: int = 5,
) -> Path:
    """A grid: one row per query, its image then its top results.

    ``thumbnails``: (h, w) float images in [0, 1] per gallery row; ``labels`` (N, C);
    ``neighbors`` (N, >=n_results). A result is framed green when it shares a finding with the
    query (a hit for at least one of the query's classes), red otherwise.
    """
    rows = len(queries)
    cols = 1 + n_results
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for r, q in enumerate(queries):
        q_pos = np.nan_to_num(labels[q]) == 1
        cells = [(q, None)] + [(int(j), i) for i, j in enumerate(neighbors[q, :n_results])]
        for c, (j, rank) in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < 0:
                ax.set_axis_off()
                continue
            ax.imshow(thumbnails[j], cmap="gray", vmin=0, vmax=1)
            if rank is None:
                ax.set_title(f"query\n{_short(labels[j], class_names)}", fontsize=6)
                color = "tab:blue"
            else:
                hit = bool((q_pos & (np.nan_to_num(labels[j]) == 1)).any())
                color = "tab:green" if hit else "tab:red"
                ax.set_title(f"#{rank + 1} {'hit' if hit else 'miss'}\n{_short(labels[j], class_names)}", fontsize=6)
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pick_queries(labels: np.ndarray, n: int = 6, seed: int = 0) -> list[int]:
    """Up to ``n`` abnormal query rows, spread over classes, reproducibly."""
    rng = np.random.default_rng(seed)
    lab = np.nan_to_num(labels) == 1
    chosen: list[int] = []
    for c in rng.permutation(lab.shape[1]):
        rows = [i for i in np.flatnonzero(lab[:, c]) if i not in chosen]
        if rows:
            chosen.append(int(rng.choice(rows)))
        if len(chosen) >= n:
            break
    return sorted(chosen)


def thumbnail(image: np.ndarray, size: int = 96) -> np.ndarray:
    """A (size, size)-bounded float thumbnail by striding (no interpolation dependency)."""
    img = np.asarray(image, dtype=np.float32)
    step = max(1, int(np.ceil(max(img.shape[:2]) / size)))
    return img[::step, ::step]
