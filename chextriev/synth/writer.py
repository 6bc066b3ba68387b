"""Writing a synthetic archive (layout: ARCHITECTURE.md, "Synthetic archive").

Every random choice comes from a generator seeded by ``(seed, patient, study, stream)``, so
the bytes depend only on the configuration (not on the worker count or the order of work).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chextriev.errors import ChextrievError
from chextriev.io.synthetic import MANIFEST_CSV, METADATA_CSV
from chextriev.synth import ids
from chextriev.synth.anatomy import sample_patient
from chextriev.synth.conditions import sample_conditions
from chextriev.synth.dicom_out import write_dicom
from chextriev.synth.phantom import draw_phantom
from chextriev.synth.png import write_png
from chextriev.synth.scene_graph import build_scene_graph
from chextriev.synth.truth import write_truth
from chextriev.vocab import IMAGENOME_FINDINGS, REGIONS

log = logging.getLogger(__name__)

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
SPLIT_SHARES = (("train", 0.70), ("validate", 0.15), ("test", 0.15))
STUDY_COUNT_WEIGHTS = (0.45, 0.27, 0.17, 0.11)  # 1, 2, 3, 4 studies per patient
METADATA_FIELDS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
                   "PatientSex", "PatientAge")
MANIFEST_FIELDS = ("image_id", "path", "patient_id", "study_id", "view", "split", "format", *IMAGENOME_FINDINGS)
# region rows that may be left out of a scene graph (as some real ones are), when unlabelled
DROPPABLE = tuple(i for i, r in enumerate(REGIONS) if r.endswith(("apical zone", "hilar structures")))


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Shares are probabilities per image (per study for normal_share)."""

    out: Path
    patients: int
    seed: int = 0
    size: int = 512
    dicom_share: float = 0.2
    normal_share: float = 0.35
    png16_share: float = 0.3
    ap_share: float = 0.4
    region_dropout: float = 0.02
    workers: int = 1

    def validate(self) -> None:
        if self.patients < 1:
            raise ChextrievError(f"--patients must be at least 1, got {self.patients}")
        if self.size < 64:
            raise ChextrievError(f"--size must be at least 64 pixels, got {self.size}")
        for name in ("dicom_share", "normal_share", "png16_share", "ap_share", "region_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ChextrievError(f"{name.replace('_', '-')} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class ImageJob:
    """One image to draw and write; everything a worker needs."""

    config: SynthConfig
    patient: int
    study: int
    view: str
    conditions: tuple[str, ...]
    split: str


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def plan_jobs(config: SynthConfig) -> list[ImageJob]:
    """Patients, their studies, views, conditions and split (cheap; no drawing)."""
    order = _rng(config.seed, 0, 0, 99).permutation(config.patients)
    splits = np.empty(config.patients, dtype=object)
    start = 0
    for k, (name, share) in enumerate(SPLIT_SHARES):
        stop = config.patients if k == len(SPLIT_SHARES) - 1 else start + round(share * config.patients)
        splits[order[start:stop]] = name
        start = stop
    jobs = []
    for p in range(config.patients):
        rng = _rng(config.seed, p, 0, 1)
        count = 1 + int(rng.choice(len(STUDY_COUNT_WEIGHTS), p=STUDY_COUNT_WEIGHTS))
        previous: tuple[str, ...] | None = None
        for s in range(count):
            view = "AP" if rng.random() < config.ap_share else "PA"
            if rng.random() < config.normal_share:
                conditions: tuple[str, ...] = ()
            else:
                conditions = sample_conditions(rng, previous)
                previous = conditions
            jobs.append(ImageJob(config, p, s, view, conditions, str(splits[p])))
    return jobs


def write_archive(config: SynthConfig, progress: bool = True) -> list[dict]:
    """Generate the archive under ``config.out``; returns the manifest rows."""
    config.validate()
    out = Path(config.out)
    if (out / MANIFEST_CSV).exists():
        raise ChextrievError(f"{out} already holds a synthetic archive ({MANIFEST_CSV}); choose another --out or remove it")
    for sub in ("files", "scene_graph", "truth"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config)
    log.info("drawing %d images of %d patients at %d px into %s", len(jobs), config.patients, config.size, out)
    bar = tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress)
    results = []
    if config.workers > 1:
        with get_context("spawn").Pool(config.workers) as pool:
            for result in pool.imap(make_image, jobs, chunksize=4):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(make_image(job))
            bar.update()
    bar.close()
    _write_csvs(out, results)
    return [r["manifest"] for r in results]


