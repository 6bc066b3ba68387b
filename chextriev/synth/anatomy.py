"""Normal chest anatomy in body coordinates: parameters per patient and per study, and the
soft (anti-aliased) maps of every structure at the working resolution.

All maps are float32 ``(n, n)`` in ``[0, 1]`` (1 = inside the structure) unless said
otherwise; see :mod:`chextriev.synth.frame` for the coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chextriev.synth.frame import BodyFrame


def ramp(x: np.ndarray, eps: float) -> np.ndarray:
    """Soft step: 0 below -eps, 1 above +eps, linear between (float32)."""
    return np.clip(x * np.float32(0.5 / eps) + np.float32(0.5), 0.0, 1.0)


@dataclass(frozen=True)
class PatientAnatomy:
    """What stays the same across one patient's studies."""

    sex: str  # "M" or "F"
    age: int
    body_width: float  # body half-width in body units (soft tissue outline)
    thorax_sx: float  # image width of one body unit
    lung_sy: float  # image height of one body unit
    heart_rx: float  # heart half-width (body units); sets the cardiothoracic ratio
    heart_ry: float
    heart_cx: float
    dome_right: float  # v of the right hemidiaphragm dome top
    dome_left: float
    rib_spacing: float
    rib_phase: float
    spine_shift: float
    soft_tissue: float  # soft-tissue attenuation scale (body habitus)
    breast: float  # breast shadow strength (0 for most men)


@dataclass(frozen=True)
class StudyPose:
    """What changes from one study to the next: position, rotation, inspiration, exposure."""

    frame: BodyFrame
    view: str  # "PA" or "AP"
    inspiration: float  # multiplies the lung height
    gain: float  # exposure: attenuation -> brightness
    window_lo: float
    window_hi: float
    gamma: float
    noise: float
    gastric_bubble: float


def sample_patient(rng: np.random.Generator) -> PatientAnatomy:
    sex = "F" if rng.random() < 0.48 else "M"
    age = int(np.clip(rng.normal(62, 17), 18, 98))
    size = rng.normal(0.0, 1.0)
    return PatientAnatomy(
        sex=sex,
        age=age,
        body_width=float(np.clip(1.22 + 0.07 * size, 1.08, 1.45)),
        thorax_sx=float(np.clip(0.36 + 0.02 * size + rng.normal(0, 0.01), 0.31, 0.42)),
        lung_sy=float(rng.uniform(0.54, 0.63)),
        heart_rx=float(rng.uniform(0.34, 0.43)),
        heart_ry=float(rng.uniform(0.19, 0.23)),
        heart_cx=float(rng.uniform(0.09, 0.15)),
        dome_right=float(rng.uniform(0.80, 0.86)),
        dome_left=float(rng.uniform(0.84, 0.90)),
        rib_spacing=float(rng.uniform(0.095, 0.115)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        spine_shift=float(rng.normal(0, 0.01)),
        soft_tissue=float(np.clip(1.0 + 0.12 * size, 0.8, 1.3)),
        breast=float(rng.uniform(0.08, 0.2) if sex == "F" else (rng.uniform(0.0, 0.05) if rng.random() < 0.2 else 0.0)),
    )


def sample_pose(rng: np.random.Generator, patient: PatientAnatomy, view: str) -> StudyPose:
    inspiration = float(rng.uniform(0.92, 1.04) if view == "PA" else rng.uniform(0.86, 0.98))
    frame = BodyFrame(
        cx=float(0.5 + rng.normal(0, 0.018)),
        cy=float(0.15 + rng.normal(0, 0.015)),
        sx=patient.thorax_sx * float(rng.uniform(0.97, 1.03)),
        sy=patient.lung_sy * inspiration,
        theta=float(np.deg2rad(rng.normal(0, 1.8))),
    )
    gain = float(rng.uniform(1.3, 2.1))
    return StudyPose(
        frame=frame,
        view=view,
        inspiration=inspiration,
        gain=gain,
        window_lo=float(rng.uniform(0.0, 0.08)),
        window_hi=float(rng.uniform(0.86, 1.0)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.006, 0.025)),
        gastric_bubble=float(rng.uniform(0.0, 0.35) if rng.random() < 0.6 else 0.0),
    )


@dataclass
class AnatomyMaps:
    """Soft maps of the anatomy at working resolution n (all (n, n) float32)."""

    u: np.ndarray
    v: np.ndarray
    body: np.ndarray  # soft-tissue thickness, 0..1
    lung_right: np.ndarray  # patient right lung (image left), without the heart
    lung_left: np.ndarray
    lung_air: np.ndarray  # air thickness profile within both lungs
    heart: np.ndarray
    mediastinum: np.ndarray  # upper mediastinal soft tissue band incl. aortic knob
    trachea: np.ndarray  # trachea + main bronchi (air)
    bone: np.ndarray  # ribs, clavicles, spine (extra attenuation)
    extra: np.ndarray  # breasts, gastric bubble (signed attenuation)
    # geometry of the lungs, used by lesions (body units)
    dome: tuple[float, float]  # v of the diaphragm dome top (right, left)
    carina_v: float


