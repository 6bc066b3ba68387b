"""CheXtriev model library: vocabulary, readers, synthetic archive, region features, graph
transformer variants, heads, anatomy boxes, localization and training."""

__version__ = "0.1.0"
