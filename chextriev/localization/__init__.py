"""Pixel-level localization: CAM / Grad-CAM / Grad-CAM++ heatmaps for a finding, HAM's attention
mining heatmaps, and the boxes and masks derived from them. Entry points:
:func:`chextriev.localization.cam.heatmap` and :func:`chextriev.localization.ham.ham_heatmap`.

The names below load their modules (torch, scipy, PIL) on first use, so that registering the
`train-ham` command (`chextriev.localization.cli`) keeps `chextriev --help` light.
"""

_LAZY = {
    "METHODS": "chextriev.localization.cam",
    "CamPipeline": "chextriev.localization.cam",
    "heatmap": "chextriev.localization.cam",
    "LoadedHAM": "chextriev.localization.ham",
    "ham_heatmap": "chextriev.localization.ham",
    "load_ham": "chextriev.localization.ham",
    "heatmap_mask": "chextriev.localization.regions",
    "heatmap_to_boxes": "chextriev.localization.regions",
}

__all__ = ["METHODS", "CamPipeline", "LoadedHAM", "ham_heatmap", "heatmap", "heatmap_mask", "heatmap_to_boxes",
           "load_ham"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
