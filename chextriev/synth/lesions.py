"""Drawing the findings into the lung maps.

Each condition becomes one or more :class:`DrawnLesion` (its findings, the lung it lies in,
and a soft map at working resolution that defines its mask) and adds to a
:class:`~chextriev.synth.render.LesionDensity` (what the radiograph shows). Sizes,
intensities and places vary, so some findings are subtle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from chextriev.synth.anatomy import AnatomyMaps, apex_curve, diaphragm_curve, lateral_edge, ramp
from chextriev.synth.conditions import CONDITION_FINDINGS, FLUID_OVERLOAD
from chextriev.synth.render import LesionDensity

f32 = np.float32


@dataclass
class DrawnLesion:
    """One lesion as drawn: findings it is labelled with, where it lies, its soft map.

    where: "right" / "left" (a lung; the mask is clipped to it) or "heart".
    soft: (n, n) float32 at working resolution; the mask is ``soft > threshold``.
    """

    findings: tuple[str, ...]
    where: str
    soft: np.ndarray
    threshold: float = 0.5


@dataclass
class StudyPlan:
    """Per-condition drawing parameters that the anatomy needs before it is drawn."""

    conditions: tuple[str, ...]
    heart_scale: float = 1.0
    dome_shift: tuple[float, float] = (0.0, 0.0)
    vessel_blur: float = 0.6
    params: dict = field(default_factory=dict)


SIDES = {"right": -1, "left": 1}


def plan_study(rng: np.random.Generator, conditions: tuple[str, ...]) -> StudyPlan:
    """Sample each condition's side, place, size and intensity."""
    plan = StudyPlan(conditions=conditions)
    shift = [0.0, 0.0]
    for name in conditions:
        side = "right" if rng.random() < 0.55 else "left"
        if name == "cardiomegaly":
            plan.heart_scale = float(rng.uniform(1.22, 1.5))
            plan.params[name] = {}
        elif name == "atelectasis":
            p = {"side": side, "v": float(rng.uniform(0.55, 0.85)), "a": float(rng.uniform(0.35, 0.6)),
                 "ru": float(rng.uniform(0.16, 0.32)), "rv": float(rng.uniform(0.02, 0.045)),
                 "angle": float(rng.normal(0, 0.18)), "intensity": float(rng.uniform(0.55, 0.95))}
            shift[0 if side == "right" else 1] -= float(rng.uniform(0.02, 0.07))
            plan.params[name] = p
        elif name == "effusion":
            sides = ("right", "left") if rng.random() < 0.35 else (side,)
            plan.params[name] = {"sides": sides,
                                 "height": [float(rng.uniform(0.1, 0.34)) for _ in sides],
                                 "meniscus": [float(rng.uniform(0.3, 0.8)) for _ in sides],
                                 "intensity": float(rng.uniform(0.65, 0.95))}
        elif name == "edema":
            plan.vessel_blur = float(rng.uniform(1.2, 2.2))
            plan.params[name] = {"intensity": float(rng.uniform(0.28, 0.55)),
                                 "spread": float(rng.uniform(0.3, 0.45)),
                                 "kerley": bool(rng.random() < 0.6)}
        elif name == "pneumothorax":
            plan.params[name] = {"side": side, "collapse": float(rng.uniform(0.07, 0.25))}
        elif name == "opacity":
            count = 1 if rng.random() < 0.7 else 2
            plan.params[name] = {"blobs": [_place(rng, side if k == 0 else _other(side, rng), 0.08, 0.2)
                                           for k in range(count)],
                                 "intensity": float(rng.uniform(0.22, 0.5))}
        elif name == "consolidation":
            p = _place(rng, side, 0.1, 0.2)
            p["intensity"] = float(rng.uniform(0.6, 0.92))
            p["fissure"] = bool(rng.random() < 0.5)
            plan.params[name] = p
        elif name == "pneumonia":
            centre = _place(rng, side, 0.1, 0.16, lower=True)
            patches = [{"side": side, "a": centre["a"] + float(rng.normal(0, 0.09)),
                        "v": centre["v"] + float(rng.normal(0, 0.07)),
                        "ru": float(rng.uniform(0.04, 0.09)), "rv": float(rng.uniform(0.04, 0.08)),
                        "angle": 0.0} for _ in range(int(rng.integers(3, 7)))]
            plan.params[name] = {"patches": patches, "intensity": float(rng.uniform(0.4, 0.75))}
    plan.dome_shift = (shift[0], shift[1])
    return plan


def _other(side: str, rng) -> str:
    return side if rng.random() < 0.5 else ("left" if side == "right" else "right")


def _place(rng, side: str, rmin: float, rmax: float, lower: bool = False) -> dict:
    v = float(rng.uniform(0.45, 0.85) if lower else rng.uniform(0.12, 0.85))
    return {"side": side, "v": v, "a": float(rng.uniform(0.3, 0.72)),
            "ru": float(rng.uniform(rmin, rmax)), "rv": float(rng.uniform(rmin, rmax)),
            "angle": float(rng.uniform(-0.6, 0.6))}


def _ellipse_q(u, v, side: int, p: dict) -> np.ndarray:
    """Squared normalised elliptical radius around a placed lesion."""
    du = u * f32(side) - f32(p["a"])
    dv = v - f32(p["v"])
    c, s = f32(np.cos(p["angle"])), f32(np.sin(p["angle"]))
    x = (du * c + dv * s) / f32(p["ru"])
    y = (dv * c - du * s) / f32(p["rv"])
    return x * x + y * y


def texture(n: int, rng: np.random.Generator, cells: int = 20) -> np.ndarray:
    """Smooth random texture (n, n) float32 in [0, 1]."""
    small = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((n, n), Image.BICUBIC), dtype=np.float32).clip(0, 1)


