"""Evaluation reports: `metrics.json`, `tables.md` shaped like the paper's Tables 1-4, PR/ROC
curves and confusion matrices (PNG)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qatacov_jax.evaluation import plots
from qatacov_jax.metrics import LEVELS, METRIC_NAMES, MetricAccumulator, fold_average
from qatacov_jax.runtime.files import write_json, write_text

OUTPUTS = (
    "metrics.json",
    "tables.md",
    "pr_roc_pixel.png",
    "pr_roc_detection.png",
    "confusion_detection.png",
    "confusion_pixel.png",
)
# Column headings of each metric, as the papers' tables print them.
METRIC_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1-Score",
    "f2": "F2-Score",
    "accuracy": "Accuracy",
    "auc": "AUC",
    "iou": "IoU (pooled)",
    "dsc": "DSC (pooled)",
    "iou_per_image": "IoU (per image)",
    "dsc_per_image": "DSC (per image)",
}


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f}"


def _model_cells(info: Mapping[str, Any]) -> list[str]:
    frozen = "✓" if info.get("frozen") else "×"
    return [str(info.get("model")), str(info.get("encoder")), frozen]


def markdown_tables(
    summary: Mapping[str, Any],
    info: Mapping[str, Any],
    per_fold: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]] = (),
) -> str:
    """Tables shaped like the paper's: 1 (test samples), 2 (pixel-level), 3 (detection with
    95% CI), 4 (detection confusion matrix); plus per-fold rows for CV runs.

    `summary` and each fold's are `MetricAccumulator.summary()` dicts; `info` names the model
    (`model`, `encoder`, `frozen`, `split`); `per_fold` pairs each fold's summary and info.
    """
    lines = _preamble(summary, info)
    lines += _samples_table(summary, per_fold)
    lines += _pixel_table(summary["pixel"], info)
    lines += _per_image_table(summary["pixel"], info)
    lines += _detection_table(summary["detection"], info)
    lines += _confusion_table(summary["detection"], cumulative=bool(per_fold))
    lines += _per_fold_table(per_fold)
    return "\n".join(lines) + "\n"


# Detection metrics, in the paper's column order (Table 3 and the per-fold table).
_DETECTION_NAMES = ["sensitivity", "specificity", "precision", "f1", "f2", "accuracy"]


def _ci(metric: Mapping[str, Any]) -> str:
    """The text after a metric's value: its 95% CI half-width (a fraction), or nothing."""
    return "" if not math.isfinite(metric["ci95"]) else f" ± {metric['ci95']:.4f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _preamble(summary: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """The title and what the numbers mean (threshold, AUC bins, CIs, pooled vs per image)."""
    return [
        f"# Evaluation: {info.get('model')} {info.get('encoder')} ({info.get('split')} split)",
        "",
        f"Threshold {summary['threshold']}; AUC from {summary['num_bins']} probability bins "
        f"({summary.get('auc_bins', 'uniform')}). 95% CI r = 1.96 sqrt(m(1-m)/N), N = "
        "positives (sensitivity), negatives (specificity), all samples (others). Pooled "
        "IoU/DSC: one ratio of the pixel counts summed over all images (paper 1); per-image "
        "IoU/DSC: the mean of each image's (paper 2), CI with N = images.",
        "",
    ]


def _samples_table(
    summary: Mapping[str, Any], per_fold: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> list[str]:
    """Table 1: COVID-19, control and total samples per fold and in all."""
    folds = [(f"fold {i.get('fold')}", s) for s, i in per_fold]
    cols = [*(name for name, _ in folds), "total"]
    lines = ["## Table 1: test samples", ""]
    lines += ["| Data | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    all_rows = [*(s for _, s in folds), summary]
    for label, key in (("COVID-19", "pos"), ("Control", "neg"), ("Total", "all")):
        cells = []
        for s in all_rows:
            c = s["detection"]["confusion"]
            n = {"pos": c["tp"] + c["fn"], "neg": c["tn"] + c["fp"]}
            n["all"] = n["pos"] + n["neg"]
            cells.append(f"{n[key]:,}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _pixel_table(pix: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """Table 2: pixel-level metrics (%), and the pixel AUC's binning error."""
    # The paper's column order: the confusion metrics with AUC before IoU and DSC.
    at = METRIC_NAMES.index("iou")
    seg_names = [*METRIC_NAMES[:at], "auc", *METRIC_NAMES[at:]]
    head = "| Model | Encoder | Frozen | " + " | ".join(METRIC_LABELS[n] for n in seg_names) + " |"
    sep = "|---" * (3 + len(seg_names)) + "|"
    lines = ["", "## Table 2: infected region segmentation (pixel level, %)", "", head, sep]
    lines.append(_row(_model_cells(info) + [_pct(pix["metrics"][n]["value"]) for n in seg_names]))
    auc = pix["metrics"]["auc"]
    if math.isfinite(auc["value"]):
        lines += [
            "",
            f"Pixel AUC bin error: at most {100 * auc['bin_error']:.4f} percentage points.",
        ]
    return lines


