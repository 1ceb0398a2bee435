"""Timing helpers for `benchmarks/` and the paper's Table 8 as data (`paper.py`)."""
