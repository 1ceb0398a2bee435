"""Streaming segmentation and detection metrics with the papers' 95% confidence intervals.

Evaluation must fit a 27k-image test set (Group-II) at any resolution, so nothing per pixel or
per image is kept. Each batch is reduced on the devices (`batch_statistics`, jit-friendly) to

* pixel confusion counts at the decision threshold (exact comparisons, not binned),
* a fixed-bin histogram of the predicted probability for ground-truth positive and negative
  pixels (for AUC, ROC and PR curves),
* the same two things per image for COVID-19 *detection*, where an image is called positive
  when any pixel is >= threshold (i.e. its maximum probability is), against its label,
* per-image IoU and DSC at the threshold, summed over images (paper 2 averages them per
  image, docs/method.md#iou-and-dsc),

and the host adds them into int64 / float64 accumulators (`MetricAccumulator`). Memory is
O(num_bins), independent of the number of images.

AUC resolution: probabilities are binned into `num_bins` bins that are uniform in *logit*
space (`bin_edges`): bin 0 holds p < sigmoid(-LOGIT_RANGE), the last p >= sigmoid(
LOGIT_RANGE), and the `num_bins - 2` between are equal steps of logit(p). Uniform bins in p
put nearly every background pixel (p ~ 1e-4) into the first bin together with the missed
infection pixels, which made the AUC's error bound several percentage points; in logit
space the confident negatives spread over hundreds of bins. The binned ROC is exact at the
bin edges; the only approximation is that a positive and a negative that fall into the
*same* bin count as a tie (1/2). The difference to the exact (Mann-Whitney) AUC is
therefore at most `0.5 * sum_b pos_b * neg_b / (P * N)`, which `auc_from_histograms`
returns as `bin_error` alongside every AUC.

Confidence intervals: `qatacov_jax.metrics.confusion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qatacov_jax.metrics.confusion import COUNT_KEYS, Z_95, ConfusionCounts, confidence_radius

# 4002 bins: 4000 steps of 0.01 in logit over [-20, 20] plus the two tails; even, so that
# p = 0.5 (logit 0) is a bin edge.
DEFAULT_NUM_BINS = 4002
LOGIT_RANGE = 20.0
DEFAULT_THRESHOLD = 0.5
LEVELS = ("pixel", "detection")


# --------------------------------------------------------------------------- device side


def bin_edges(num_bins: int) -> np.ndarray:
    """(num_bins + 1,) float64 probability edges: bin b holds [edges[b], edges[b + 1]).

    edges[0] = 0, edges[-1] = 1 (the last bin includes 1); between them sigmoid of
    `num_bins - 1` equally spaced logits from -LOGIT_RANGE to LOGIT_RANGE.
    """
    if num_bins < 3:
        raise ValueError(f"num_bins must be >= 3 (two tails and a middle), got {num_bins}.")
    logits = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, num_bins - 1)
    return np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-logits)), [1.0]])


def _bin_index(p: jax.Array, num_bins: int) -> jax.Array:
    """The `bin_edges` bin of each probability (p = 1 goes to the last bin)."""
    p = p.astype(jnp.float32)
    logit = jnp.log(p) - jnp.log1p(-p)  # -inf at 0, +inf at 1: clipped to the tails
    width = 2.0 * LOGIT_RANGE / (num_bins - 2)
    pos = jnp.clip(jnp.floor((logit + LOGIT_RANGE) / width) + 1.0, 0.0, num_bins - 1.0)
    return pos.astype(jnp.int32)


def _histogram(idx: jax.Array, select: jax.Array, num_bins: int) -> jax.Array:
    # Unselected elements go to an overflow bin that is dropped: cheaper than a weighted
    # bincount and keeps exact integer counts.
    idx = jnp.where(select, idx, num_bins).ravel()
    return jnp.bincount(idx, length=num_bins + 1)[:num_bins].astype(jnp.int32)


METRIC_DEFINITIONS = {
    "iou": "pooled: TP / (TP + FP + FN) of the pixel counts summed over all images",
    "dsc": "pooled: 2 TP / (2 TP + FP + FN) of the summed pixel counts (= pixel F1)",
    "iou_per_image": "mean over images of each image's IoU (paper 2's IoU; CI with N = "
    "images); an image with no ground-truth and no predicted pixels counts 1",
    "dsc_per_image": "mean over images of each image's DSC (paper 2's DSC), as iou_per_image",
    "auc": "binned ROC AUC; the exact AUC lies within +- bin_error of it",
}
PER_IMAGE_KEYS = ("image_iou_sum", "image_dsc_sum", "image_count", "image_empty")


def _per_image_overlap(pred: jax.Array, truth: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Sums over the valid images of per-image IoU and DSC (pred, truth: (B, P) bool).

    An image with neither ground-truth nor predicted pixels scores 1 (a perfect empty
    prediction; segmentation_models_pytorch's per-image default), counted in `image_empty`.
    """
    tp = jnp.sum(pred & truth, axis=1).astype(jnp.float32)
    union = jnp.sum(pred | truth, axis=1).astype(jnp.float32)  # tp + fp + fn
    empty = union == 0
    iou = jnp.where(empty, 1.0, tp / jnp.maximum(union, 1.0))
    dsc = jnp.where(empty, 1.0, 2.0 * tp / jnp.maximum(union + tp, 1.0))
    v = valid.astype(jnp.float32)
    return {
        "image_iou_sum": jnp.sum(v * iou),
        "image_dsc_sum": jnp.sum(v * dsc),
        "image_count": jnp.sum(v),
        "image_empty": jnp.sum(v * empty),
    }