def lateral_edge(v: np.ndarray) -> np.ndarray:
    """Lateral lung boundary |u| as a function of v (body units)."""
    return np.float32(0.6) + np.float32(0.3) * np.sqrt(np.clip(v / np.float32(0.5), 0.0, 1.0))


def apex_curve(a: np.ndarray) -> np.ndarray:
    """v of the lung top as a function of lateral distance a = |u|."""
    return np.float32(0.28) * ((a - np.float32(0.42)) / np.float32(0.38)) ** 2


def diaphragm_curve(a: np.ndarray, dome: float) -> np.ndarray:
    """v of the hemidiaphragm as a function of a = |u|; the dome top is at a = 0.42."""
    return np.float32(dome) + np.float32(0.85) * (a - np.float32(0.42)) ** 2


def heart_map(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float, eps: float) -> np.ndarray:
    q = np.sqrt(((u - np.float32(cx)) / np.float32(rx)) ** 2 + ((v - np.float32(cy)) / np.float32(ry)) ** 2)
    return ramp(np.float32(1.0) - q, eps)


def lung_map(u, v, side: int, dome: float, heart, medial: np.ndarray, eps: float) -> np.ndarray:
    """Soft lung mask of one side (side=-1: patient right = image left; +1: patient left)."""
    a = u * np.float32(side)
    m = ramp(v - apex_curve(a), eps)
    m *= ramp(lateral_edge(v) - a, eps)
    m *= ramp(diaphragm_curve(a, dome) - v, eps)
    m *= ramp(a - medial, eps)
    m *= np.float32(1.0) - heart
    return m


def draw_anatomy(n: int, patient: PatientAnatomy, pose: StudyPose, heart_scale: float = 1.0,
                 dome_shift: tuple[float, float] = (0.0, 0.0)) -> AnatomyMaps:
    """All anatomy maps at working resolution ``n`` (the image is n x n).

    heart_scale enlarges the heart (cardiomegaly); dome_shift raises a hemidiaphragm (negative
    = higher; volume loss) per side (right, left).
    """
    u, v = pose.frame.to_body(n)
    eps = 1.2 / (n * pose.frame.sx)  # about one pixel in body units across
    f32 = np.float32

    # soft tissue outline: wide chest, shoulders, neck
    width = f32(patient.body_width) * (f32(0.36) + f32(0.64) * np.clip((v + f32(0.42)) / f32(0.3), 0, 1) ** f32(0.35))
    body = np.sqrt(np.clip(1.0 - (u / width) ** 2, 0.0, 1.0)).astype(np.float32)

    # heart: the ellipse grows mostly to the patient's left
    rx = patient.heart_rx * heart_scale * (1.06 if pose.view == "AP" else 1.0)
    ry = patient.heart_ry * (1.0 + 0.35 * (heart_scale - 1.0))
    hcx = patient.heart_cx + 0.55 * (rx - patient.heart_rx)
    hcy = 1.0 - 0.72 * ry
    heart = heart_map(u, v, hcx, hcy, rx, ry, eps)

    # upper mediastinum band + aortic knob; its half-width widens slightly downwards
    mid = f32(patient.spine_shift)
    med_half = f32(0.095) + f32(0.03) * np.clip(v, 0, 1)
    mediastinum = ramp(med_half - np.abs(u - mid), eps) * ramp(hcy - v, eps)
    knob = heart_map(u, v, 0.12, 0.27, 0.075, 0.07, eps)
    mediastinum = np.maximum(mediastinum, knob)

    dome_r = patient.dome_right + dome_shift[0]
    dome_l = patient.dome_left + dome_shift[1]
    medial_r = med_half - mid  # a = -u, medial boundary at |u| = half-width
    medial_l = np.maximum(med_half + mid, f32(0.0))
    lung_r = lung_map(u, v, -1, dome_r, heart, medial_r, eps)
    lung_l = lung_map(u, v, +1, dome_l, heart, medial_l, eps)
    lung_l *= f32(1.0) - knob
    # the heart is seen only above the diaphragm (below it, all is soft tissue)
    heart = heart * ramp(f32(0.5 * (dome_r + dome_l) + 0.05) - v, 0.03)
    a = np.abs(u)
    air_profile = f32(0.55) + f32(0.45) * np.sqrt(np.clip(1.0 - ((a - f32(0.5)) / f32(0.48)) ** 2, 0.0, 1.0))
    lung_air = (lung_r + lung_l) * air_profile

    # trachea and main bronchi (air columns)
    carina_v = 0.3
    trachea = ramp(f32(0.042) - np.abs(u - mid * 0.5), eps) * ramp(f32(carina_v) - v, eps)
    for side in (-1, 1):
        # bronchus from carina (0, carina) to the hilum (side*0.22, 0.42)
        t = np.clip((v - f32(carina_v)) / f32(0.12), 0.0, 1.0)
        centre = f32(side * 0.22) * t
        trachea = np.maximum(trachea, ramp(f32(0.03) - np.abs(u - centre), eps) * (v > carina_v) * (v < carina_v + 0.12))

    bone = _bones(u, v, patient, pose, eps)

    extra = np.zeros_like(u)
    if patient.breast > 0:
        for side in (-1, 1):
            q = ((u - f32(side * 0.62)) / f32(0.42)) ** 2 + ((v - f32(1.0)) / f32(0.3)) ** 2
            extra += f32(patient.breast) * np.clip(1.0 - q, 0.0, 1.0) * ramp(v - f32(0.85), 0.08)
    if pose.gastric_bubble > 0:
        q = ((u - f32(0.42)) / f32(0.11)) ** 2 + ((v - f32(dome_l + 0.1)) / f32(0.06)) ** 2
        extra -= f32(pose.gastric_bubble) * ramp(1.0 - q, 0.2) * (v > dome_l + 0.055)

    return AnatomyMaps(
        u=u, v=v, body=body, lung_right=lung_r, lung_left=lung_l, lung_air=lung_air,
        heart=heart, mediastinum=mediastinum, trachea=trachea, bone=bone, extra=extra,
        dome=(dome_r, dome_l), carina_v=carina_v,
    )


