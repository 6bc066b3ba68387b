"""Pulmonary vessel markings: a random branching tree from each hilum, drawn with PIL at the
working resolution and softened. Markings taper towards the periphery as in real lungs."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from chextriev.synth.frame import BodyFrame


def _branch(rng, u, v, angle, length, width, depth, segments):
    end_u = u + np.cos(angle) * length
    end_v = v + np.sin(angle) * length
    segments.append((u, v, end_u, end_v, width))
    if depth == 0:
        return
    for turn in (-1, 1):
        _branch(
            rng, end_u, end_v,
            angle + turn * rng.uniform(0.25, 0.6) + rng.normal(0, 0.08),
            length * rng.uniform(0.62, 0.8), width * 0.7, depth - 1, segments,
        )


def vessel_map(n: int, frame: BodyFrame, rng: np.random.Generator, blur: float = 0.6) -> np.ndarray:
    """(n, n) float32 vessel density in [0, 1] (not yet restricted to the lungs).

    blur: extra Gaussian sigma in pixels (edema makes vessels indistinct).
    """
    segments: list = []
    for side in (-1, 1):
        hilum_u, hilum_v = side * 0.24, 0.42
        # trunks fanning up, out and down from the hilum; angles in (u, v) space, v down
        for base in (-2.2, -1.6, -0.9, -0.3, 0.35, 0.9, 1.35):
            angle = base + rng.normal(0, 0.12)
            angle = angle if side > 0 else np.pi - angle
            _branch(rng, hilum_u, hilum_v, angle, rng.uniform(0.13, 0.2), 3.2, 4, segments)
    canvas = Image.new("F", (n, n), 0.0)
    draw = ImageDraw.Draw(canvas)
    scale = n / 256.0
    seg = np.array(segments, dtype=np.float64)
    x0, y0 = frame.to_image(seg[:, 0], seg[:, 1])
    x1, y1 = frame.to_image(seg[:, 2], seg[:, 3])
    ends = (np.stack([x0, y0, x1, y1], axis=1) * n).tolist()
    for (ax, ay, bx, by), width in zip(ends, seg[:, 4].tolist()):
        draw.line([(ax, ay), (bx, by)], fill=min(1.0, 0.35 + width / 4), width=max(1, round(width * scale)))
    out = np.asarray(canvas, dtype=np.float32)
    return gaussian_filter(out, sigma=(0.5 + blur) * scale).astype(np.float32)
