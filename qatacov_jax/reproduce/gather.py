"""Gathering a table: every run's results -> the paper's layout beside its printed values.

For each configuration the finished folds are combined as `scripts/cross_validate.py`
combines them (`training.cross_validation.summarize`: fold means and stds, and the
accumulators merged over all held-out samples), each column takes the aggregate the paper
reports (`Column.aggregate`), and its 95% CI (eq. 13), the paper's value and the difference
go beside it. Runs not finished are listed, never silently dropped: a row with missing folds
says how many it holds. Outputs: `WORKDIR/tables/<table>/table.{json,md,tex}` and, for a CV
configuration, its `results.json` (as `scripts/cross_validate.py` writes it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from qatacov_jax.metrics import MetricAccumulator, confidence_radius, flat_metrics
from qatacov_jax.models import SMP
from qatacov_jax.reproduce import render
from qatacov_jax.reproduce.tables import Column, Configuration, Table, Task
from qatacov_jax.reproduce.tasks import finished_results, run_status
from qatacov_jax.runtime import files, locking
from qatacov_jax.training import rundir
from qatacov_jax.training.cross_validation import summarize
from qatacov_jax.training.factory import build_model, count_trainable

log = logging.getLogger(__name__)

TABLES_DIR = "tables"  # WORKDIR/tables/<table>/: manifest, job scripts, gathered tables


def table_dir(workdir: str | os.PathLike, table: Table) -> Path:
    return Path(workdir).absolute() / TABLES_DIR / table.name


@dataclasses.dataclass
class ConfigurationRuns:
    """The runs of one configuration: finished ones' results, and the rest's status."""

    configuration: Configuration
    finished: dict[int | None, dict[str, Any]]
    missing: list[dict[str, Any]]


def collect(table: Table, workdir: str | os.PathLike) -> list[ConfigurationRuns]:
    """Reads every task's run directory (nothing is written)."""
    workdir = Path(workdir).absolute()
    by_name: dict[str, ConfigurationRuns] = {
        c.name: ConfigurationRuns(c, {}, []) for c in table.configurations
    }
    for task in table.tasks():
        runs = by_name[task.configuration.name]
        run_dir = workdir / task.run_dir
        results = finished_results(run_dir)
        if results is None:
            runs.missing.append(_missing(task, run_dir))
            continue
        split = results.get("eval_split")
        if split != table.split:
            log.warning(
                "%s evaluated split %r, table %s reports %r",
                run_dir,
                split,
                table.name,
                table.split,
            )
        runs.finished[task.fold] = results
    return list(by_name.values())


def _missing(task: Task, run_dir: Path) -> dict[str, Any]:
    return {
        "configuration": task.configuration.name,
        "fold": task.fold,
        "task_index": task.index,
        "run_dir": task.run_dir,
        "status": run_status(run_dir),
    }


def combine(finished: Mapping[int | None, Mapping[str, Any]]) -> dict[str, Any]:
    """Fold means/stds and pooled summary of a configuration's finished runs (as
    `cross_validation.summarize`; one run on fixed splits is its own mean and pool)."""
    if list(finished) == [None]:
        results = finished[None]
        pooled = MetricAccumulator.from_dict(results["final_state"]).summary()
        mean = {k: v for k, v in flat_metrics(pooled).items() if isinstance(v, float)}
        mean["loss"] = results["final"].get("loss")
        return {
            "folds": [None],
            "per_fold": {"None": results["final"]},
            "mean": mean,
            "std": dict.fromkeys(mean, 0.0),
            "pooled": pooled,
        }
    return summarize(dict(finished))


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def cell(column: Column, summary: Mapping[str, Any] | None, paper: Any, paper_ci: Any) -> dict:
    """One table cell: ours (the paper's aggregate) with its CI, both aggregates, the paper's
    printed value and ours - paper in percentage points. Fractions except `*_pct`/`*_pp`."""
    out: dict[str, Any] = {
        "aggregate": column.aggregate,
        "paper_pct": paper,
        "paper_ci95": paper_ci,
    }
    if summary is None:
        return {**out, "ours": None, "ci95": None, "diff_pp": None}
    pooled = summary["pooled"][column.level]["metrics"].get(column.metric, {})
    out["mean"] = _number(summary["mean"].get(column.key))
    out["std"] = _number(summary["std"].get(column.key))
    out["pooled"] = _number(pooled.get("value"))
    out["pooled_ci95"] = _number(pooled.get("ci95"))
    ours = out["mean"] if column.aggregate == "mean" else out["pooled"]
    n = pooled.get("n")
    ci = confidence_radius(ours, int(n)) if ours is not None and n else None
    out["ours"], out["ci95"] = ours, _number(ci)
    out["diff_pp"] = None if ours is None or paper is None else round(100 * ours - paper, 6)
    return out