def _counts(pred: jax.Array, truth: jax.Array, select: jax.Array) -> dict[str, jax.Array]:
    s = select.astype(jnp.int32)
    return {
        "tp": jnp.sum(s * (pred & truth)),
        "fp": jnp.sum(s * (pred & ~truth)),
        "tn": jnp.sum(s * (~pred & ~truth)),
        "fn": jnp.sum(s * (~pred & truth)),
    }


def batch_statistics(
    probs: jax.Array,
    masks: jax.Array | None,
    labels: jax.Array,
    valid: jax.Array,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict[str, jax.Array]:
    """Reduces one batch to the sufficient statistics of all metrics (pure, jit-friendly).

    Args:
      probs: (B, H, W, 1) or (B, H, W) predicted probabilities in [0, 1]; or (B,) image
        probabilities of a classifier (then `masks` is None).
      masks: same shape as `probs`, ground-truth mask in {0, 1} (> 0.5 is positive); None
        for a classifier, which predicts no pixels: its pixel counts and histograms are 0.
      labels: (B,) int, 1 = COVID-19 (the detection ground truth).
      valid: (B,) bool, False on padding rows of the last batch (they count nowhere).
      threshold: a pixel is predicted positive when p >= threshold; an image when any pixel is.
      num_bins: number of `bin_edges` bins (static).

    Returns:
      dict of int32 arrays: `pixel_{tp,fp,tn,fn}` (), `pixel_pos_hist`/`pixel_neg_hist`
      (num_bins,), `detection_{tp,fp,tn,fn}` (), `detection_pos_hist`/`detection_neg_hist` (num_bins,);
      float32 () `image_iou_sum`, `image_dsc_sum` (per-image IoU / DSC summed over the
      batch), `image_count`, `image_empty` (images with no truth and no prediction).
      Per-batch counts fit int32 (B*H*W < 2^31); the host sums them in int64 / float64.
    """
    b = probs.shape[0]
    probs = probs.reshape(b, -1).astype(jnp.float32)
    if masks is None:
        # Zeros of the same keys and dtypes, so classifier statistics add up in the same
        # `MetricAccumulator` (its detection level is then the classifier's).
        out = {f"pixel_{k}": jnp.zeros((), jnp.int32) for k in COUNT_KEYS}
        out["pixel_pos_hist"] = out["pixel_neg_hist"] = jnp.zeros((num_bins,), jnp.int32)
        out.update({k: jnp.zeros((), jnp.float32) for k in PER_IMAGE_KEYS})
    else:
        truth = masks.reshape(b, -1) > 0.5
        pix_valid = jnp.broadcast_to(valid.reshape(b, 1), truth.shape)
        pred = probs >= threshold
        idx = _bin_index(probs, num_bins)
        out = {f"pixel_{k}": v for k, v in _counts(pred, truth, pix_valid).items()}
        out["pixel_pos_hist"] = _histogram(idx, truth & pix_valid, num_bins)
        out["pixel_neg_hist"] = _histogram(idx, ~truth & pix_valid, num_bins)
        out.update(_per_image_overlap(pred, truth, valid.reshape(b)))

    score = jnp.max(probs, axis=1)  # detection score: positive iff any pixel >= threshold
    positive = labels.reshape(b) == 1
    valid = valid.reshape(b)
    out.update(
        {f"detection_{k}": v for k, v in _counts(score >= threshold, positive, valid).items()}
    )
    sidx = _bin_index(score, num_bins)
    out["detection_pos_hist"] = _histogram(sidx, positive & valid, num_bins)
    out["detection_neg_hist"] = _histogram(sidx, ~positive & valid, num_bins)
    return out


# ----------------------------------------------------------------------------- host side


def auc_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, float]:
    """ROC AUC from per-bin counts, and the bound on its binning error.

    Args:
      pos_hist, neg_hist: (num_bins,) counts of positives / negatives per probability bin.

    Returns:
      (auc, bin_error): auc counts same-bin positive/negative pairs as ties; the exact AUC of
      the unbinned scores lies within +- bin_error of it. Both NaN without positives or
      negatives.
    """
    pos = np.asarray(pos_hist, np.float64)
    neg = np.asarray(neg_hist, np.float64)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return float("nan"), float("nan")
    neg_below = np.cumsum(neg) - neg  # negatives in strictly lower bins
    auc = float(np.sum(pos * (neg_below + 0.5 * neg)) / (p * n))
    bin_error = float(0.5 * np.sum(pos * neg) / (p * n))
    return auc, bin_error


