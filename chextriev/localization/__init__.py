"""Pixel-level localization: CAM / Grad-CAM / Grad-CAM++ heatmaps for a finding, and the boxes
and masks derived from them. Entry point: :func:`chextriev.localization.cam.heatmap`."""

from chextriev.localization.cam import METHODS, CamPipeline, heatmap
from chextriev.localization.regions import heatmap_mask, heatmap_to_boxes

__all__ = ["METHODS", "CamPipeline", "heatmap", "heatmap_mask", "heatmap_to_boxes"]
