"""Evaluation figures (matplotlib, Agg backend: no display needed): PR and ROC curves and
confusion matrices, like the paper's Figs. 6-7 and Table 4."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qatacov_jax.metrics import ConfusionCounts, Curves  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_pr_roc(
    curves: Mapping[str, Curves],
    path: Path,
    *,
    title: str = "",
    aucs: Mapping[str, float] | None = None,
) -> Path:
    """Precision-recall (left) and ROC (right) curves, one line per entry of `curves`.

    Args:
      curves: label -> `metrics.Curves` (e.g. {"U-Net DenseNet-121": acc.curves("pixel")}).
      path: PNG to write.
      aucs: optional label -> AUC shown in the ROC legend.
    """
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(10, 4.5))
    for label, c in curves.items():
        ok = np.isfinite(c.precision)
        ax_pr.plot(c.tpr[ok], c.precision[ok], label=label)
        auc = (aucs or {}).get(label)
        ax_roc.plot(c.fpr, c.tpr, label=f"{label} (AUC {auc:.4f})" if auc is not None else label)
    ax_pr.set(
        xlabel="Recall (sensitivity)",
        ylabel="Precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Precision-Recall",
    )
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax_roc.set(
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="ROC",
    )
    for ax in (ax_pr, ax_roc):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(
    counts: ConfusionCounts,
    path: Path,
    *,
    labels: tuple[str, str] = ("Control", "COVID-19"),
    title: str = "",
) -> Path:
    """2x2 confusion matrix (rows: ground truth, columns: predicted), as the paper's Table 4."""
    m = np.array([[counts.tn, counts.fp], [counts.fn, counts.tp]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(m, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{m[i, j]:,}",
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
                fontsize=12,
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=labels,
        yticklabels=labels,
        xlabel="Predicted",
        ylabel="Ground truth",
        title=title,
    )
    return _save(fig, path)
