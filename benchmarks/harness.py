"""What the benchmarks share: the machine they ran on, timing, and the fixtures they measure on.

* :func:`machine_line`: CPU model, cores, the CPU's native bf16 features named one by one (AMX,
  AVX-512 bf16), the load average (what else was running), torch version and threads; every
  benchmark prints it beside its figures (BENCHMARKS.md asks for it);
* :func:`timed`, :func:`interleaved`: wall-clock seconds of one call, and of several calls
  alternated over repeats so that the load of a shared machine hits them alike (figures are
  compared within one run, as ratios);
* :class:`Table`: a markdown table printed row by row as the figures come;
* :func:`synth_archive`, :func:`archive_images`: a ``chextriev synth`` archive (reused when the
  folder already holds one) and its decoded images, boxes and records;
* :func:`default_checkpoint`: the default architecture (``build_model("v6")``: ResNet50 roi at
  512 px, graph width 1024) with random weights and the feature standardisation fitted on a few
  archive images (:func:`feature_rows`), written with
  :func:`chextriev.checkpoint.save_model_checkpoint`. Latency and the bf16 error do not depend on
  training; the fitted standardisation puts the projection's inputs on the scale a trained
  model sees. An existing file is reused only when it was fitted under the current scale floor
  (``region_features.SCALE_FLOOR``);
* :func:`clustered_chunk`, :func:`make_queries`, :func:`recall_at`:
  unit vectors shaped like an archive's embeddings, for the Faiss benchmarks;
* :func:`top_k_overlap`: how far two embeddings of one gallery agree on every image's neighbours
  (the retrieval core's exact k-NN).

``REPO_ROOT`` is the checkout this package sits in (the default place of ``runs/``,
``results/`` and ``data/`` of the experiments).
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the machine
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_features_text() -> str:
    """``"AMX: no, AVX-512 bf16: yes"``: the native bf16 features the precision choice reads
    (:func:`chextriev.precision.cpu_bf16_features`), each named with its answer."""
    from chextriev.precision import cpu_bf16_features

    found = set(cpu_bf16_features())
    return (f"AMX: {'yes' if 'amx_bf16' in found else 'no'}, "
            f"AVX-512 bf16: {'yes' if 'avx512_bf16' in found else 'no'}")


def load_average() -> str:
    """The 1-minute load average (what else was running), or ``"n/a"``."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def machine_line() -> str:
    """CPU model, core count, native bf16 features, load average, torch version and threads."""
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores ({bf16_features_text()}), load average "
            f"{load_average()}, torch {torch.__version__}, {torch.get_num_threads()} threads")


# ------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """``(wall seconds, result)`` of one call of ``fn``."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of every call of ``calls``, ``repeats`` times, the calls alternated within
    each repeat (a load change on a shared machine then hits them all alike)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(timed(fn)[0])
    return times


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000


