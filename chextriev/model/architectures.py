"""The backbone architectures: which torchvision constructor builds each, where its trunk is
cut, which state-dict keys are its classifier, and its input channels. The bottom of
:mod:`chextriev.model`'s trunk code: :mod:`chextriev.model.weights` (reading weight files) and
:mod:`chextriev.model.backbone` (building trunks) both build on it; the backbone module
re-exports these names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn

from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.model.config import (
    BACKBONES,
    CNN_BACKBONES,
    ENCODER_NAMES,
    WEIGHTS_FORMATS,
    XRV_BACKBONES,
)


class BackboneWeightsError(ChextrievError):
    """A backbone weights file that cannot be read or does not fit the architecture."""


def _resnet_trunk(net: nn.Module) -> nn.Sequential:
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


def _densenet_trunk(net: nn.Module) -> nn.Sequential:
    stages = OrderedDict(net.features.named_children())
    last = OrderedDict((name, stages.pop(name)) for name in ("transition3", "denseblock4", "norm5"))
    last["relu5"] = nn.ReLU()
    stages["stage4"] = nn.Sequential(last)
    return nn.Sequential(stages)


def _efficientnet_trunk(net: nn.Module) -> nn.Sequential:
    stages = list(net.features.children())
    return nn.Sequential(*stages[:6], nn.Sequential(*stages[6:]))


@dataclass(frozen=True)
class Architecture:
    """How to build one backbone: the torchvision constructor, how to cut its trunk, and which
    keys of a full state dict belong to its classifier (ignored when weights are loaded)."""

    factory: Callable[..., nn.Module]
    trunk: Callable[[nn.Module], nn.Sequential]
    head_prefixes: tuple[str, ...]
    first_conv: str  # state-dict key of the first convolution's weight (its input channels)


ARCHITECTURES: dict[str, Architecture] = {
    "resnet50": Architecture(torchvision.models.resnet50, _resnet_trunk, ("fc.",), "conv1.weight"),
    "resnet18": Architecture(torchvision.models.resnet18, _resnet_trunk, ("fc.",), "conv1.weight"),
    "densenet121": Architecture(torchvision.models.densenet121, _densenet_trunk, ("classifier.",),
                                "features.conv0.weight"),
    **{f"efficientnet_b{i}": Architecture(getattr(torchvision.models, f"efficientnet_b{i}"), _efficientnet_trunk,
                                          ("classifier.",), "features.0.0.weight") for i in range(5)},
}
assert tuple(ARCHITECTURES) == CNN_BACKBONES, "chextriev.model.config.CNN_BACKBONES lists the architectures"


def check_backbone(name: str, weights_format: str = "torchvision") -> None:
    """Raise :class:`UnknownNameError` for an unknown backbone, format, or a pair that does not exist
    (a foundation encoder reads its files in its own library's format: only ``torchvision``, the
    default, is accepted with one)."""
    if name in ENCODER_NAMES:
        if weights_format not in (None, "torchvision"):
            raise UnknownNameError(f"weights format for encoder {name} (its files are read in its own library's "
                                   "format)", weights_format, ["torchvision (the default)"])
        return
    if name not in ARCHITECTURES:
        raise UnknownNameError("backbone", name, BACKBONES)
    if weights_format not in WEIGHTS_FORMATS:
        raise UnknownNameError("backbone weights format", weights_format, WEIGHTS_FORMATS)
    if weights_format == "xrv" and name not in XRV_BACKBONES:
        raise UnknownNameError("backbone for torchxrayvision weights", name, XRV_BACKBONES)


def input_channels(weights_format: str) -> int:
    """Channels of the trunk's input: 3 (RGB-replicated grey, torchvision) or 1 (xrv)."""
    return 1 if weights_format == "xrv" else 3


def full_network(name: str, weights_format: str = "torchvision") -> nn.Module:
    """The whole torchvision network ``name`` (classifier included), default init, in the layout
    of ``weights_format`` (xrv: a one-channel first convolution, kaiming-normal as xrv's)."""
    check_backbone(name, weights_format)
    net = ARCHITECTURES[name].factory(weights=None)
    if input_channels(weights_format) == 1:
        old = net.features.conv0
        net.features.conv0 = nn.Conv2d(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                                       padding=old.padding, bias=False, device=old.weight.device)
        if old.weight.device.type != "meta":
            nn.init.kaiming_normal_(net.features.conv0.weight)
    return net