def make_image(job: ImageJob) -> dict:
    """Draw one image and write its image, scene graph and truth files; returns CSV rows."""
    config = job.config
    seed, p, s = config.seed, job.patient, job.study
    patient = sample_patient(_rng(seed, p, 0, 2))
    phantom = draw_phantom(_rng(seed, p, s + 1, 3), patient, job.view, job.conditions, config.size)
    subject, study, image_id = ids.subject_id(seed, p), ids.study_id(seed, p, s), ids.dicom_id(seed, p, s)
    date = ids.study_date(seed, p, s)
    fmt_rng = _rng(seed, p, s + 1, 4)
    folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    (config.out / folder).mkdir(parents=True, exist_ok=True)
    if fmt_rng.random() < config.dicom_share:
        fmt, rel = "dicom", folder / f"{image_id}.dcm"
        write_dicom(config.out / rel, phantom.image, patient_id=subject, study_uid=ids.uid(seed, "study", p, s),
                    series_uid=ids.uid(seed, "series", p, s), sop_uid=ids.uid(seed, "sop", p, s), view=job.view,
                    study_date=date, sex=patient.sex, age=patient.age, monochrome1=bool(fmt_rng.random() < 0.5),
                    intercept=int(fmt_rng.choice([0, -1024])), modality="DX" if fmt_rng.random() < 0.6 else "CR",
                    study_id=study, accession=image_id[:8].upper())
    elif fmt_rng.random() < config.png16_share:
        fmt, rel = "png16", folder / f"{image_id}.png"
        pixels = np.round(phantom.image * 65535).astype(np.uint16)
        write_png(config.out / rel, pixels)
    else:
        fmt, rel = "png8", folder / f"{image_id}.png"
        pixels = np.round(phantom.image * 255).astype(np.uint8)
        write_png(config.out / rel, pixels)

    boxes = phantom.boxes.copy()
    graph_rng = _rng(seed, p, s + 1, 5)
    if graph_rng.random() < config.region_dropout:
        candidates = [r for r in DROPPABLE if not phantom.region_labels[r].any()]
        if candidates:
            boxes[candidates[int(graph_rng.integers(len(candidates)))]] = np.nan
    graph = build_scene_graph(image_id=image_id, patient_id=subject, study_id=study, view=job.view,
                              sex=patient.sex, age=patient.age, study_date=date, boxes=boxes,
                              region_labels=phantom.region_labels, size=config.size, rng=graph_rng)
    (config.out / "scene_graph" / f"{image_id}_SceneGraph.json").write_text(json.dumps(graph))
    masks = (np.stack([lesion.mask for lesion in phantom.lesions]) if phantom.lesions
             else np.zeros((0, config.size, config.size), dtype=bool))
    write_truth(config.out / "truth" / f"{image_id}.npz", boxes=boxes, region_labels=phantom.region_labels,
                findings=[lesion.finding for lesion in phantom.lesions],
                lesion_boxes=np.array([lesion.box for lesion in phantom.lesions], dtype=np.float32).reshape(-1, 4),
                masks=masks, conditions=phantom.conditions)
    manifest = {"image_id": image_id, "path": rel.as_posix(), "patient_id": subject, "study_id": study,
                "view": job.view, "split": job.split, "format": fmt,
                **{name: int(phantom.labels[k]) for k, name in enumerate(IMAGENOME_FINDINGS)}}
    metadata = {"dicom_id": image_id, "subject_id": subject, "study_id": study,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)" if job.view == "PA" else "CHEST (PORTABLE AP)",
                "ViewPosition": job.view, "Rows": config.size, "Columns": config.size, "StudyDate": date,
                "StudyTime": "000000.000", "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": "postero-anterior" if job.view == "PA" else "antero-posterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect" if job.view == "PA" else "Recumbent",
                "PatientSex": patient.sex, "PatientAge": patient.age}
    split = {"dicom_id": image_id, "study_id": study, "subject_id": subject, "split": job.split}
    return {"manifest": manifest, "metadata": metadata, "split": split}


def _write_csvs(out: Path, results: list[dict]) -> None:
    # the manifest last: its presence marks a complete archive
    for name, key, fields in ((METADATA_CSV, "metadata", METADATA_FIELDS),
                              (SPLIT_CSV, "split", ("dicom_id", "study_id", "subject_id", "split")),
                              (MANIFEST_CSV, "manifest", MANIFEST_FIELDS)):
        with open(out / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for result in results:
                writer.writerow(result[key])
