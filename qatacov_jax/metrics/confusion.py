"""Binary confusion matrices, the papers' metrics and their 95% confidence intervals.

Confidence intervals follow Degerli et al. eq. (13): r = z * sqrt(m (1 - m) / N), z = 1.96.
The paper's Table 3 fixes what N is (docs/method.md, "Confidence intervals"): its CIs are
reproduced exactly from its Table 4 confusion matrix when N is the number of *positives* for
sensitivity, the number of *negatives* for specificity, and *all* samples for every other
metric (precision, F1, F2, accuracy, IoU, DSC, AUC). The same rule is applied to pixel-level
metrics with pixels as the samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

Z_95 = 1.96

METRIC_NAMES = (
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "f2",
    "accuracy",
    "iou",
    "dsc",
)

COUNT_KEYS = ("tp", "fp", "tn", "fn")


def confidence_radius(metric: float, n: int, z: float = Z_95) -> float:
    """Half-width r = z * sqrt(m (1 - m) / N) of the paper's confidence interval (eq. 13).

    Args:
      metric: the metric as a fraction in [0, 1] (not a percentage).
      n: the number of samples the metric is a rate over (see module docstring).

    Returns:
      r as a fraction; NaN when the metric is undefined or n is 0.
    """
    if n <= 0 or not math.isfinite(metric):
        return float("nan")
    m = min(max(metric, 0.0), 1.0)
    return z * math.sqrt(m * (1.0 - m) / n)


def _ratio(num: float, den: float) -> float:
    # Undefined rates (e.g. sensitivity with no positives) are NaN, written as null in JSON,
    # rather than a made-up 0 or 1.
    return num / den if den > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class ConfusionCounts:
    """A binary confusion matrix (of pixels or of images)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(*(getattr(self, k) + getattr(other, k) for k in COUNT_KEYS))

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def metrics(self) -> dict[str, float]:
        """Sensitivity, specificity, precision, F1, F2, accuracy, IoU and DSC as fractions."""
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        sens = _ratio(tp, tp + fn)
        prec = _ratio(tp, tp + fp)

        def f_beta(beta: float) -> float:
            # Written with counts so that it is defined whenever tp + fp + fn > 0 (as DSC).
            b2 = beta * beta
            return _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)

        return {
            "sensitivity": sens,
            "specificity": _ratio(tn, tn + fp),
            "precision": prec,
            "f1": f_beta(1.0),
            "f2": f_beta(2.0),
            "accuracy": _ratio(tp + tn, self.total),
            "iou": _ratio(tp, tp + fp + fn),
            "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        }

    def ci_sample_size(self, metric: str) -> int:
        """The N of the CI formula for `metric`, as the paper uses it (module docstring)."""
        if metric == "sensitivity":
            return self.positives
        if metric == "specificity":
            return self.negatives
        return self.total

    def metrics_with_ci(self, z: float = Z_95) -> dict[str, dict[str, float]]:
        """metric -> {"value", "ci95", "n"}; value and ci95 as fractions."""
        out = {}
        for name, value in self.metrics().items():
            n = self.ci_sample_size(name)
            out[name] = {"value": value, "ci95": confidence_radius(value, n, z), "n": n}
        return out

    def to_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in COUNT_KEYS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfusionCounts:
        return cls(*(int(d[k]) for k in COUNT_KEYS))
