"""Zero-shot evaluation of a model with a text tower: text-to-image retrieval and classification
from one prompt per finding, no label used for anything but scoring.

A CLIP-family encoder model (``chextriev model init --backbone biomedclip | chexzero |
medsiglip``) embeds images and texts in one space (``LoadedModel.text_encoder``), so a finding's
prompt (``metrics/zero_shot_prompts.toml``, or ``--prompts FILE``) is a query:

* **retrieval**: each finding's prompt searches the evaluated images (exact cosine top-k, the
  retrieval core :func:`metrics.retrieval.exact_knn`); a result is relevant when the image's own
  label of that finding is 1. The metrics are those of image retrieval
  (:func:`metrics.retrieval.retrieval_metrics` with the prompt as the finding's one query:
  ``query_labels`` = one row per finding), so mAP@k of a finding is the AP@k of its prompt. A
  prompt without a hit counts 0 (``skip`` does not apply: dropping its one query would drop the
  finding); a finding no evaluated image has is undefined (left out of the averages, listed).
* **classification**: each image's score for a finding is its cosine to the prompt, minus its
  cosine to the finding's negative prompt where the file gives one (CheXzero's softmax over the
  pair orders the images the same way); AUROC per finding, and F1 at thresholds chosen on the
  validation split when there is one (:func:`metrics.classification.classification_report`),
  and for the abnormality class list the abnormality summary
  (:func:`metrics.evaluate.abnormality_summary`).

:func:`zero_shot_arrays` is the model-free core (vectors in, figures out); :func:`zero_shot_block`
embeds the prompts with the model's text tower and calls it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import DataFormatError
from chextriev.vocab import equivalent_findings, finding_key, is_abnormality
from metrics.classification import classification_report
from metrics.evaluate import abnormality_summary
from metrics.retrieval import exact_knn, normalize_rows, retrieval_metrics

#: The prompts ``chextriev evaluate`` uses unless given ``--prompts FILE``.
PROMPTS_FILE = Path(__file__).resolve().parent / "zero_shot_prompts.toml"
SCORE_RULE = ("cosine of the image to the finding's prompt, minus its cosine to the negative prompt where the "
              "file gives one")
RETRIEVAL_RULE = ("each finding's prompt is its one query over the evaluated images (exact cosine); a prompt "
                  "without a hit counts 0; a finding no image has is undefined")


@dataclass(frozen=True)
class Prompts:
    """Prompts by :func:`chextriev.vocab.finding_key`: ``positive`` (every finding that has
    one) and ``negative`` (optional); ``source`` the file they came from."""

    positive: Mapping[str, str]
    negative: Mapping[str, str]
    source: str

    def lookup(self, name: str) -> tuple[str, str | None, str] | None:
        """``(prompt, negative or None, the key used)`` for finding ``name``: its own key, else
        that of an equivalent finding of another vocabulary; ``None`` when there is none."""
        for candidate in equivalent_findings(name):
            key = finding_key(candidate)
            if key in self.positive:
                return self.positive[key], self.negative.get(key), key
        return None


def load_prompts(path: str | Path | None = None) -> Prompts:
    """The prompts of a TOML file (default :data:`PROMPTS_FILE`): a ``[prompts]`` table of
    finding -> text and an optional ``[negatives]`` table of the same form. Refused with the
    file's name and the reason: missing, not TOML, another table, an empty or non-text value, a
    negative without its prompt, two keys of one finding."""
    path = Path(path) if path is not None else PROMPTS_FILE
    if not path.is_file():
        raise DataFormatError(f"prompts file {path} does not exist (pass --prompts FILE: a TOML file with a "
                              f"[prompts] table of finding = \"text\")")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"prompts file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"prompts", "negatives"})
    if unknown:
        raise DataFormatError(f"prompts file {path}: unknown table(s) {', '.join(unknown)} (valid: prompts, "
                              "negatives)")
    tables = {}
    for table in ("prompts", "negatives"):
        entries = data.get(table, {})
        if not isinstance(entries, dict):
            raise DataFormatError(f"prompts file {path}: [{table}] must be a table of finding = \"text\"")
        keyed: dict[str, str] = {}
        for name, text in entries.items():
            if not isinstance(text, str) or not text.strip():
                raise DataFormatError(f"prompts file {path}: [{table}] {name!r} must be a non-empty text")
            key = finding_key(name)
            if key in keyed:
                raise DataFormatError(f"prompts file {path}: [{table}] names the finding {key!r} twice")
            keyed[key] = text.strip()
        tables[table] = keyed
    if not tables["prompts"]:
        raise DataFormatError(f"prompts file {path} has no [prompts] entry")
    orphans = sorted(set(tables["negatives"]) - set(tables["prompts"]))
    if orphans:
        raise DataFormatError(f"prompts file {path}: negatives without a prompt: {', '.join(orphans)}")
    return Prompts(tables["prompts"], tables["negatives"], str(path))


def zero_shot_scores(images: np.ndarray, positive: np.ndarray, negative: np.ndarray | None = None) -> np.ndarray:
    """``(N, C)`` classification scores: cosine of each image ``(N, D)`` to each prompt ``(C, D)``,
    minus its cosine to the negative prompt ``(C, D)`` where that row is finite (NaN rows: no
    negative)."""
    scores = normalize_rows(images) @ normalize_rows(positive).T
    if negative is not None:
        negative = np.asarray(negative, np.float32)
        given = np.isfinite(negative).all(axis=1)
        if given.any():
            scores[:, given] -= normalize_rows(images) @ normalize_rows(negative[given]).T
    return scores


def zero_shot_arrays(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], positive: np.ndarray,
                     negative: np.ndarray | None = None, *, ks: Sequence[int] = (3, 5, 10),
                     empty_class: str = "undefined", val_images: np.ndarray | None = None,
                     val_labels: np.ndarray | None = None) -> dict[str, Any]:
    """Zero-shot figures of prompts ``positive (C, D)`` (and ``negative (C, D)``, NaN rows =
    none) over ``images (N, D)`` with ``labels (N, C)`` (0/1, NaN unknown) of ``class_names``.

    Returns ``{"retrieval": {k: retrieval_metrics(...)}, "classification":
    classification_report(...), "retrieval_rule", "score_rule", ["abnormality"]}``; with
    ``val_images``/``val_labels`` the classification report also has thresholds chosen on them.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.float32)
    positive = np.asarray(positive, np.float32)
    names = list(class_names)
    if labels.shape != (images.shape[0], len(names)) or positive.shape[0] != len(names):
        raise ValueError(f"labels {labels.shape}, prompts {positive.shape} for {images.shape[0]} images and "
                         f"{len(names)} findings")
    kmax = max(int(k) for k in ks)
    neighbors, _ = exact_knn(positive, images, kmax)
    # a finding's prompt is its one query; a finding no image has cannot be retrieved: no query
    present = (labels == 1).any(axis=0)
    query_labels = np.eye(len(names), dtype=np.float32) * present[None, :]
    retrieval = {int(k): retrieval_metrics(neighbors, labels, int(k), False, query_labels=query_labels,
                                           empty_class=empty_class, hit_rate=True, class_names=names)
                 for k in ks}
    scores = zero_shot_scores(images, positive, negative)
    val_scores = None
    if val_images is not None and val_labels is not None and len(val_images):
        val_scores = zero_shot_scores(np.asarray(val_images, np.float32), positive, negative)
    classification = classification_report(labels, scores, names,
                                           val_labels=None if val_scores is None else np.asarray(val_labels),
                                           val_scores=val_scores)
    out: dict[str, Any] = {"retrieval": retrieval, "classification": classification,
                           "retrieval_rule": RETRIEVAL_RULE, "score_rule": SCORE_RULE}
    if is_abnormality(names):
        out["abnormality"] = abnormality_summary(classification, labels[:, 0])
    return out


