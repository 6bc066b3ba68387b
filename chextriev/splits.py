"""The data split a training run made, saved with its checkpoint, and used again to evaluate it.

``chextriev train`` splits its records patient-disjointly
(:func:`chextriev.training.data.split_records`: the dataset's own split where it gives one,
else a hash of the patient id and the seed, and a validation share of the training patients
when the dataset names none). Many datasets have no official split (the NIH sample, a plain
folder, CheXpert's held-out test patients drawn by its reader), so the split exists only in
that run. :func:`split_entry` records it, by patient, and training saves it in every checkpoint
under :data:`SPLIT_KEY`; ``chextriev evaluate`` applies it to the records it reads
(:func:`apply_split`) before choosing ``--split test``, so it scores the held-out patients the
model never saw, for every reader.

The entry: ``{"made_by", "seed", "rule", "patients": {split: [patient keys]}, "images":
{split: count}}``; a patient key is the record's patient id, or its image id when the patient is
unknown (as the split itself treats it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from chextriev.errors import UnknownNameError
from chextriev.records import Record

log = logging.getLogger(__name__)

#: Top-level checkpoint key of the training run's split.
SPLIT_KEY = "data_split"
#: Share of the evaluated images whose patient the saved split must know for it to be applied
#: (below it the data is taken to be other data than the model was trained on).
MIN_KNOWN_SHARE = 0.5
SPLIT_NAMES = ("train", "validate", "test")


def patient_key(record: Record) -> str:
    """What the split assigns: the patient id, else the image id."""
    return str(record.patient_id or record.image_id)


def split_entry(splits: Mapping[str, Sequence[Record]], seed: int, rule: str = "") -> dict[str, Any]:
    """The saved form of a training run's ``splits`` (``{name: records}``) made with ``seed``."""
    return {
        "made_by": "chextriev train",
        "seed": int(seed),
        "rule": rule or ("the dataset's split where it gives one, else a hash of the patient id and the seed; "
                         "validate: a share of the training patients when the dataset names none"),
        "patients": {name: sorted({patient_key(r) for r in records}) for name, records in splits.items()},
        "images": {name: len(records) for name, records in splits.items()},
    }


def describe_entry(entry: Mapping[str, Any]) -> str:
    """``"chextriev train, seed 0: train 496, validate 56, test 69 images"``."""
    counts = ", ".join(f"{name} {count}" for name, count in entry.get("images", {}).items())
    return f"{entry.get('made_by', 'training')}, seed {entry.get('seed')}: {counts} images"


def apply_split(records: Sequence[Record], entry: Mapping[str, Any] | None) -> tuple[list[Record], str]:
    """``records`` with the split of ``entry`` (a training run's, see :func:`split_entry`), and a
    sentence saying where the splits come from.

    Applied when the entry knows the patients of at least :data:`MIN_KNOWN_SHARE` of the
    records: each record takes its patient's split, and a record of a patient the training run
    never saw gets none (counted in the sentence). Otherwise (no entry, or other data) the
    records keep the dataset's own splits.
    """
    records = list(records)
    own = "the dataset's own splits"
    if not entry or not entry.get("patients"):
        return records, own + "; the checkpoint records no split"
    where = {patient: name for name, patients in entry["patients"].items() for patient in patients}
    known = sum(patient_key(r) in where for r in records)
    if not records or known < MIN_KNOWN_SHARE * len(records):
        log.info("the checkpoint's split knows the patients of %d of %d images: other data, its own splits are used",
                 known, len(records))
        return records, own + f"; the checkpoint's split knows the patients of {known} of {len(records)} images"
    out = [replace(r, split=where.get(patient_key(r))) for r in records]
    unseen = len(records) - known
    note = f"the checkpoint's split ({describe_entry(entry)})"
    if unseen:
        note += f"; {unseen} images of patients the training run never saw are in no split"
    return out, note


def split_counts(records: Sequence[Record]) -> dict[str, int]:
    """``{split: images}`` of ``records`` (``"none"`` for records without one)."""
    counts: dict[str, int] = {}
    for record in records:
        name = record.split or "none"
        counts[name] = counts.get(name, 0) + 1
    return counts


class SplitNotFoundError(UnknownNameError):
    """No image is in the asked split; the message names the splits there are and what to do."""

    def __init__(self, split: str, data: str, counts: Mapping[str, int], source: str):
        present = [name for name in counts if name != "none"]
        super().__init__("split", split, present + ["all"])
        if present:
            listed = ", ".join(f"{name} ({counts[name]} images)" for name in present)
            text = (f"no image of {data} is in split {split!r}. Its splits (from {source}): {listed}"
                    + (f", and {counts['none']} images in none" if counts.get("none") else "")
                    + ". Pass --split with one of them, or --split all for every image.")
        else:
            text = (f"{data} has no {split!r} split: none of its images is in a split (from {source}; the dataset "
                    "names none, e.g. no official list). Train the model with this chextriev (its checkpoint then "
                    "records the split it made, and evaluate uses it), or pass --split all to score every image, "
                    "the training images included (the figures then overstate the model).")
        Exception.__init__(self, text)


def select_split(records: Sequence[Record], split: str, data: str = "the data",
                 source: str = "the dataset's own splits") -> list[Record]:
    """Records of ``split`` (``"all"`` keeps every record); :class:`SplitNotFoundError` otherwise."""
    if split == "all":
        return list(records)
    chosen = [r for r in records if r.split == split]
    if not chosen:
        raise SplitNotFoundError(split, data, split_counts(records), source)
    return chosen