def _pulse(phase: np.ndarray, width: float) -> np.ndarray:
    """Periodic band profile in [0, 1]: 1 at the band centre, 0 beyond half-width."""
    t = phase - np.floor(phase) - np.float32(0.5)
    return np.clip(1.0 - np.abs(t) / np.float32(width), 0.0, 1.0) ** np.float32(0.5)


def _bones(u, v, patient: PatientAnatomy, pose: StudyPose, eps: float) -> np.ndarray:
    f32 = np.float32
    a = np.abs(u - f32(patient.spine_shift))
    # posterior ribs: rise laterally from the spine, then turn down at the chest wall
    curve = f32(-0.2) * a + f32(1.4) * np.clip(a - f32(0.62), 0, None) ** 2
    phase = (v - curve) / f32(patient.rib_spacing) + f32(patient.rib_phase)
    posterior = _pulse(phase, 0.24)
    within = ramp(lateral_edge(np.clip(v, 0.05, None)) + f32(0.08) - a, 0.03)
    within *= ramp(a - f32(0.1), 0.03) * ramp(v - curve + f32(0.12), 0.03) * ramp(f32(1.05) - v + curve, 0.08)
    ribs = posterior * within * f32(0.14)
    # anterior ribs: fainter, sloping down towards the sternum
    curve2 = f32(0.32) * (f32(0.95) - a)
    phase2 = (v - curve2) / f32(patient.rib_spacing * 1.25) + f32(patient.rib_phase * 0.7)
    anterior = _pulse(phase2, 0.2) * ramp(a - f32(0.25), 0.05) * ramp(f32(0.95) - a, 0.05)
    anterior *= ramp(v - f32(0.05), 0.05) * ramp(f32(0.85) - v, 0.05)
    ribs += anterior * f32(0.06)
    # clavicles
    vc = f32(-0.02) - f32(0.17) * (a - f32(0.1)) + f32(0.3) * (a - f32(0.55)) ** 2 - f32(0.06)
    clav = np.clip(1.0 - ((v - vc) / f32(0.034)) ** 2, 0.0, 1.0) * ramp(a - f32(0.07), 0.02) * ramp(f32(0.88) - a, 0.04)
    # spine: vertebral bodies with disc spaces, pedicles as faint bright rims
    spine_u = u - f32(patient.spine_shift)
    column = np.clip(1.0 - (spine_u / f32(0.085)) ** 2, 0.0, 1.0)
    bodies = f32(0.55) + f32(0.45) * _pulse(v / f32(0.09), 0.42)
    pedicles = np.clip(1.0 - ((np.abs(spine_u) - f32(0.06)) / f32(0.012)) ** 2, 0, 1) * _pulse(v / f32(0.09) + f32(0.25), 0.2)
    spine = column * bodies * f32(0.12) + pedicles * f32(0.04)
    return ribs + clav * f32(0.2) + spine
