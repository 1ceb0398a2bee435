"""Inference: the jitted multi-device predictor, the resize in and maps out it shares with
the ONNX Runtime predictor (`batching`), infection maps, severity, and X-ray files in -> maps,
masks and reports out (`scripts/infer.py`)."""