def _per_image_table(pix: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """Paper 2's per-image IoU and DSC with CIs; none for summaries without them."""
    if "iou_per_image" not in pix["metrics"]:
        return []
    iou, dsc = pix["metrics"]["iou_per_image"], pix["metrics"]["dsc_per_image"]
    return [
        "",
        "## Paper-2 style: infection segmentation, per-image IoU and DSC (%, ± 95% CI)",
        "",
        f"N = {iou['n']:,} images ({iou['empty_images']:,} with neither ground-truth nor "
        "predicted pixels, which count 100%).",
        "",
        "| Model | Encoder | Frozen | IoU (per image) | DSC (per image) |",
        "|---|---|---|---|---|",
        _row(_model_cells(info) + [_pct(iou["value"]) + _ci(iou), _pct(dsc["value"]) + _ci(dsc)]),
    ]


def _detection_table(det: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """Table 3: COVID-19 detection metrics (%) with their 95% CIs."""
    lines = ["", "## Table 3: COVID-19 detection (%, ± 95% CI as a fraction)", ""]
    lines += [
        "| Model | Encoder | Frozen | "
        + " | ".join(METRIC_LABELS[n] for n in _DETECTION_NAMES)
        + " |"
    ]
    lines += ["|---" * (3 + len(_DETECTION_NAMES)) + "|"]
    cells = [_pct(det["metrics"][n]["value"]) + _ci(det["metrics"][n]) for n in _DETECTION_NAMES]
    lines.append(_row(_model_cells(info) + cells))
    return lines


def _confusion_table(det: Mapping[str, Any], *, cumulative: bool) -> list[str]:
    """Table 4: the detection confusion matrix (summed over folds when `cumulative`)."""
    c = det["confusion"]
    title = "cumulative " if cumulative else ""
    return [
        "",
        f"## Table 4: {title}confusion matrix of COVID-19 detection",
        "",
        "| Ground truth \\ Predicted | Control | COVID-19 |",
        "|---|---|---|",
        f"| Control | {c['tn']:,} | {c['fp']:,} |",
        f"| COVID-19 | {c['fn']:,} | {c['tp']:,} |",
    ]


def _per_fold_table(per_fold: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[str]:
    """Each fold's pixel and detection metrics (%); none outside cross-validation."""
    if not per_fold:
        return []
    names = _DETECTION_NAMES
    lines = ["", "## Per fold (%)", ""]
    lines += ["| Fold | Level | " + " | ".join(METRIC_LABELS[n] for n in names) + " |"]
    lines += ["|---" * (2 + len(names)) + "|"]
    for s, i in per_fold:
        for level in ("pixel", "detection"):
            vals = [_pct(s[level]["metrics"][n]["value"]) for n in names]
            lines.append(f"| {i.get('fold')} | {level} | " + " | ".join(vals) + " |")
    return lines


def check_outputs_free(out_dir: Path, overwrite: bool, *, cv_folds: Sequence[str] = ()) -> None:
    """Refuses (FileExistsError naming the file) to replace earlier results without
    `overwrite`, and with it to replace files of a folder that is not an earlier evaluation
    output of ours (its metrics.json)."""
    for sub in ["", *cv_folds]:
        for name in (*OUTPUTS, "maps"):
            p = out_dir / sub / name
            if not p.exists() or (p.is_dir() and not any(p.iterdir())):
                continue
            if not overwrite:
                raise FileExistsError(
                    f"{p} already exists; refusing to overwrite earlier evaluation results. "
                    "Pass --overwrite or choose another --out."
                )
            if not _is_our_output(out_dir / sub):
                raise FileExistsError(
                    f"{p} already exists and {out_dir / sub} is not an earlier output of "
                    "scripts/evaluate.py (no metrics.json of ours in it); refusing to replace "
                    "it even with --overwrite. Choose another --out."
                )


def _is_our_output(directory: Path) -> bool:
    try:
        metrics = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and "info" in metrics and "state" in metrics


def write_outputs(
    out_dir: Path,
    acc: MetricAccumulator,
    info: Mapping[str, Any],
    per_fold: Sequence[tuple[MetricAccumulator, Mapping[str, Any]]] = (),
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes metrics.json, tables.md and the figures for one (possibly cumulative) result.

    `summary` replaces `acc.summary()` (the pooled summary of folds tested on the same
    images, whose CIs count each test image once: `metrics.shared_test_summary`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary or acc.summary()
    fold_summaries = [(a.summary(), i) for a, i in per_fold]
    result: dict[str, Any] = {**summary, "info": dict(info), "state": acc.to_dict()}
    if per_fold:
        result["folds"] = [{"info": dict(i), **s} for s, i in fold_summaries]
        result["fold_average"] = fold_average([s for s, _ in fold_summaries])
    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "tables.md", markdown_tables(summary, info, fold_summaries))

    name = f"{info.get('model')} {info.get('encoder')}"
    for level in LEVELS:
        key = level
        curves = {name: acc.curves(key)}
        aucs = {name: summary[level]["metrics"]["auc"]["value"]}
        if per_fold:
            for a, i in per_fold:
                label = f"fold {i.get('fold')}"
                curves[label] = a.curves(key)
                aucs[label] = a.summary()[level]["metrics"]["auc"]["value"]
        plots.plot_pr_roc(
            curves, out_dir / f"pr_roc_{level}.png", title=f"{name}: {level}", aucs=aucs
        )
    plots.plot_confusion(
        acc.detection, out_dir / "confusion_detection.png", title=f"{name}: detection"
    )
    plots.plot_confusion(
        acc.pixel,
        out_dir / "confusion_pixel.png",
        labels=("Background", "Infection"),
        title=f"{name}: pixels",
    )
    return result
