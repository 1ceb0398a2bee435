"""Inference: the jitted multi-device predictor, infection maps, severity, and X-ray files
in -> maps, masks and reports out (`scripts/infer.py`)."""
