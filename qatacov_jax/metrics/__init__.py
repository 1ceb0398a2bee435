"""The one metrics path: streaming statistics, metrics with the papers' CIs, fold averages.

Training-time validation (`training.steps`), `scripts/evaluate.py` (`evaluation`) and the
cross-validation summary (`training.cross_validation`) all reduce batches with
`batch_statistics`, add them up in a `MetricAccumulator` and average folds with
`fold_average`. The image-level decision ("COVID-19 if any pixel >= threshold") is called
*detection* everywhere.
"""

from qatacov_jax.metrics.confusion import (
    COUNT_KEYS,
    METRIC_NAMES,
    Z_95,
    ConfusionCounts,
    confidence_radius,
)
from qatacov_jax.metrics.pooling import shared_test_summary
from qatacov_jax.metrics.streaming import (
    DEFAULT_NUM_BINS,
    DEFAULT_THRESHOLD,
    LEVELS,
    Curves,
    MetricAccumulator,
    auc_from_histograms,
    average_precision,
    batch_statistics,
    best_f1_threshold,
    bin_edges,
    curves_from_histograms,
    flat_metrics,
    fold_average,
)

__all__ = [
    "COUNT_KEYS",
    "DEFAULT_NUM_BINS",
    "DEFAULT_THRESHOLD",
    "LEVELS",
    "METRIC_NAMES",
    "Z_95",
    "ConfusionCounts",
    "Curves",
    "MetricAccumulator",
    "auc_from_histograms",
    "average_precision",
    "batch_statistics",
    "best_f1_threshold",
    "bin_edges",
    "confidence_radius",
    "curves_from_histograms",
    "flat_metrics",
    "fold_average",
    "shared_test_summary",
]
