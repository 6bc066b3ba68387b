"""The body frame: body coordinates (u, v) <-> normalised image coordinates (X, Y).

Body coordinates: ``u`` runs across the chest (0 = midline, +-0.9 = the lateral lung edges;
u < 0 is the image left = the patient's right, radiological convention), ``v`` runs down
(0 = lung apices, about 1 = costophrenic angles). Image coordinates are in ``[0, 1]``.
Patient size, position and rotation live in the frame; every structure is drawn in body
coordinates, so it moves with the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates: X (1, size) and Y (size, 1), float32 in (0, 1)."""
    centres = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    return centres[None, :], centres[:, None]


@dataclass(frozen=True)
class BodyFrame:
    """Where the chest lies in the image.

    cx, cy: image position of the body origin (midline at apex level); sx: image width of one
    body unit across (half the thorax); sy: image height of one body unit down (apex to
    costophrenic angle); theta: in-plane rotation in radians.
    """

    cx: float
    cy: float
    sx: float
    sy: float
    theta: float

    def to_body(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates of every pixel centre: u, v of shape (size, size) float32."""
        x, y = pixel_grid(size)
        c, s = np.float32(np.cos(self.theta)), np.float32(np.sin(self.theta))
        dx = x - np.float32(self.cx)
        dy = y - np.float32(self.cy)
        u = (dx * c + dy * s) / np.float32(self.sx)
        v = (dy * c - dx * s) / np.float32(self.sy)
        return u.astype(np.float32), v.astype(np.float32)

    def to_image(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image coordinates (X, Y) of body points (u, v) (any matching shapes)."""
        c, s = np.cos(self.theta), np.sin(self.theta)
        dx = np.asarray(u) * self.sx
        dy = np.asarray(v) * self.sy
        return self.cx + dx * c - dy * s, self.cy + dx * s + dy * c
