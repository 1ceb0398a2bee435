"""Pooled summaries of K models tested on the same images (protocol `paper2`, or every fold
evaluated on the test split): the K folds' counts summed, confidence intervals counting each
test image once. Used by the cross-validation summary and `scripts/evaluate.py` alike."""

from __future__ import annotations

import math
from typing import Any

from qatacov_jax.metrics.confusion import Z_95
from qatacov_jax.metrics.streaming import MetricAccumulator


def shared_test_summary(pooled: MetricAccumulator, k: int) -> dict[str, Any]:
    """The pooled summary of K models tested on the same N images, CIs with N = the test
    images: z sqrt(m (1 - m) / N) = (z sqrt(K)) sqrt(m (1 - m) / (K N)), the radius the
    summed counts give with z scaled by sqrt(K)."""
    summary = pooled.summary(Z_95 * math.sqrt(k))
    for level in ("pixel", "detection"):
        for entry in summary[level]["metrics"].values():
            if "n" in entry:
                entry["n"] = int(round(entry["n"] / k))
    summary["shared_test"] = {
        "folds": k,
        "test_images": int(round(pooled.num_images / k)),
        "note": "every fold's model on the same test images: counts summed over the folds, "
        "confidence intervals with N = the test images",
    }
    return summary
