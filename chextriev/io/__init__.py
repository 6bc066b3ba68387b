"""Real-format readers (PNG/JPEG/DICOM images, Chest ImaGenome, MIMIC-CXR-JPG, NIH
ChestX-ray14, plain folders, DICOMweb services) yielding :class:`chextriev.records.Record`;
``chextriev.io.sources.open_source`` is the one entry point for any source; see README.md."""

from chextriev.io.images import load_image, read_image
from chextriev.io.loaded import LoadedImage

__all__ = ["LoadedImage", "load_image", "read_image"]
