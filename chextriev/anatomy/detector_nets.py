"""Faster R-CNN networks for the 18 anatomical regions (+ background), built from a config.

Backbones (all random unless a local weights file is given; nothing is downloaded):

* ``resnet50``: torchvision ``fasterrcnn_resnet50_fpn`` (the default, for GPU);
* ``resnet18``: a ResNet18-FPN Faster R-CNN (lighter, still ImageNet-shaped);
* ``small``: a compact 5-stage CNN with GroupNorm and an FPN, for CPU training in minutes.

Images enter as ``(3, S, S)`` tensors already resized to ``image_size`` ``S``; the internal
transform does not rescale them again (``min_size = max_size = S``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.vocab import NUM_REGIONS

log = logging.getLogger(__name__)

BACKBONES = ("resnet50", "resnet18", "small")
#: Region boxes are tall (trachea ~1:4) to wide; aspect ratios are height / width.
ASPECT_RATIOS = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector network (saved with its weights)."""

    backbone: str = "resnet50"
    image_size: int = 512
    num_regions: int = NUM_REGIONS
    backbone_weights: str | None = None  # local torchvision state dict used at training time

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise UnknownNameError("detector backbone", self.backbone, BACKBONES)
        if self.image_size < 64:
            raise ValueError(f"detector image_size must be >= 64, got {self.image_size}")


def _anchors(image_size: int, levels: int) -> AnchorGenerator:
    """One anchor size per pyramid level, from image_size/16 doubling upward."""
    sizes = tuple((max(8, round(image_size / 16 * 2**i)),) for i in range(levels))
    return AnchorGenerator(sizes=sizes, aspect_ratios=(ASPECT_RATIOS,) * levels)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
    )


class SmallBody(nn.Module):
    """A compact CNN: strides 4, 8, 16, 32 with 32, 64, 96, 128 channels.

    ``(B, 3, S, S) -> {"layer1".."layer4"}`` feature maps, read by an FPN.
    """

    channels = (32, 64, 96, 128)

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = self.channels
        self.stem = nn.Sequential(_conv(3, 16, 2), _conv(16, c1, 2))
        self.layer1 = _conv(c1, c1, 1)
        self.layer2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2, 1))
        self.layer3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3, 1))
        self.layer4 = nn.Sequential(_conv(c3, c4, 2), _conv(c4, c4, 1))


def _load_backbone_weights(body: nn.Module, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise ChextrievError(f"backbone weights file not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    result = body.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ChextrievError(f"{file}: no tensor matches the detector backbone (is it a torchvision ResNet state dict?)")
    log.info("detector backbone: %d tensors loaded from %s (%d missing)", loaded, file, len(result.missing_keys))


def build_detector_network(config: DetectorConfig) -> FasterRCNN:
    """A Faster R-CNN with ``config.num_regions + 1`` classes (0 = background)."""
    size = config.image_size
    common = {
        "num_classes": config.num_regions + 1,
        "min_size": size,
        "max_size": size,
        "box_score_thresh": 0.0,  # keep every class; one best box per class is taken afterwards
        "box_detections_per_img": max(100, 10 * config.num_regions),
    }
    if config.backbone == "resnet50":
        model = fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, trainable_backbone_layers=5,
            rpn_anchor_generator=_anchors(size, 5), **common,
        )
        if config.backbone_weights:
            _load_backbone_weights(model.backbone.body, config.backbone_weights)
        return model
    if config.backbone == "resnet18":
        backbone = resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
        if config.backbone_weights:
            _load_backbone_weights(backbone.body, config.backbone_weights)
        return FasterRCNN(backbone, rpn_anchor_generator=_anchors(size, 5), **common)
    # small: three pyramid levels (strides 8, 16, 32) + a max-pooled one (stride 64)
    if config.backbone_weights:
        raise ChextrievError("the 'small' detector backbone has no pretrained weights; drop --backbone-weights")
    backbone = BackboneWithFPN(
        SmallBody(),
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=list(SmallBody.channels[1:]),
        out_channels=64,
        extra_blocks=LastLevelMaxPool(),
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(64 * 7 * 7, 256)
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=_anchors(size * 2, 4),  # strides 8..64: anchors S/8 .. S
        box_roi_pool=roi_pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(256, config.num_regions + 1),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=128,
        **{**common, "num_classes": None},
    )