def parameter_counts(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(trainable, non-trainable) of a configuration's model, from shapes alone
    (`nnx.eval_shape`: no weights are allocated or read; seconds for a big model)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.encoder_weights = None  # counts do not depend on the weights' values
    if config.model.get("family") == SMP:  # its own, faster abstract constructor
        model, _ = build_model(config, seed=0, load_weights=False, abstract=True)
    else:
        model = nnx.eval_shape(lambda: build_model(config, seed=0, load_weights=False)[0])
    return count_trainable(model)


class ParamsCache:
    """`WORKDIR/tables/params.json`: counts computed from shapes, keyed by `config.model`
    (without its weights), so regathering a table with unstarted rows costs nothing."""

    def __init__(self, workdir: Path):
        self.path = workdir / TABLES_DIR / "params.json"
        try:
            self.counts: dict[str, list[int]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.counts = {}
        self.changed = False

    def get(self, config: ml_collections.ConfigDict) -> tuple[int, int]:
        model = {k: v for k, v in config.model.to_dict().items() if k != "encoder_weights"}
        key = json.dumps(model, sort_keys=True, default=str)
        if key not in self.counts:
            self.counts[key] = list(parameter_counts(config))
            self.changed = True
        trainable, non_trainable = self.counts[key]
        return trainable, non_trainable

    def save(self) -> None:
        if self.changed:
            files.write_json(self.path, self.counts, sort_keys=True)


def _params(
    runs: ConfigurationRuns, load: Callable[[Configuration], Any] | None, cache: ParamsCache
) -> dict[str, Any] | None:
    for results in runs.finished.values():
        p = results.get("params")
        if p:
            return {**p, "source": "results.json"}
    if load is None:
        return None
    trainable, non_trainable = cache.get(load(runs.configuration))
    return {"trainable": trainable, "non_trainable": non_trainable, "source": "eval_shape"}


def ran_instead(c: Configuration, finished: Mapping[Any, Mapping[str, Any]]) -> str | None:
    """The model the runs trained when it is not the configuration's (an override of
    `config.model`), e.g. 'tiny/tiny', so a table never labels one model with another's
    figures; None when they match."""
    for results in finished.values():
        model = (results.get("config") or {}).get("model") or {}
        ran = (model.get("arch"), model.get("encoder"))
        frozen = bool(model.get("frozen"))
        if ran != (c.arch, c.encoder_name) or (c.frozen is not None and frozen != c.frozen):
            return f"{ran[0]}/{ran[1]}" + (", frozen" if frozen else "")
        return None
    return None


def row(
    table: Table, runs: ConfigurationRuns, load: Callable | None, cache: ParamsCache
) -> dict[str, Any]:
    """A configuration's row of table.json."""
    c = runs.configuration
    summary = combine(runs.finished) if runs.finished else None
    out: dict[str, Any] = {
        "configuration": c.name,
        "config_file": c.config_file,
        "model": c.model,
        "encoder": c.encoder,
        "frozen": c.frozen,
        "ran_instead": ran_instead(c, runs.finished),
        "folds": {
            "expected": list(table.folds),
            "finished": [f for f in table.folds if f in runs.finished],
        },
        "params": _params(runs, load, cache),
        "cells": {},
        "per_fold": summary["per_fold"] if summary else {},
    }
    for column in table.columns:
        out["cells"][column.key] = cell(
            column,
            summary,
            table.paper.get(c.name, {}).get(column.key),
            table.paper_ci.get(c.name, {}).get(column.key),
        )
    if table.kind == "confusion":
        pooled = summary["pooled"]["detection"]["confusion"] if summary else None
        out["confusion"] = {"ours": pooled, "paper": table.paper_confusion.get(c.name)}
    return out


def write_configuration_summary(workdir: Path, runs: ConfigurationRuns) -> None:
    """`WORKDIR/<configuration>/results.json` of a CV configuration, as
    `training.cross_validation.cross_validate` writes it (its folds' summary + config)."""
    if not runs.finished or None in runs.finished:
        return
    cv_dir = workdir / runs.configuration.name
    try:
        with locking.run_dir_lock(cv_dir, purpose="gather"):
            if not (cv_dir / rundir.CONFIG_FILE).exists():
                first = next(iter(runs.finished.values()))
                config = ml_collections.ConfigDict(first["config"])
                config.fold = 0
                rundir.check_or_write_config(cv_dir, config)
            stored = rundir.config_to_dict(rundir.read_config(cv_dir))
            for fold, results in runs.finished.items():
                diffs = rundir.config_differences(stored, {**results["config"], "fold": 0})
                if diffs:
                    raise rundir.RunDirMismatchError(
                        f"{cv_dir}/fold_{fold} was trained with another configuration than "
                        f"{cv_dir}/config.json:\n  " + "\n  ".join(diffs)
                    )
            summary = summarize(dict(runs.finished))
            summary["config"] = stored
            files.write_json(cv_dir / rundir.RESULTS_FILE, summary, sort_keys=True)
    except locking.DirectoryLockedError as e:
        log.warning("Left %s/results.json as it is: %s", cv_dir, e)


def gather(
    table: Table,
    workdir: str | os.PathLike,
    *,
    load: Callable[[Configuration], ml_collections.ConfigDict] | None = None,
) -> dict[str, Any]:
    """Builds the table from the runs under `workdir` and writes table.{json,md,tex}.

    Args:
      table: the table.
      workdir: the table's workdir.
      load: a configuration -> its config; used only for the parameter counts of a
        configuration with no finished run (None: left unknown).

    Returns:
      The contents of table.json.
    """
    workdir = Path(workdir).absolute()
    all_runs = collect(table, workdir)
    cache = ParamsCache(workdir)
    for runs in all_runs:
        write_configuration_summary(workdir, runs)
    missing = [m for runs in all_runs for m in runs.missing]
    num_tasks = len(table.tasks())
    result = {
        "table": table.name,
        "title": table.title,
        "source": table.source,
        "kind": table.kind,
        "split": table.split,
        "notes": list(table.notes),
        "workdir": str(workdir),
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "columns": [{**dataclasses.asdict(c), "key": c.key} for c in table.columns],
        "rows": [row(table, runs, load, cache) for runs in all_runs],
        "runs": {"expected": num_tasks, "finished": num_tasks - len(missing)},
        "missing": missing,
    }
    cache.save()
    out = table_dir(workdir, table)
    files.write_json(out / "table.json", result)
    files.write_text(out / "table.md", render.markdown(result))
    files.write_text(out / "table.tex", render.latex(result))
    return result


def wait_for_runs(
    table: Table, workdir: str | os.PathLike, timeout_s: float, *, poll_s: float = 60.0
) -> int:
    """Waits until every run of `table` finished or `timeout_s` passed (a Kubernetes gather
    Job has no job dependency to wait on). Returns the number of runs still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = sum(len(r.missing) for r in collect(table, workdir))
        if missing == 0 or time.monotonic() >= deadline:
            return missing
        log.info(
            "%d runs of %s not finished yet; checking again in %.0f s", missing, table.name, poll_s
        )
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
