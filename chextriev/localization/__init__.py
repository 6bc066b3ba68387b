"""Pixel-level localization: CAM / Grad-CAM / Grad-CAM++ heatmaps for a finding, HAM's attention
mining heatmaps, and the boxes and masks derived from them. Entry points:
:func:`chextriev.localization.cam.heatmap` and :func:`chextriev.localization.ham.ham_heatmap`."""

from chextriev.localization.cam import METHODS, CamPipeline, heatmap
from chextriev.localization.ham import LoadedHAM, ham_heatmap, load_ham
from chextriev.localization.regions import heatmap_mask, heatmap_to_boxes

__all__ = ["METHODS", "CamPipeline", "LoadedHAM", "ham_heatmap", "heatmap", "heatmap_mask", "heatmap_to_boxes",
           "load_ham"]
