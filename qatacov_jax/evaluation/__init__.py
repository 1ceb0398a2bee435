"""Evaluation of trained runs (`scripts/evaluate.py`): the jitted statistics pass over a
split, Markdown tables shaped like the paper's, curves, confusion matrices and example maps.
Counting itself is `qatacov_jax.metrics`, shared with training-time validation."""
