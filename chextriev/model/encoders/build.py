"""Model config -> encoder networks (what :mod:`chextriev.model.region_features` and the
``encoder`` kind call): the trunk with the user's weights when ``config.backbone_weights`` names
them, else randomly initialised from ``backbone_seed`` (logged once), or left for a checkpoint's
weights (inside :func:`chextriev.model.backbone.weights_restored_later`)."""

from __future__ import annotations

import logging

from chextriev.model.config import ModelConfig

log = logging.getLogger(__name__)
_warned_random = False


def _restoring() -> bool:
    from chextriev.model import backbone

    return backbone._quiet > 0


def encoder_trunk(config: ModelConfig):
    """The :class:`~chextriev.model.encoders.families.EncoderTrunk` of ``config``."""
    global _warned_random
    from chextriev.model.encoders.files import load_trunk

    spec = config.encoder
    quiet = _restoring()
    trunk = load_trunk(spec, config.backbone_weights, seed=config.backbone_seed, quiet=quiet)
    if config.backbone_weights:
        log.info("backbone %s (%s): weights from %s", config.backbone, spec["family"], config.backbone_weights)
    elif not quiet and not _warned_random:
        _warned_random = True
        log.warning("backbone %s starts from random weights (seed %d): no --backbone-weights given (pass the "
                    "encoder's downloaded files for its real features)", config.backbone, config.backbone_seed)
    return trunk


def encoder_text(config: ModelConfig):
    """The text tower of ``config``'s encoder (its files' weights, or a checkpoint's to come)."""
    from chextriev.model.encoders.files import load_text

    return load_text(config.encoder, config.backbone_weights, quiet=_restoring())
