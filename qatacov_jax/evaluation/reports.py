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
_LABELS = {
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
    95% CI), 4 (detection confusion matrix); plus per-fold rows for CV runs."""
    det, pix = summary["detection"], summary["pixel"]
    lines = [
        f"# Evaluation: {info.get('model')} {info.get('encoder')} ({info.get('split')} split)",
        "",
    ]
    lines += [
        f"Threshold {summary['threshold']}; AUC from {summary['num_bins']} probability bins "
        f"({summary.get('auc_bins', 'uniform')}). 95% CI r = 1.96 sqrt(m(1-m)/N), N = "
        "positives (sensitivity), negatives (specificity), all samples (others). Pooled "
        "IoU/DSC: one ratio of the pixel counts summed over all images (paper 1); per-image "
        "IoU/DSC: the mean of each image's (paper 2), CI with N = images.",
        "",
        "## Table 1: test samples",
        "",
    ]
    folds = [(f"fold {i.get('fold')}", s) for s, i in per_fold]
    cols = [*(name for name, _ in folds), "total"]
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

    # The paper's column order: the confusion metrics with AUC before IoU and DSC.
    at = METRIC_NAMES.index("iou")
    seg_names = [*METRIC_NAMES[:at], "auc", *METRIC_NAMES[at:]]
    head = "| Model | Encoder | Frozen | " + " | ".join(_LABELS[n] for n in seg_names) + " |"
    sep = "|---" * (3 + len(seg_names)) + "|"
    lines += ["", "## Table 2: infected region segmentation (pixel level, %)", "", head, sep]
    lines.append(
        "| "
        + " | ".join(_model_cells(info) + [_pct(pix["metrics"][n]["value"]) for n in seg_names])
        + " |"
    )
    auc = pix["metrics"]["auc"]
    if math.isfinite(auc["value"]):
        lines += [
            "",
            f"Pixel AUC bin error: at most {100 * auc['bin_error']:.4f} percentage points.",
        ]
    if "iou_per_image" in pix["metrics"]:
        iou, dsc = pix["metrics"]["iou_per_image"], pix["metrics"]["dsc_per_image"]
        ci = lambda m: "" if not math.isfinite(m["ci95"]) else f" ± {m['ci95']:.4f}"  # noqa: E731
        lines += [
            "",
            "## Paper-2 style: infection segmentation, per-image IoU and DSC (%, ± 95% CI)",
            "",
            f"N = {iou['n']:,} images ({iou['empty_images']:,} with neither ground-truth nor "
            "predicted pixels, which count 100%).",
            "",
            "| Model | Encoder | Frozen | IoU (per image) | DSC (per image) |",
            "|---|---|---|---|---|",
            "| "
            + " | ".join(
                _model_cells(info) + [_pct(iou["value"]) + ci(iou), _pct(dsc["value"]) + ci(dsc)]
            )
            + " |",
        ]

    det_names = ["sensitivity", "specificity", "precision", "f1", "f2", "accuracy"]
    lines += ["", "## Table 3: COVID-19 detection (%, ± 95% CI as a fraction)", ""]
    lines += ["| Model | Encoder | Frozen | " + " | ".join(_LABELS[n] for n in det_names) + " |"]
    lines += ["|---" * (3 + len(det_names)) + "|"]
    cells = []
    for n in det_names:
        v = det["metrics"][n]
        ci = "" if not math.isfinite(v["ci95"]) else f" ± {v['ci95']:.4f}"
        cells.append(_pct(v["value"]) + ci)
    lines.append("| " + " | ".join(_model_cells(info) + cells) + " |")

    c = det["confusion"]
    title = "cumulative " if per_fold else ""
    lines += [
        "",
        f"## Table 4: {title}confusion matrix of COVID-19 detection",
        "",
        "| Ground truth \\ Predicted | Control | COVID-19 |",
        "|---|---|---|",
        f"| Control | {c['tn']:,} | {c['fp']:,} |",
        f"| COVID-19 | {c['fn']:,} | {c['tp']:,} |",
    ]
    if per_fold:
        lines += ["", "## Per fold (%)", ""]
        names = ["sensitivity", "specificity", "precision", "f1", "f2", "accuracy"]
        lines += ["| Fold | Level | " + " | ".join(_LABELS[n] for n in names) + " |"]
        lines += ["|---" * (2 + len(names)) + "|"]
        for s, i in per_fold:
            for level in ("pixel", "detection"):
                vals = [_pct(s[level]["metrics"][n]["value"]) for n in names]
                lines.append(f"| {i.get('fold')} | {level} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


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
) -> dict[str, Any]:
    """Writes metrics.json, tables.md and the figures for one (possibly cumulative) result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = acc.summary()
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
