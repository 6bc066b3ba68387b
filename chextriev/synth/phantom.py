"""One synthetic radiograph with its ground truth: anatomy + lesions -> image, boxes, labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chextriev.synth.anatomy import PatientAnatomy, draw_anatomy, sample_pose
from chextriev.synth.lesions import draw_lesions, plan_study
from chextriev.synth.regions import bbox, lesion_regions, region_boxes, region_masks
from chextriev.synth.render import attenuation, expose, upsample, working_size
from chextriev.synth.vessels import vessel_map
from chextriev.vocab import IMAGENOME_FINDINGS, NUM_REGIONS


@dataclass
class Lesion:
    """One lesion of one finding: box (x1, y1, x2, y2) float pixels, mask (H, W) bool."""

    finding: str
    box: tuple[float, float, float, float]
    mask: np.ndarray


@dataclass
class Phantom:
    """A drawn radiograph: image (H, W) float32 in [0, 1] bright = dense, boxes (18, 4),
    region_labels (18, 9) and labels (9,) over IMAGENOME_FINDINGS, and its lesions."""

    image: np.ndarray
    boxes: np.ndarray
    region_labels: np.ndarray
    labels: np.ndarray
    lesions: list[Lesion]
    conditions: tuple[str, ...]


def draw_phantom(rng: np.random.Generator, patient: PatientAnatomy, view: str,
                 conditions: tuple[str, ...], size: int) -> Phantom:
    """Draw one study of ``patient`` showing ``conditions`` at ``size`` x ``size`` pixels."""
    n = working_size(size)
    pose = sample_pose(rng, patient, view)
    plan = plan_study(rng, conditions)
    anat = draw_anatomy(n, patient, pose, heart_scale=plan.heart_scale, dome_shift=plan.dome_shift)
    vessels = vessel_map(n, pose.frame, rng, blur=plan.vessel_blur)
    density, drawn = draw_lesions(plan, anat, vessels, rng)
    image = expose(attenuation(anat, vessels, density, patient.soft_tissue), pose, size, rng)

    # ground truth at full resolution, from the same maps the image was drawn with
    full = {name: upsample(getattr(anat, name), size) > 0.5
            for name in ("lung_right", "lung_left", "heart", "mediastinum", "trachea")}
    v_full = upsample(anat.v, size)
    masks = region_masks(full["lung_right"], full["lung_left"], full["heart"], full["mediastinum"],
                         full["trachea"], v_full)
    boxes = region_boxes(masks)
    areas = np.array([int(m.sum()) if m is not None else 0 for m in masks])
    region_labels = np.zeros((NUM_REGIONS, len(IMAGENOME_FINDINGS)), dtype=np.float32)
    clip = {"right": full["lung_right"], "left": full["lung_left"], "heart": full["heart"]}
    lesions: list[Lesion] = []
    for item in drawn:
        mask = (upsample(item.soft, size) > item.threshold) & clip[item.where]
        box = bbox(mask)
        regions = lesion_regions(mask, item.where, boxes, areas)
        if box is None or not regions:
            continue
        for finding in item.findings:
            f = IMAGENOME_FINDINGS.index(finding)
            region_labels[regions, f] = 1.0
            lesions.append(Lesion(finding, tuple(float(x) for x in box), mask))
    labels = region_labels.max(axis=0)
    return Phantom(image, boxes, region_labels, labels, lesions, conditions)
