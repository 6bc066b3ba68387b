"""Per-lesion truth of a synthetic archive: the boxes and masks of what was drawn (the records
themselves are read by :func:`chextriev.io.synthetic.read_archive`, like any other archive).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chextriev.errors import DataFormatError
from chextriev.synth.truth import read_truth


@dataclass
class Lesion:
    """One drawn lesion: finding (ImaGenome name), box (x1, y1, x2, y2) float pixels,
    mask (H, W) bool at the image's resolution."""

    finding: str
    box: tuple[float, float, float, float]
    mask: np.ndarray


def load_lesions(directory: str | Path, image_id: str) -> list[Lesion]:
    """The drawn lesions of one image (empty for a normal image)."""
    path = Path(directory) / "truth" / f"{image_id}.npz"
    if not path.exists():
        raise DataFormatError(f"no truth file for image {image_id!r} at {path}")
    truth = read_truth(path)
    return [Lesion(str(f), tuple(float(x) for x in box), mask)
            for f, box, mask in zip(truth["lesion_findings"], truth["lesion_boxes"], truth["lesion_masks"])]
