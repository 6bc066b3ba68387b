"""Composite the anatomy and the lesions into a radiograph.

Attenuation model: soft tissue thickness minus lung air plus bone plus lesion density; the
detector brightness is ``1 - exp(-gain * attenuation)`` (bright = dense), then a window,
a gamma and quantum noise. Smooth parts are drawn at a working resolution (half the output
for outputs of 256 px and more) and upsampled; noise is added at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from chextriev.synth.anatomy import AnatomyMaps, StudyPose


def working_size(size: int) -> int:
    """Resolution at which smooth structures are drawn for an output of ``size`` pixels."""
    return size // 2 if size >= 256 else size


def upsample(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (n, n) float32 map to (size, size)."""
    if array.shape[0] == size:
        return array
    return np.asarray(Image.fromarray(array, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


@dataclass
class LesionDensity:
    """What the lesions add to the drawing, all (n, n) float32 at working resolution."""

    fill: np.ndarray  # fraction of lung air replaced by fluid/tissue, 0..1
    extra_air: np.ndarray  # extra air (pneumothorax), attenuation removed
    no_markings: np.ndarray  # 1 where the vessel markings are absent (pneumothorax space)
    lines: np.ndarray  # thin dense lines (pleural line, Kerley lines, plate atelectasis)


def attenuation(anat: AnatomyMaps, vessels: np.ndarray, lesions: LesionDensity, soft_tissue: float) -> np.ndarray:
    """(n, n) float32 total attenuation (about 0 = air outside the body, 1 = soft tissue)."""
    f32 = np.float32
    a = anat.body * f32(0.8 * soft_tissue)
    a += anat.extra * anat.body
    air = anat.lung_air * (f32(1.0) - lesions.fill)
    a -= f32(0.64) * air
    a -= f32(0.25) * lesions.extra_air
    lungs = anat.lung_right + anat.lung_left
    a += f32(0.2) * vessels * lungs * (f32(1.0) - lesions.no_markings) * (f32(1.0) - f32(0.7) * lesions.fill)
    a += (f32(0.12) * anat.mediastinum + f32(0.3) * anat.heart) * anat.body
    a -= f32(0.3) * anat.trachea
    a += anat.bone * np.clip(anat.body * f32(3.0), 0.0, 1.0)
    a += lesions.lines
    return a


def expose(att: np.ndarray, pose: StudyPose, size: int, rng: np.random.Generator) -> np.ndarray:
    """Detector image (size, size) float32 in [0, 1], bright = dense, with noise."""
    f32 = np.float32
    att = upsample(att, size)
    img = f32(1.0) - np.exp(-f32(pose.gain) * np.clip(att, 0.0, None))
    img = (img - f32(pose.window_lo)) / f32(pose.window_hi - pose.window_lo)
    img = np.clip(img, 0.0, 1.0) ** f32(pose.gamma)
    noise = rng.standard_normal((size, size), dtype=np.float32)
    img += noise * f32(pose.noise) * (f32(0.5) + img)
    return np.clip(img, 0.0, 1.0)
