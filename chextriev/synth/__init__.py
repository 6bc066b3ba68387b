"""The synthetic archive: frontal chest radiograph phantoms with ground truth from the drawing.

``chextriev synth`` writes a MIMIC-CXR-JPG / Chest ImaGenome style archive (see
ARCHITECTURE.md, "Synthetic archive"); :func:`chextriev.io.synthetic.read_archive` (a reader
like any other; also ``chextriev.synth.read_archive``) reads it back as
:class:`~chextriev.records.Record` objects and :func:`chextriev.synth.archive.load_lesions`
gives the per-lesion boxes and masks.
"""

import importlib

# Loaded on first use: the drawing code imports scipy and pydicom, and `chextriev synth --help`
# (which imports chextriev.synth.cli, hence this package) must not wait for them.
_LAZY = {"Lesion": "chextriev.synth.archive", "load_lesions": "chextriev.synth.archive",
         "read_archive": "chextriev.io.synthetic", "SynthConfig": "chextriev.synth.writer",
         "write_archive": "chextriev.synth.writer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Lesion", "SynthConfig", "load_lesions", "read_archive", "write_archive"]
