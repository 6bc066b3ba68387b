"""Real-format readers (PNG/JPEG/DICOM images, Chest ImaGenome, MIMIC-CXR-JPG, NIH
ChestX-ray14, plain folders) yielding :class:`chextriev.records.Record`; see README.md."""

from chextriev.io.images import LoadedImage, load_image, read_image

__all__ = ["LoadedImage", "load_image", "read_image"]
