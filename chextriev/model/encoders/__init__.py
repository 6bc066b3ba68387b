"""Chest X-ray foundation encoders (RAD-DINO, BiomedCLIP, CheXzero, MedSigLIP, and any DINOv2,
SigLIP or open_clip checkpoint) as CheXtriev backbones, loaded from the user's own files.

* :mod:`~chextriev.model.encoders.table` — the encoder table (plain data, imports no torch);
* :mod:`~chextriev.model.encoders.inputs` — each encoder's input preparation;
* :mod:`~chextriev.model.encoders.files` — reading and checking the user's files
  (:func:`~chextriev.model.encoders.files.resolve_encoder`), building the networks from them;
* :mod:`~chextriev.model.encoders.families` — the library networks, split into the global
  feature and the patch-token grid;
* :mod:`~chextriev.model.encoders.text` — text embeddings in the joint space of the CLIP families.

This package's ``__init__`` imports only the table: the rest is imported where it is used.
"""

from chextriev.model.encoders.table import (
    ENCODER_NAMES,
    ENCODERS,
    FAMILIES,
    NAMED_ENCODERS,
    EncoderEntry,
    is_encoder,
)

__all__ = ["ENCODERS", "ENCODER_NAMES", "FAMILIES", "NAMED_ENCODERS", "EncoderEntry", "is_encoder"]
