"""Training: presets, patient-disjoint data, the feature cache, the Lightning module, ``chextriev train``.

Library entry points: :func:`chextriev.training.fit.train` / ``train_records`` and
:func:`chextriev.training.quick.train_tiny_checkpoint` (tests).
"""