@dataclasses.dataclass(frozen=True)
class Curves:
    """ROC and precision-recall points at the bin edges, thresholds descending.

    Shapes (num_bins + 1,): thresholds are `bin_edges(num_bins)` from 1 down to 0; a score
    is positive when its bin starts at or above the threshold (p >= t up to float rounding).
    """

    thresholds: np.ndarray
    tpr: np.ndarray  # = recall
    fpr: np.ndarray
    precision: np.ndarray  # NaN where nothing is predicted positive


def curves_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> Curves:
    pos = np.asarray(pos_hist, np.float64)
    neg = np.asarray(neg_hist, np.float64)
    num_bins = pos.shape[0]
    # Positives at or above bin k, for k = num_bins (none) down to 0 (all).
    tp = np.concatenate([[0.0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / pos.sum() if pos.sum() else np.full_like(tp, np.nan)
        fpr = fp / neg.sum() if neg.sum() else np.full_like(fp, np.nan)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
    thresholds = bin_edges(num_bins)[::-1].copy()
    return Curves(thresholds, tpr, fpr, precision)


def best_f1_threshold(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, ConfusionCounts]:
    """The bin-edge threshold t = bin_edges(num_bins)[k] (k = 1 .. num_bins - 1; t = 0 would
    call everything positive) with the highest F1, and the confusion counts of `p >= t`.

    IoU = F1 / (2 - F1), so the same threshold maximises IoU. Ties go to the highest t.

    Args:
      pos_hist, neg_hist: (num_bins,) counts of positives / negatives per probability bin.
    """
    pos = np.asarray(pos_hist, np.int64)
    neg = np.asarray(neg_hist, np.int64)
    p, n = int(pos.sum()), int(neg.sum())
    tp = np.cumsum(pos[::-1])[::-1]  # tp[k]: positives in bins >= k, i.e. p >= edges[k]
    fp = np.cumsum(neg[::-1])[::-1]
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + (p - tp), 1), 0.0)
    f1[0] = -1.0  # k = 0 is not a threshold
    k = int(len(f1) - 1 - np.argmax(f1[::-1]))
    counts = ConfusionCounts(tp=int(tp[k]), fp=int(fp[k]), tn=n - int(fp[k]), fn=p - int(tp[k]))
    return float(bin_edges(len(pos))[k]), counts


def average_precision(curves: Curves) -> float:
    """Area under the PR curve as the step sum over recall increments (sklearn's definition)."""
    recall = curves.tpr
    if not np.isfinite(recall).all():
        return float("nan")
    d_recall = np.diff(recall)
    prec = np.nan_to_num(curves.precision[1:], nan=0.0)
    return float(np.sum(d_recall * prec))


class MetricAccumulator:
    """Host-side running sums of `batch_statistics`; O(num_bins) memory.

    Typical use::

        acc = MetricAccumulator(threshold=0.5)
        for batch in batches:
            acc.update(stats_fn(probs, batch["mask"], batch["label"], batch["valid"]))
        report = acc.summary()
    """

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, num_bins: int = DEFAULT_NUM_BINS
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
        if num_bins < 3:
            raise ValueError(f"num_bins must be >= 3, got {num_bins}.")
        self.threshold = float(threshold)
        self.num_bins = int(num_bins)
        self.pixel = ConfusionCounts()
        self.detection = ConfusionCounts()
        z = np.zeros(self.num_bins, np.int64)
        self.hists = {
            k: z.copy() for k in ("pixel_pos", "pixel_neg", "detection_pos", "detection_neg")
        }
        # Per-image IoU / DSC sums (float64) and image counts: `PER_IMAGE_KEYS`.
        self.per_image = dict.fromkeys(PER_IMAGE_KEYS, 0.0)

    @property
    def num_images(self) -> int:
        return self.detection.total

    def update(self, stats: Mapping[str, Any]) -> None:
        """Adds one batch's `batch_statistics` (device or NumPy arrays)."""
        stats = jax.device_get(dict(stats))
        for level in LEVELS:
            add = ConfusionCounts(*(int(stats[f"{level}_{k}"]) for k in COUNT_KEYS))
            setattr(self, level, getattr(self, level) + add)
        for k in self.hists:
            h = np.asarray(stats[f"{k}_hist"], np.int64)
            if h.shape != (self.num_bins,):
                raise ValueError(
                    f"Histogram {k} has shape {h.shape}, expected ({self.num_bins},): "
                    "batch_statistics and the accumulator must use the same num_bins."
                )
            self.hists[k] += h
        for k in PER_IMAGE_KEYS:
            self.per_image[k] += float(np.asarray(stats.get(k, 0.0), np.float64))

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """The accumulator of both test sets together (cumulative over folds)."""
        if (self.threshold, self.num_bins) != (other.threshold, other.num_bins):
            raise ValueError("Cannot merge accumulators with different threshold or num_bins.")
        out = MetricAccumulator(self.threshold, self.num_bins)
        out.pixel, out.detection = self.pixel + other.pixel, self.detection + other.detection
        out.hists = {k: self.hists[k] + other.hists[k] for k in self.hists}
        out.per_image = {k: self.per_image[k] + other.per_image[k] for k in PER_IMAGE_KEYS}
        return out

    def curves(self, level: str) -> Curves:
        return curves_from_histograms(self.hists[f"{level}_pos"], self.hists[f"{level}_neg"])

    def summary(self, z: float = Z_95) -> dict[str, Any]:
        """JSON-ready results: per level, metrics with CIs, AUC (+ bin error), AP, counts."""
        out: dict[str, Any] = {
            "threshold": self.threshold,
            "num_bins": self.num_bins,
            "auc_bins": f"uniform in logit(p) on [-{LOGIT_RANGE:g}, {LOGIT_RANGE:g}] + 2 tails",
            "num_images": self.num_images,
            "definitions": METRIC_DEFINITIONS,
        }
        for level in LEVELS:
            counts, key = getattr(self, level), level
            metrics = counts.metrics_with_ci(z)
            auc, err = auc_from_histograms(self.hists[f"{key}_pos"], self.hists[f"{key}_neg"])
            metrics["auc"] = {
                "value": auc,
                "ci95": confidence_radius(auc, counts.total, z),
                "n": counts.total,
                "bin_error": err,
            }
            metrics["average_precision"] = {"value": average_precision(self.curves(key))}
            if level == "pixel":
                metrics.update(self.per_image_metrics(z))
            out[level] = {"metrics": metrics, "confusion": counts.to_dict()}
        return out

    def per_image_metrics(self, z: float = Z_95) -> dict[str, dict[str, float]]:
        """`iou_per_image` / `dsc_per_image`: means over images with paper 2's CI, N = images.

        (`iou` / `dsc` of `summary()` are the pooled ones: one ratio of counts summed
        over every pixel of every image.)"""
        n = int(round(self.per_image["image_count"]))
        out = {}
        for name in ("iou", "dsc"):
            mean = self.per_image[f"image_{name}_sum"] / n if n else float("nan")
            out[f"{name}_per_image"] = {
                "value": mean,
                "ci95": confidence_radius(mean, n, z),
                "n": n,
                "empty_images": int(round(self.per_image["image_empty"])),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """Lossless state (counts and histograms), to merge folds later without re-running."""
        return {
            "threshold": self.threshold,
            "num_bins": self.num_bins,
            "pixel": self.pixel.to_dict(),
            "detection": self.detection.to_dict(),
            "hists": {k: v.tolist() for k, v in self.hists.items()},
            "per_image": dict(self.per_image),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricAccumulator:
        acc = cls(float(d["threshold"]), int(d["num_bins"]))
        acc.pixel = ConfusionCounts.from_dict(d["pixel"])
        acc.detection = ConfusionCounts.from_dict(d["detection"])
        acc.hists = {k: np.asarray(v, np.int64) for k, v in d["hists"].items()}
        if "per_image" in d:  # states saved before per-image IoU/DSC existed lack it
            acc.per_image = {k: float(d["per_image"][k]) for k in PER_IMAGE_KEYS}
        return acc


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """`MetricAccumulator.summary()` as one flat dict: `{level}_{metric}` -> value (e.g.
    `pixel_f1`, `detection_sensitivity`) plus the confusion counts (`pixel_tp`, ...). The
    form used for TensorBoard scalars, the per-epoch history and `config.best_metric`."""
    out: dict[str, float] = {}
    for level in LEVELS:
        for name, m in summary[level]["metrics"].items():
            out[f"{level}_{name}"] = float(m["value"])
        for k, v in summary[level]["confusion"].items():
            out[f"{level}_{k}"] = int(v)
    return out


def fold_average(
    summaries: list[Mapping[str, Any]], *, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Mean and standard deviation over folds of every metric value in `summary()` outputs.

    Args:
      summaries: one `MetricAccumulator.summary()` per fold.
      extra: top-level scalar keys of the summaries averaged as well (e.g. "loss").

    Returns:
      {level: {metric: {"mean", "std", "folds"}}} and {key: {...}} for each `extra` key;
      non-finite fold values are left out of mean and std.
    """

    def stats(values: list[float]) -> dict[str, Any]:
        vals = np.asarray(values, float)
        finite = vals[np.isfinite(vals)]
        return {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
            "folds": [float(v) for v in vals],
        }

    if not summaries:
        raise ValueError("No fold results to average.")
    out: dict[str, Any] = {}
    for level in LEVELS:
        names = summaries[0][level]["metrics"].keys()
        out[level] = {
            name: stats([s[level]["metrics"][name]["value"] for s in summaries]) for name in names
        }
    for key in extra:
        out[key] = stats([s.get(key, float("nan")) for s in summaries])
    return out
