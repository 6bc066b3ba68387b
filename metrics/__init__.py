"""Evaluators: retrieval, classification and localization metrics, and `chextriev evaluate`."""