def zero_shot_block(loaded: Any, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    prompts: Prompts, *, ks: Sequence[int] = (3, 5, 10), empty_class: str = "undefined",
                    val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`zero_shot_arrays` for the findings of ``class_names`` that have a prompt, the
    prompts embedded by ``loaded.text_encoder``; ``images (N, D)`` the model's embeddings of the
    evaluated images. Adds ``prompts`` (per finding: prompt, negative, the file's key),
    ``prompts_file`` and ``no_prompt`` (findings left out)."""
    encoder = loaded.text_encoder
    if encoder is None:
        raise DataFormatError("zero-shot evaluation needs a model with a text encoder")
    found = {name: prompts.lookup(name) for name in class_names}
    used = [name for name in class_names if found[name] is not None]
    block: dict[str, Any] = {
        "prompts_file": prompts.source,
        "prompts": {name: {"prompt": found[name][0], "negative": found[name][1], "key": found[name][2]}
                    for name in used},
        "no_prompt": [name for name in class_names if found[name] is None],
    }
    if not used:
        block.update(retrieval=None, classification=None)
        return block
    columns = [list(class_names).index(name) for name in used]
    positive = encoder.embed([found[name][0] for name in used])
    negative = None
    if any(found[name][1] for name in used):
        texts = [found[name][1] for name in used if found[name][1]]
        vectors = iter(encoder.embed(texts))
        negative = np.stack([next(vectors) if found[name][1] else np.full(positive.shape[1], np.nan, np.float32)
                             for name in used])
    labels = np.asarray(labels, np.float32)
    block.update(zero_shot_arrays(
        images, labels[:, columns], used, positive, negative, ks=ks, empty_class=empty_class,
        val_images=val_images, val_labels=None if val_labels is None else np.asarray(val_labels)[:, columns]))
    return block
