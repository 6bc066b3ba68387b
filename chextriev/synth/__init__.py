"""The synthetic archive: frontal chest radiograph phantoms with ground truth from the drawing.

``chextriev synth`` writes a MIMIC-CXR-JPG / Chest ImaGenome style archive (see
ARCHITECTURE.md, "Synthetic archive"); :func:`chextriev.synth.archive.read_archive` reads it
back as :class:`~chextriev.records.Record` objects and
:func:`chextriev.synth.archive.load_lesions` gives the per-lesion boxes and masks.
"""

from chextriev.synth.archive import Lesion, load_lesions, read_archive
from chextriev.synth.writer import SynthConfig, write_archive

__all__ = ["Lesion", "SynthConfig", "load_lesions", "read_archive", "write_archive"]
