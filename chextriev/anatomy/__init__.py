"""Region boxes for images that have none: a fitted atlas, a Faster R-CNN anatomy detector,
and the provider that combines them (detector first, atlas for the regions it misses).

``Atlas``, ``BoxProvider`` and the IoU helpers import without torchvision; the detector module
is imported lazily (``from chextriev.anatomy.detector import AnatomyDetector``).
"""

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.iou import mean_iou, region_box_iou
from chextriev.anatomy.provider import BoxProvider

__all__ = ["Atlas", "BoxProvider", "mean_iou", "region_box_iou"]
