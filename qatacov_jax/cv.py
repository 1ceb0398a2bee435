"""K-fold cross-validation: one run directory per fold plus fold-averaged results.

    WORKDIR/config.json        the CV configuration (its `fold` field is irrelevant)
    WORKDIR/fold_0 .. fold_K-1 ordinary run directories (resumable one by one)
    WORKDIR/results.json       per-fold held-out metrics, their mean and std, and pooled
                               metrics from the summed confusion counts

Folds that already finished are not retrained (their results.json is read back), so an
interrupted CV resumes at the fold it stopped in.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from qatacov_jax import checkpoint as ckpt
from qatacov_jax.metrics import ConfusionCounts

_COUNTS = ("tp", "fp", "tn", "fn")


def _fold_done(run_dir: Path, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    # A finished fold counts only if it ran as long as asked (num_epochs may have grown).
    if results.get("epochs") != int(config.num_epochs):
        return None
    return results


def cross_validate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    folds: list[int] | None = None,
) -> dict[str, Any]:
    """Trains and evaluates every fold of `config.data.num_folds`, then averages.

    Args:
      config: a training config (its `fold` is overwritten per fold).
      workdir: the CV directory.
      folds: a subset of folds to run (default all); the summary covers those run.

    Returns:
      The contents of `workdir/results.json`.
    """
    from qatacov_jax.train import train_and_evaluate

    k = int(config.data.num_folds)
    folds = list(range(k)) if folds is None else [int(f) for f in folds]
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise ValueError(f"Folds {bad} out of range for config.data.num_folds={k}.")
    workdir = Path(workdir).absolute()
    cv_config = ml_collections.ConfigDict(config.to_dict())
    cv_config.fold = 0  # the CV directory's config is that of every fold but for `fold`
    ckpt.check_or_write_config(workdir, cv_config)

    per_fold: dict[int, dict[str, Any]] = {}
    for fold in folds:
        run_dir = workdir / f"fold_{fold}"
        fold_config = ml_collections.ConfigDict(config.to_dict())
        fold_config.fold = fold
        done = _fold_done(run_dir, fold_config)
        per_fold[fold] = done if done is not None else train_and_evaluate(fold_config, run_dir)

    summary = summarize(per_fold)
    summary["config"] = ckpt.config_to_dict(cv_config)
    ckpt.write_json(workdir / "results.json", summary)
    return summary


def summarize(per_fold: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over folds of every final held-out metric, and pooled confusion metrics."""
    finals = {f: r["final"] for f, r in sorted(per_fold.items()) if r.get("final")}
    if not finals:
        raise ValueError("No fold has final results to average.")
    keys = sorted(
        {k for m in finals.values() for k, v in m.items() if isinstance(v, int | float)}
        - {f"{p}_{c}" for p in ("pixel", "detection") for c in _COUNTS}
    )
    mean, std = {}, {}
    for key in keys:
        vals = [float(m[key]) for m in finals.values() if m.get(key) is not None]
        vals = [v for v in vals if math.isfinite(v)]
        mean[key] = float(np.mean(vals)) if vals else float("nan")
        std[key] = float(np.std(vals)) if vals else float("nan")
    pooled = {}
    for prefix in ("pixel", "detection"):
        counts = ConfusionCounts()
        for m in finals.values():
            counts = counts + ConfusionCounts(*(int(m[f"{prefix}_{c}"]) for c in _COUNTS))
        pooled[prefix] = {"counts": counts.to_dict(), **counts.metrics_with_ci()}
    return {
        "folds": sorted(finals),
        "per_fold": {str(f): m for f, m in finals.items()},
        "mean": mean,
        "std": std,
        "pooled": pooled,
    }