def draw_lesions(plan: StudyPlan, anat: AnatomyMaps, vessels: np.ndarray,
                 rng: np.random.Generator) -> tuple[LesionDensity, list[DrawnLesion]]:
    """Lesion density maps and the lesions, for the conditions of ``plan``."""
    u, v = anat.u, anat.v
    n = u.shape[0]
    zeros = np.zeros_like(u)
    fill, extra_air, no_mark, lines = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    lungs = {"right": anat.lung_right, "left": anat.lung_left}
    tex = texture(n, rng)
    drawn: list[DrawnLesion] = []
    findings_of = dict(CONDITION_FINDINGS)
    if "edema" in plan.conditions and "cardiomegaly" in plan.conditions:
        findings_of["edema"] = findings_of["edema"] + (FLUID_OVERLOAD,)

    for name in plan.conditions:
        p = plan.params[name]
        found = findings_of[name]
        if name == "cardiomegaly":
            drawn.append(DrawnLesion(found, "heart", anat.heart))
        elif name == "opacity":
            for blob in p["blobs"]:
                side = blob["side"]
                soft = np.exp(-_ellipse_q(u, v, SIDES[side], blob)) * (f32(0.55) + f32(0.45) * tex)
                fill += f32(p["intensity"]) * soft * lungs[side]
                drawn.append(DrawnLesion(found, side, soft * lungs[side], 0.35))
        elif name == "consolidation":
            side = p["side"]
            q = _ellipse_q(u, v, SIDES[side], p) + f32(0.5) * (tex - f32(0.5))
            soft = ramp(f32(1.0) - q, 0.15)
            if p["fissure"]:  # lower-lobe consolidation bounded above by a fissure
                soft *= ramp(v - f32(p["v"] - 0.3 * p["rv"]), 0.01)
            bronchograms = np.clip(vessels * f32(2.5), 0.0, 1.0)
            fill += f32(p["intensity"]) * soft * (f32(1.0) - f32(0.55) * bronchograms) * lungs[side]
            drawn.append(DrawnLesion(found, side, soft * lungs[side], 0.5))
        elif name == "pneumonia":
            soft = zeros.copy()
            for patch in p["patches"]:
                soft = np.maximum(soft, np.exp(-_ellipse_q(u, v, SIDES[patch["side"]], patch)))
            soft *= np.clip(f32(1.6) * tex - f32(0.2), 0.0, 1.0)  # mottled
            side = p["patches"][0]["side"]
            fill += f32(p["intensity"]) * soft * lungs[side]
            drawn.append(DrawnLesion(found, side, soft * lungs[side], 0.3))
        elif name == "atelectasis":
            side = p["side"]
            soft = ramp(f32(1.0) - _ellipse_q(u, v, SIDES[side], p), 0.35)
            fill += f32(p["intensity"]) * soft * lungs[side]
            drawn.append(DrawnLesion(found, side, soft * lungs[side], 0.5))
        elif name == "effusion":
            for side, height, meniscus in zip(p["sides"], p["height"], p["meniscus"]):
                a = u * f32(SIDES[side])
                dome = anat.dome[0 if side == "right" else 1]
                level = f32(diaphragm_curve(np.float32(0.9), dome)) - f32(height)
                top = level - f32(meniscus * height) * np.clip((a - f32(0.4)) / f32(0.5), 0.0, 1.0) ** 2
                soft = ramp(v - top, 0.03)
                dense = f32(p["intensity"]) * (f32(0.8) + f32(0.2) * np.clip((v - top) / f32(0.15), 0, 1))
                fill = np.maximum(fill, dense * soft * lungs[side])
                drawn.append(DrawnLesion(found, side, soft * lungs[side], 0.5))
        elif name == "edema":
            for side in ("right", "left"):
                a = u * f32(SIDES[side])
                d2 = ((a - f32(0.28)) / f32(p["spread"] * 1.2)) ** 2 + ((v - f32(0.5)) / f32(p["spread"] * 1.1)) ** 2
                soft = np.exp(-d2) * (f32(0.7) + f32(0.3) * tex)
                fill += f32(p["intensity"]) * soft * lungs[side]
                if p["kerley"]:
                    band = ramp(a - f32(0.62), 0.04) * ramp(v - f32(0.68), 0.04) * ramp(f32(0.98) - v, 0.03)
                    t = v / f32(0.028)
                    lines += f32(0.05) * band * np.clip(1.0 - np.abs(t - np.floor(t) - f32(0.5)) / f32(0.12), 0, 1) * lungs[side]
                drawn.append(DrawnLesion(found, side, soft * lungs[side], 0.4))
        elif name == "pneumothorax":
            side = p["side"]
            sign = f32(SIDES[side])
            k = f32(1.0 - p["collapse"])
            hilum_a, hilum_v = f32(0.25), f32(0.55)
            a = u * sign
            a2 = hilum_a + (a - hilum_a) / k
            v2 = hilum_v + (v - hilum_v) / k
            eps = 0.02
            inner = ramp(v2 - apex_curve(a2), eps) * ramp(lateral_edge(v2) - a2, eps)
            inner *= ramp(diaphragm_curve(a2, anat.dome[0 if side == "right" else 1]) - v2, eps)
            space = lungs[side] * (f32(1.0) - inner)
            no_mark = np.maximum(no_mark, space)
            extra_air += f32(0.6) * space
            edge = np.clip(1.0 - np.abs(inner - f32(0.5)) * f32(2.0), 0.0, 1.0) * lungs[side]
            lines += f32(0.09) * edge
            drawn.append(DrawnLesion(found, side, space, 0.5))
    fill = np.clip(fill, 0.0, 0.97)
    return LesionDensity(fill=fill, extra_air=extra_air, no_markings=no_mark, lines=lines), drawn
