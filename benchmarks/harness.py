"""Helpers shared by the speed benchmarks (bench_embed.py, bench_int8.py, bench_gpu.py, load_test.py).

* :func:`synth_archive`: a ``chextriev synth`` archive (reused when the folder already holds one);
* :func:`default_checkpoint`: the default architecture (``build_model("v6")``: ResNet50 roi at
  512 px, graph width 1024) with random weights and the feature standardisation fitted on a few
  archive images (:func:`feature_rows`), written in the ``chextriev train`` checkpoint format.
  Latency and the bf16 error do not depend on training; the fitted standardisation puts the
  projection's inputs on the scale a trained model sees. An existing file is reused only when it
  was fitted under the current scale floor (``region_features.SCALE_FLOOR``);
* :func:`top_k_overlap`: how far two embeddings of one gallery agree on every image's neighbours.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


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
    from chextriev.synth.archive import read_archive

    records = read_archive(archive)[: max_images or None]
    return [load_image(r.source) for r in records], [r.boxes for r in records], records


def default_checkpoint(path: Path, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray] | None = None,
                       variant: str = "v6", seed: int = 0, **overrides) -> Path:
    """Write ``variant`` (default architecture unless ``overrides``) with random weights and the
    feature standardisation fitted on ``images`` (fp32), as a ``chextriev train`` checkpoint."""
    import torch

    from chextriev.checkpoint import read_checkpoint
    from chextriev.model.build import build_from_config
    from chextriev.model.config import MODEL_FORMAT, get_config
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
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"model_format": MODEL_FORMAT, "model_config": config.to_dict(), "variant": variant,
                                     "class_names": list(config.class_names), "image_size": config.image_size,
                                     "feature_scale_rule": rule},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
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


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the top-``k`` neighbours (self excluded, cosine) that embeddings ``a`` and
    ``b`` ``(N, D)`` of the same gallery agree on."""
    k = min(k, len(a) - 1)  # a gallery smaller than k + 1: every other image is a neighbour
    if k < 1:
        return 1.0

    def neighbours(e: np.ndarray) -> np.ndarray:
        similarity = e @ e.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :k]

    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(neighbours(a), neighbours(b))]))


def machine_line() -> str:
    """CPU model, core count, native bf16 features, torch version and threads."""
    import os

    import torch

    from chextriev.precision import cpu_bf16_features

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = ", ".join(cpu_bf16_features()) or "no native bf16"
    return (f"{model}, {os.cpu_count()} cores ({bf16}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
