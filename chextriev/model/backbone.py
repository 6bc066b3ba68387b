"""Torchvision backbone trunks (no pooling, no classifier) and their input normalisation.

Backbones (:data:`chextriev.model.config.BACKBONES`, feature dims in
:data:`~chextriev.model.config.BACKBONE_FEATURE_DIMS`): ``resnet18`` (512), ``resnet50`` (2048),
``densenet121`` (1024: CheXNet, torchxrayvision), ``efficientnet_b0`` .. ``efficientnet_b4``
(1280, 1280, 1408, 1536, 1792: X_RAY). Every trunk is an ``nn.Sequential`` mapping
``(B, C, H, W) -> (B, F, H/32, W/32)``, the map that CAM / Grad-CAM explain and RoIAlign pools,
whose last element is the last stride-32 stage: ``trunk[:-1]`` is the stride-16 map (HAM's
finer option; :func:`trunk_channels` gives its width).

* ResNet: ``conv1 .. layer4`` (the map after the last residual block's ReLU);
* DenseNet121: ``features`` then ReLU (what torchvision's and torchxrayvision's ``forward``
  pool), ``trunk[:-1]`` ends at ``denseblock3`` (1024 channels);
* EfficientNet: ``features`` (up to the 1x1 head convolution + BN + SiLU), ``trunk[:-1]`` ends
  at stage 5.

Weights come from a local file when given (no downloads, ever;
:mod:`chextriev.model.weights` reads torchvision and torchxrayvision state dicts); otherwise
the trunk is initialised randomly from ``seed`` so that every variant trained with the same
config shares the same frozen backbone (and its cached features). A random init is logged once
per process. The weights format also fixes the input: ``torchvision`` trunks take the grey
image replicated to RGB and ImageNet-normalised; ``xrv`` (torchxrayvision DenseNet121) takes one
channel scaled to ``[-1024, 1024]`` at 224 px, exactly as torchxrayvision's own model expects
(:func:`normalize`).
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch
from torch import nn

from chextriev.errors import UnknownNameError
from chextriev.files import sha256_file
from chextriev.model.architectures import (  # noqa: F401 - re-exported: the trunks' public face
    ARCHITECTURES,
    Architecture,
    BackboneWeightsError,
    check_backbone,
    full_network,
    input_channels,
)

log = logging.getLogger(__name__)
_warned_random = False
_quiet = 0


@contextlib.contextmanager
def weights_restored_later():
    """Build trunks silently: their weights are about to be loaded (e.g. from a checkpoint)."""
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchxrayvision's intensity range: 8-bit pixel p -> (2 p / 255 - 1) * 1024
#: (``torchxrayvision.utils.normalize(img, maxval=255)``).
XRV_RANGE = 1024.0


_INIT_CACHE: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}


def _random_network(name: str, seed: int, weights_format: str) -> nn.Module:
    """:func:`full_network` with the random init of ``seed`` (memoised: later builds skip the init)."""
    key = (name, seed, weights_format)
    cached = _INIT_CACHE.get(key)
    if cached is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = full_network(name, weights_format)
        _INIT_CACHE[key] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return net
    with torch.device("meta"):
        net = full_network(name, weights_format)
    net = net.to_empty(device="cpu")
    net.load_state_dict(cached)
    return net


def build_trunk(name: str, weights: str | None = None, seed: int = 0,
                weights_format: str = "torchvision") -> nn.Sequential:
    """Trunk of backbone ``name``: ``(B, C, H, W) -> (B, F, H/32, W/32)``.

    ``C`` is 3 for ``torchvision`` weights and 1 for ``xrv``; ``F`` is
    ``BACKBONE_FEATURE_DIMS[name]`` (2048 resnet50, 512 resnet18, 1024 densenet121, 1280
    efficientnet_b0, ...). ``weights``: a local state-dict file in ``weights_format`` (see
    :func:`chextriev.model.weights.load_backbone_weights`), else the random init of ``seed``.
    """
    global _warned_random
    if weights:
        from chextriev.model.weights import load_backbone_weights

        with torch.device("meta"):  # every trunk tensor comes from the file: no random init
            net = full_network(name, weights_format)
        net = net.to_empty(device="cpu")
        load_backbone_weights(net, name, weights, weights_format)
        log.info("backbone %s: %s weights from %s", name, weights_format, weights)
    else:
        net = _random_network(name, seed, weights_format)
        if not _warned_random and not _quiet:
            _warned_random = True
            log.warning(
                "backbone %s starts from random weights (seed %d): no --backbone-weights file given "
                "(pass a local torchvision ImageNet or torchxrayvision state dict for pretrained features)",
                name, seed,
            )
    trunk = ARCHITECTURES[name].trunk(net)
    # NHWC convolutions: about 1.4x faster on CPU in both feature modes (BENCHMARKS.md);
    # inputs are converted by `to_channels_last` before the trunk.
    return trunk.to(memory_format=torch.channels_last)


@functools.cache
def trunk_channels(name: str, stride: int = 32) -> int:
    """Channels of the trunk's map at ``stride`` 32 (the whole trunk) or 16 (``trunk[:-1]``)."""
    if stride not in (16, 32):
        raise UnknownNameError("feature stride", str(stride), ["16", "32"])
    with torch.device("meta"):
        trunk = ARCHITECTURES[name].trunk(full_network(name))
        if stride == 16:
            trunk = trunk[:-1]
        return int(trunk(torch.empty(1, 3, 64, 64)).shape[1])


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in the trunk's memory layout (same values, NHWC strides)."""
    return images.contiguous(memory_format=torch.channels_last)


def weights_id(weights: str | None, seed: int, weights_format: str = "torchvision") -> str:
    """Identity of the backbone weights for cache keys: file hash, or ``random-seed<N>``;
    prefixed ``xrv-`` for torchxrayvision-format trunks (one input channel, another input
    scale: never the same features as a torchvision trunk of the same file or seed)."""
    prefix = "" if weights_format == "torchvision" else f"{weights_format}-"
    if not weights:
        return f"{prefix}random-seed{seed}"
    return prefix + sha256_file(weights)[:16]


def normalize(images: torch.Tensor, weights_format: str = "torchvision") -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1] -> the trunk input of ``weights_format``.

    ``torchvision``: ``(B, 3, H, W)``, grey replicated, ImageNet-normalised. ``xrv``:
    ``(B, 1, H, W)`` ``(2 x - 1) * 1024``, which is torchxrayvision's
    ``(2 * (p / 255) - 1) * 1024`` for the 8-bit pixel ``p = 255 x``.
    """
    if weights_format == "xrv":
        return (2.0 * images - 1.0) * XRV_RANGE
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std


def freeze(module: nn.Module) -> None:
    """No gradients and eval-mode batch norm (call ``module.eval()`` again after ``train()``)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()
