"""Infection maps vs activation maps: a measured localisation comparison (paper 1's claim).

`compare_localization(segmenter_run, classifier_run)` streams one split through both models
in one jitted, data-parallel step per batch: the segmenter's infection map (its per-pixel
probabilities) and the classifier's Grad-CAM and Grad-CAM++ maps (`inference.cam`, maps in
[0, 1]) are scored against the ground-truth infection masks on the devices, and only
sufficient statistics come back, so memory stays flat however large the split. Per method:

* pixel F1 / IoU (and the other confusion metrics) at the decision threshold (0.5) and at the
  best global threshold (the one of the bin-edge thresholds with the highest F1), read
  off the probability histograms `metrics.batch_statistics` keeps for AUC (exact at the bin
  edges), on all images and on the COVID-19 images alone;
* pointing game: the share of COVID-19 images whose map peaks inside the infected region;
* energy inside the mask: the share of the map's mass on infected pixels, averaged over the
  COVID-19 images.

"COVID-19 images" are those labelled COVID-19 with at least one infected pixel in the mask at
the model input size (where localisation is defined). Image-level detection compares the
classifier (softmax COVID-19 probability >= 0.5) with the segmentation rule (any pixel >=
0.5). Every score carries the paper's 95% CI, r = 1.96 sqrt(m (1 - m) / N)
(`metrics.confidence_radius`; for the mean energy share, whose values lie in [0, 1],
m (1 - m) bounds the variance, so the radius is conservative).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax import data
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.evaluation.localization_report import (
    ExampleCollector,
    markdown_report,
    write_figures,
)
from qatacov_jax.evaluation.runner import split_batches
from qatacov_jax.inference.cam import METHODS as CAM_METHODS
from qatacov_jax.inference.cam import class_activation_maps, covid_probability
from qatacov_jax.metrics import (
    DEFAULT_NUM_BINS,
    DEFAULT_THRESHOLD,
    MetricAccumulator,
    auc_from_histograms,
    batch_statistics,
    best_f1_threshold,
    confidence_radius,
)
from qatacov_jax.models import CLASSIFIER_ARCH, foreground_probability
from qatacov_jax.models.folding import fold_batchnorm, make_forward
from qatacov_jax.runtime.files import json_ready, write_json, write_text
from qatacov_jax.runtime.sharding import make_mesh, replicate
from qatacov_jax.training.rundir import config_fold, load_model
from qatacov_jax.training.steps import pipelined

log = logging.getLogger(__name__)

SEGMENTATION_METHOD = "infection_map"
METHODS = (SEGMENTATION_METHOD, *CAM_METHODS)
SUBSETS = ("covid19", "all")
OUTPUTS = ("localization.json", "localization.md", "figures")
# config.data fields that decide which images (and at which size) a split holds: both runs
# must agree on them to be compared on the same test images.
SAME_IMAGES_FIELDS = (
    "dataset",
    "image_size",
    "target",
    "num_folds",
    "fold_seed",
    "val_fraction",
    "stored_size",
    "control_group",
    "synthetic",
)


def localization_statistics(
    maps: Mapping[str, jax.Array],
    masks: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    classifier_prob: jax.Array,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict[str, Any]:
    """Sufficient statistics of every localisation score for one batch (pure, jit-friendly).

    Args:
      maps: method -> (B, H, W) map in [0, 1].
      masks: (B, H, W, 1) ground truth in {0, 1}.
      labels: (B,) int, 1 = COVID-19.
      valid: (B,) bool, False on padding rows.
      classifier_prob: (B,) the classifier's COVID-19 probability.

    Returns:
      `localisable` (B,) bool (valid COVID-19 image with infected pixels), `classifier`
      (`batch_statistics` of the classifier: detection level only), and per method:
      `batch_statistics` per subset ("covid19", "all"), `pointing_hits` and `energy_sum`
      (scalars over localisable images), per image `energy` (B,) and `peak_hit` (B,).
    """
    b = labels.shape[0]
    truth = masks.reshape(b, -1) > 0.5
    localisable = valid & (labels.reshape(b) == 1) & jnp.any(truth, axis=1)
    kw = {"threshold": threshold, "num_bins": num_bins}
    out: dict[str, Any] = {
        "localisable": localisable,
        "classifier": batch_statistics(classifier_prob, None, labels, valid, **kw),
        "methods": {},
    }
    for name, m in maps.items():
        flat = m.reshape(b, -1).astype(jnp.float32)
        peak = jnp.argmax(flat, axis=1)  # the first pixel of the maximum
        hit = jnp.take_along_axis(truth, peak[:, None], axis=1)[:, 0]
        mass = jnp.sum(flat, axis=1)
        inside = jnp.sum(jnp.where(truth, flat, 0.0), axis=1)
        # An all-zero map puts no mass in the mask: share 0, not NaN.
        energy = jnp.where(mass > 0, inside / jnp.where(mass > 0, mass, 1.0), 0.0)
        out["methods"][name] = {
            "covid19": batch_statistics(m, masks, labels, localisable, **kw),
            "all": batch_statistics(m, masks, labels, valid, **kw),
            "pointing_hits": jnp.sum((hit & localisable).astype(jnp.int32)),
            "energy_sum": jnp.sum(jnp.where(localisable, energy, 0.0)),
            "energy": energy,
            "peak_hit": hit,
        }
    return out


def make_localization_step(
    segmenter: nnx.Module,
    seg_prep: Preprocessing,
    classifier: nnx.Module,
    cls_prep: Preprocessing,
    mesh: Mesh,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
) -> Callable[[Mapping[str, jax.Array]], tuple[dict[str, Any], dict[str, jax.Array]]]:
    """One jitted step over a batch of images in [0, 1]: both models, all maps, all statistics.

    Both models are split once (BatchNorm folded, exact in eval mode) and their states
    replicated; each applies its own preprocessing inside the step, so one data pass (in
    'unit' preprocessing) serves two models trained with different input normalisations.

    Returns:
      step(batch) -> (`localization_statistics`, {method: (B, H, W) maps}) for a batch of
      `data.eval_iterator` with 'unit' preprocessing (`image`, `mask`, `label`, `valid`).
    """
    seg_forward, seg_state = make_forward(segmenter)
    classifier.eval()
    cls_def, cls_state = nnx.split(fold_batchnorm(classifier))
    states = replicate({"seg": seg_state, "cls": cls_state}, mesh)

    @jax.jit
    def step(states, images, masks, labels, valid):
        logits = seg_forward(states["seg"], seg_prep(images))
        seg = foreground_probability(logits)[..., 0]
        cams, cls_logits = class_activation_maps(
            nnx.merge(cls_def, states["cls"]), cls_prep(images), methods=CAM_METHODS
        )
        maps = {SEGMENTATION_METHOD: seg, **cams}
        stats = localization_statistics(
            maps,
            masks,
            labels,
            valid,
            covid_probability(cls_logits),
            threshold=threshold,
            num_bins=num_bins,
        )
        return stats, maps

    def run(batch: Mapping[str, jax.Array]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        return step(states, batch["image"], batch["mask"], batch["label"], batch["valid"])

    return run


class LocalizationAccumulator:
    """Host-side sums of `localization_statistics`; O(num_bins) memory per method."""

    def __init__(
        self,
        methods: tuple[str, ...] = METHODS,
        threshold: float = DEFAULT_THRESHOLD,
        num_bins: int = DEFAULT_NUM_BINS,
    ) -> None:
        self.methods, self.threshold, self.num_bins = methods, threshold, num_bins
        self.pixel = {
            m: {s: MetricAccumulator(threshold, num_bins) for s in SUBSETS} for m in methods
        }
        self.classifier = MetricAccumulator(threshold, num_bins)
        self.pointing_hits = dict.fromkeys(methods, 0)
        self.energy_sum = dict.fromkeys(methods, 0.0)
        self.num_localisable = 0

    def update(self, stats: Mapping[str, Any]) -> None:
        """Adds one batch's `localization_statistics` (fetched to the host)."""
        self.num_localisable += int(np.sum(stats["localisable"]))
        self.classifier.update(stats["classifier"])
        for m in self.methods:
            s = stats["methods"][m]
            for subset in SUBSETS:
                self.pixel[m][subset].update(s[subset])
            self.pointing_hits[m] += int(s["pointing_hits"])
            self.energy_sum[m] += float(np.float64(s["energy_sum"]))

    @property
    def num_images(self) -> int:
        return self.classifier.num_images

    def _pixel(self, acc: MetricAccumulator) -> dict[str, Any]:
        t, best = best_f1_threshold(acc.hists["pixel_pos"], acc.hists["pixel_neg"])
        auc, err = auc_from_histograms(acc.hists["pixel_pos"], acc.hists["pixel_neg"])
        return {
            "at_threshold": {"threshold": self.threshold, "metrics": acc.pixel.metrics_with_ci()},
            "best": {"threshold": t, "metrics": best.metrics_with_ci()},
            "auc": {"value": auc, "bin_error": err},
            "confusion_at_threshold": acc.pixel.to_dict(),
            "confusion_best": best.to_dict(),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready scores of every method, and image-level detection (module docstring)."""
        n = self.num_localisable
        out: dict[str, Any] = {
            "threshold": self.threshold,
            "num_bins": self.num_bins,
            "num_images": self.num_images,
            "num_covid19_localised": n,
            "methods": {},
        }
        for m in self.methods:
            pointing = self.pointing_hits[m] / n if n else float("nan")
            energy = self.energy_sum[m] / n if n else float("nan")
            out["methods"][m] = {
                "pixel": {s: self._pixel(self.pixel[m][s]) for s in SUBSETS},
                "pointing_game": {
                    "value": pointing,
                    "ci95": confidence_radius(pointing, n),
                    "n": n,
                    "hits": self.pointing_hits[m],
                },
                "energy_inside_mask": {
                    "value": energy,
                    "ci95": confidence_radius(energy, n),
                    "n": n,
                },
            }
        seg_detection = self.pixel[SEGMENTATION_METHOD]["all"].detection
        out["detection"] = {
            "classifier": {
                "rule": f"softmax COVID-19 probability >= {self.threshold}",
                "metrics": self.classifier.detection.metrics_with_ci(),
                "confusion": self.classifier.detection.to_dict(),
            },
            SEGMENTATION_METHOD: {
                "rule": f"any pixel of the infection map >= {self.threshold}",
                "metrics": seg_detection.metrics_with_ci(),
                "confusion": seg_detection.to_dict(),
            },
        }
        return out


def check_same_images(seg_config: Any, cls_config: Any) -> None:
    """Raises ValueError unless both runs read the same images at the same size (same
    dataset, split definition, fold and input size)."""
    diffs = [
        f"data.{k}: {seg_config.data.get(k)!r} (segmenter) != {cls_config.data.get(k)!r} "
        "(classifier)"
        for k in SAME_IMAGES_FIELDS
        if json_ready(seg_config.data.get(k)) != json_ready(cls_config.data.get(k))
    ]
    if seg_config.get("fold") != cls_config.get("fold"):
        diffs.append(f"fold: {seg_config.get('fold')!r} != {cls_config.get('fold')!r}")
    if diffs:
        raise ValueError(
            "The segmenter and the classifier were trained on different data, so they cannot "
            "be compared on the same test images:\n  " + "\n  ".join(diffs)
        )


def _run_info(run_dir: Path, config: Any, which: str) -> dict[str, Any]:
    m = config.model
    return {
        "run_dir": str(run_dir),
        "arch": m.get("arch"),
        "encoder": m.get("encoder"),
        "checkpoint": which,
    }


def compare_localization(
    segmenter_dir: str | Path,
    classifier_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
    batch_size: int | None = None,
    which: str = "best",
    data_dir: str | None = None,
    num_examples: int = 8,
    num_worst: int = 4,
    overwrite: bool = False,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Scores infection maps, Grad-CAM and Grad-CAM++ on the same split; writes the reports.

    Args:
      segmenter_dir: a segmentation run directory (scripts/train.py --workdir).
      classifier_dir: a classifier run directory (`model.arch == "classifier"`) trained on
        the same data (`check_same_images`).
      out_dir: receives `localization.json`, `localization.md` and `figures/` (the first
        `num_examples` images, and the `num_worst` COVID-19 images with the least map mass
        inside the mask for each method: X-ray | ground truth | Grad-CAM | Grad-CAM++ |
        infection map).
      split: 'test' or 'eval' (the held-out fold of the runs' fold).
      data_dir: override of the runs' `config.data.data_dir`.

    Returns:
      The contents of localization.json.

    Raises:
      FileExistsError: earlier outputs in `out_dir` and not `overwrite`.
      ValueError: wrong kinds of run, or runs trained on different data.
    """
    out = Path(out_dir)
    for name in OUTPUTS:
        if (out / name).exists() and not overwrite:
            raise FileExistsError(
                f"{out / name} already exists; pass --overwrite or choose another --out."
            )
    segmenter, seg_cfg, seg_prep = load_model(segmenter_dir, which=which)
    classifier, cls_cfg, cls_prep = load_model(classifier_dir, which=which)
    if seg_cfg.model.get("arch") == CLASSIFIER_ARCH:
        raise ValueError(f"--segmenter {segmenter_dir} is a classifier run; pass a segmenter.")
    if cls_cfg.model.get("arch") != CLASSIFIER_ARCH:
        raise ValueError(
            f"--classifier {classifier_dir} is a {cls_cfg.model.get('arch')} segmentation run; "
            "train one with configs/classifier_*.py."
        )
    check_same_images(seg_cfg, cls_cfg)
    if data_dir is not None:
        seg_cfg.data.data_dir = data_dir
    mesh = mesh or make_mesh()
    # 'unit' preprocessing: images in [0, 1]; each model applies its own on the devices.
    batches, total, _ = split_batches(
        seg_cfg, split, batch_size, Preprocessing.from_mode("unit"), mesh
    )
    fold = config_fold(seg_cfg)
    names = data.example_filenames(seg_cfg.data, fold=fold, split=split)
    log.info("Comparing localisation on %d %s images", total, split)
    step = make_localization_step(
        segmenter, seg_prep, classifier, cls_prep, mesh, threshold=threshold, num_bins=num_bins
    )
    acc = LocalizationAccumulator(METHODS, threshold, num_bins)
    examples = ExampleCollector(METHODS, num_examples, num_worst)
    try:
        for batch, (stats, maps) in pipelined(step, batches):
            stats = jax.device_get(stats)
            acc.update(stats)
            examples.add(batch, maps, stats, names)
    finally:
        batches.close()
    if acc.num_images != total:
        raise RuntimeError(f"Scored {acc.num_images} images but the split holds {total}.")
    summary = acc.summary()
    summary.update(
        split=split,
        fold=fold,
        dataset=seg_cfg.data.get("dataset"),
        image_size=seg_cfg.data.get("image_size"),
        segmenter=_run_info(Path(segmenter_dir), seg_cfg, which),
        classifier=_run_info(Path(classifier_dir), cls_cfg, which),
        worst_criterion="lowest energy inside the mask (COVID-19 images)",
    )
    figures = write_figures(examples, out / "figures")
    summary["figures"] = [str(p.relative_to(out)) for p in figures]
    summary = json_ready(summary)
    write_json(out / "localization.json", summary, sort_keys=True)
    write_text(out / "localization.md", markdown_report(summary))
    return summary
