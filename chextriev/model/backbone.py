"""Torchvision ResNet trunks (no pooling, no classifier) and image normalisation.

Weights come from a local torchvision state-dict file when given (no downloads, ever);
otherwise the trunk is initialised randomly from ``seed`` so that every variant trained with
the same config shares the same frozen backbone (and its cached features). A random init is
logged once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from chextriev.errors import ChextrievError

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


class BackboneWeightsError(ChextrievError):
    """A backbone weights file that cannot be read or does not fit the architecture."""


_INIT_CACHE: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


def _random_resnet(name: str, seed: int) -> nn.Module:
    """A torchvision ResNet with the random init of ``seed`` (memoised: later builds skip the init)."""
    factory = {"resnet50": torchvision.models.resnet50, "resnet18": torchvision.models.resnet18}[name]
    cached = _INIT_CACHE.get((name, seed))
    if cached is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = factory(weights=None)
        _INIT_CACHE[(name, seed)] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return net
    with torch.device("meta"):
        net = factory(weights=None)
    net = net.to_empty(device="cpu")
    net.load_state_dict(cached)
    return net


def build_trunk(name: str, weights: str | None = None, seed: int = 0) -> nn.Sequential:
    """ResNet ``name`` up to ``layer4``: ``(B, 3, H, W) -> (B, F, H/32, W/32)``.

    ``F`` is 2048 for resnet50, 512 for resnet18.
    """
    global _warned_random
    net = _random_resnet(name, seed)
    if weights:
        path = Path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as error:
            raise BackboneWeightsError(f"cannot read backbone weights {path}: {error}") from error
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise BackboneWeightsError(
                f"{path} does not fit a torchvision {name}: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} (unexpected {list(unexpected)[:5]})"
            )
        log.info("backbone %s: weights from %s", name, path)
    elif not _warned_random and not _quiet:
        _warned_random = True
        log.warning(
            "backbone %s starts from random weights (seed %d): no --backbone-weights file given "
            "(pass a torchvision ImageNet state dict for the published setting)", name, seed,
        )
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    # NHWC convolutions: about 1.4x faster on CPU in both feature modes (BENCHMARKS.md);
    # inputs are converted by `to_channels_last` before the trunk.
    return trunk.to(memory_format=torch.channels_last)


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in the trunk's memory layout (same values, NHWC strides)."""
    return images.contiguous(memory_format=torch.channels_last)


def weights_id(weights: str | None, seed: int) -> str:
    """Identity of the backbone weights for cache keys: file hash, or ``random-seed<N>``."""
    if not weights:
        return f"random-seed{seed}"
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1] -> ``(B, 3, H, W)`` ImageNet-normalised (grey replicated)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std


def freeze(module: nn.Module) -> None:
    """No gradients and eval-mode batch norm (call ``module.eval()`` again after ``train()``)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()
