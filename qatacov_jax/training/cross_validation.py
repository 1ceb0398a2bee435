"""K-fold cross-validation: one run directory per fold plus fold-averaged results.

    WORKDIR/config.json        the CV configuration (its `fold` field is irrelevant)
    WORKDIR/fold_0 .. fold_K-1 ordinary run directories (resumable one by one)
    WORKDIR/results.json       per-fold held-out metrics, their mean and std, and pooled
                               metrics from the summed confusion counts (protocol `paper2`:
                               every fold tested on the same Test; CIs with N = its images)

Folds that already finished are not retrained (their results.json is read back), so an
interrupted CV resumes at the fold it stopped in.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections

from qatacov_jax.data import protocols
from qatacov_jax.metrics import MetricAccumulator, fold_average, shared_test_summary
from qatacov_jax.runtime import locking, storage
from qatacov_jax.training import cascade, rundir
from qatacov_jax.training.loop import train_and_evaluate


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
    k = int(config.data.num_folds)
    folds = list(range(k)) if folds is None else [int(f) for f in folds]
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise ValueError(f"Folds {bad} out of range for config.data.num_folds={k}.")
    workdir = Path(workdir).absolute()
    config = cascade.resolve(config)  # the cascaded scheme's lung model, recorded once
    cv_config = ml_collections.ConfigDict(config.to_dict())
    cv_config.fold = 0  # the CV directory's config is that of every fold but for `fold`
    rundir.validate_config(cv_config)  # before anything is written (docs/reliability.md)
    writer_process = jax.process_index() == 0
    if writer_process:
        storage.check_writable(workdir, "to --workdir")
    # The CV directory is locked for the whole run; each fold's run directory is locked
    # in turn by train_and_evaluate.
    with locking.run_dir_lock(workdir, purpose="cross-validate", enabled=writer_process):
        rundir.check_or_write_config(workdir, cv_config)
        per_fold: dict[int, dict[str, Any]] = {}
        for fold in folds:
            run_dir = workdir / f"fold_{fold}"
            fold_config = ml_collections.ConfigDict(config.to_dict())
            fold_config.fold = fold
            done = _fold_done(run_dir, fold_config)
            per_fold[fold] = done if done is not None else train_and_evaluate(fold_config, run_dir)

        summary = summarize(per_fold)
        summary["config"] = rundir.config_to_dict(cv_config)
        rundir.write_json(workdir / rundir.RESULTS_FILE, summary)
    return summary


def summarize(
    per_fold: dict[int, dict[str, Any]], *, shared_test: bool | None = None
) -> dict[str, Any]:
    """Fold averages and pooled results of the folds' final validations.

    Each fold's `results.json` holds the counts and histograms of its final validation
    (`final_state`, a `MetricAccumulator`); the summary averages their summaries with
    `metrics.fold_average` (as `scripts/evaluate.py` does for a CV run) and pools them by
    merging the accumulators (summed confusion matrices, CIs over all held-out samples).

    With `shared_test` (protocol `paper2`: every fold's model is tested on the same Test
    images) the pooled counts sum K predictions of each test image, so their CIs use N =
    the test images (paper 2's "N is the number of test samples"), not K times as many.
    None = read it from the folds' configurations (`data.protocols.tests_on_shared_split`).

    Returns:
      `folds`, `per_fold` (each fold's flat final metrics), `mean` / `std` (flat keys such
      as `pixel_f1`, `detection_sensitivity`, `loss`) and `pooled` (the merged
      accumulator's summary: per level `metrics` with CIs and `confusion`).
    """
    done = {f: r for f, r in sorted(per_fold.items()) if r.get("final") and r.get("final_state")}
    if not done:
        raise ValueError("No fold has final results to average.")
    accs = {f: MetricAccumulator.from_dict(r["final_state"]) for f, r in done.items()}
    summaries = []
    for f, acc in accs.items():
        summaries.append({**acc.summary(), "loss": done[f]["final"]["loss"]})
    average = fold_average(summaries, extra=("loss",))
    mean, std = {"loss": average["loss"]["mean"]}, {"loss": average["loss"]["std"]}
    for level in ("pixel", "detection"):
        for name, stats in average[level].items():
            mean[f"{level}_{name}"], std[f"{level}_{name}"] = stats["mean"], stats["std"]
    pooled = functools.reduce(MetricAccumulator.merge, accs.values())
    if shared_test is None:
        shared_test = all(
            protocols.tests_on_shared_split(
                (r.get("config") or {}).get("data") or {}, (r.get("final") or {}).get("split")
            )
            for r in done.values()
        )
    return {
        "folds": sorted(done),
        "per_fold": {str(f): r["final"] for f, r in done.items()},
        "mean": mean,
        "std": std,
        "pooled": shared_test_summary(pooled, len(accs)) if shared_test else pooled.summary(),
    }