class Table:
    """Rows of a markdown table, printed as they come; :meth:`text` gives the whole table."""

    def __init__(self, title: str, columns: Sequence[str] = ("stage", "what", "figure", "target")):
        self.width = len(columns)
        self.lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def row(self, *cells: object) -> None:
        """One row; missing trailing cells are empty."""
        cells = (*cells, *[""] * (self.width - len(cells)))
        line = "| " + " | ".join(str(c) for c in cells) + " |"
        self.lines.append(line)
        print(line, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# ------------------------------------------------------------------------------ archives and checkpoints
def synth_archive(out: Path, patients: int, size: int = 512, seed: int = 0, workers: int = 2) -> Path:
    """``out`` holding a synthetic archive of ``patients`` patients (drawn unless already there)."""
    from chextriev.synth.writer import SynthConfig, write_archive

    out = Path(out)
    if not (out / "manifest.csv").is_file():
        write_archive(SynthConfig(out=out, patients=patients, seed=seed, size=size, workers=workers))
    return out


def archive_images(archive: Path, max_images: int | None = None) -> tuple[list[np.ndarray], list, list]:
    """Decoded images, their true boxes and their records (manifest order), at most ``max_images``."""
    from chextriev.io.images import load_image
    from chextriev.io.synthetic import read_archive

    records = read_archive(archive)[: max_images or None]
    return [load_image(r.source) for r in records], [r.boxes for r in records], records


def default_checkpoint(path: Path, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray] | None = None,
                       variant: str = "v6", seed: int = 0, **overrides) -> Path:
    """Write ``variant`` (default architecture unless ``overrides``) with random weights and the
    feature standardisation fitted on ``images`` (fp32), as a ``chextriev train`` checkpoint."""
    import torch

    from chextriev.checkpoint import read_checkpoint, save_model_checkpoint
    from chextriev.model.build import build_from_config
    from chextriev.model.config import get_config
    from chextriev.model.region_features import SCALE_FLOOR

    rule = f"absolute {SCALE_FLOOR}"  # checkpoints fitted under another scale floor are redrawn
    path = Path(path)
    if path.is_file():
        saved = read_checkpoint(path).get("hyper_parameters") or {}
        if saved.get("feature_scale_rule", f"absolute {SCALE_FLOOR}") == rule:  # older files: absolute
            return path
        log.info("%s was fitted under another feature scale rule (%s): rewriting it", path,
                 saved.get("feature_scale_rule"))
    config = get_config(variant, **overrides)
    torch.manual_seed(seed)
    model = build_from_config(config).eval()
    features_module = model.feature_module()
    if features_module is not None and len(images):
        features = feature_rows(model, images, boxes)
        features_module.set_feature_stats(features.mean(dim=0), features.std(dim=0))
    save_model_checkpoint(path, model, variant=variant, feature_scale_rule=rule)
    log.info("wrote %s (%s, random weights, feature standardisation from %d images)", path, variant, len(images))
    return path


def feature_rows(model, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray] | None = None):
    """The frozen backbone features of ``images`` (fp32) as rows ``(n, F)``: one per present
    region (region models) or per image; what the feature standardisation is fitted on."""
    import torch

    config = model.config
    if boxes is None:
        from chextriev.anatomy.atlas import Atlas

        atlas = Atlas.default()
        boxes = [atlas.boxes_for(*im.shape[:2]) for im in images]
    boxes = list(boxes)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), 8):
            x, b = model.prepare_batch(images[start:start + 8], boxes[start:start + 8])
            rows.append(model.extract(x, b).reshape(-1, config.feature_dim) if config.has_regions
                        else model.extract(x, b).reshape(len(x), -1))
    features = torch.cat(rows)
    return features[features.abs().sum(dim=1) > 0]  # missing regions are zero rows


# ------------------------------------------------------------------------------ vectors
SPREAD = 0.7  # spread of sub-cluster centres around their cluster centre (unit centre)
NOISE = 0.35  # spread of the points around their sub-cluster centre (10 points each)


def clustered_chunk(start: int, count: int, dim: int, centres: np.ndarray, seed: int,
                    spread: float = SPREAD) -> np.ndarray:
    """Rows ``start..start+count`` of the data set, regenerated deterministically per chunk.

    Two-level structure like real embeddings: clusters (findings, anatomy) of sub-clusters of
    10 near-duplicates (same patient, similar studies), the sub-cluster centres ``spread`` around
    their cluster centre. ``start`` and ``count`` are multiples of 10."""
    rng = np.random.default_rng([seed, start])
    n_sub = -(-count // 10)
    sub = centres[rng.integers(0, len(centres), n_sub)]
    sub = sub + rng.standard_normal((n_sub, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    sub /= np.linalg.norm(sub, axis=1, keepdims=True)
    x = np.repeat(sub, 10, axis=0)[:count]
    x = x + rng.standard_normal((count, dim), dtype=np.float32) * (NOISE / np.sqrt(dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_queries(exact: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """Perturbed copies of archived vectors (a new image of an archived case)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(exact), n_queries, replace=False)
    dim = exact.shape[1]
    q = exact[picks] + rng.standard_normal((n_queries, dim), dtype=np.float32) * (NOISE / np.sqrt(dim))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true neighbours (rows of ``truth``) that ``found`` holds."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the top-``k`` neighbours (self excluded, cosine) that embeddings ``a`` and
    ``b`` ``(N, D)`` of the same gallery agree on."""
    from chextriev.retrieval import neighbors_from_embeddings

    k = min(k, len(a) - 1)  # a gallery smaller than k + 1: every other image is a neighbour
    if k < 1:
        return 1.0
    first, second = neighbors_from_embeddings(a, k)[0], neighbors_from_embeddings(b, k)[0]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(first, second)]))
