"""One task of a table: a configuration trained on one fold into its run directory.

Tasks are independent processes (a job-array element each, or one after another in
`--launcher local`), so everything they share is guarded here: a finished run is never
redone (`finished_results`), the dataset is prepared by one task while the others wait
(`prepare_data`), and the configuration directory's config.json is written once and then
checked by every fold (`check_configuration_dir`). Training itself is the library's
`train_and_evaluate`: a task's run directory is an ordinary run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock
import jax
import ml_collections

from qatacov_jax.reproduce.tables import Configuration, Task
from qatacov_jax.training import rundir
from qatacov_jax.training.distributed import maybe_initialize_distributed
from qatacov_jax.training.faults import NonFiniteLossError
from qatacov_jax.training.loop import train_and_evaluate

log = logging.getLogger(__name__)

# Blocking locks (tasks wait for each other here), apart from the run directories' own
# non-blocking `runtime.locking` lock.
PREPARE_LOCK = ".qatacov-prepare.lock"
CONFIG_LOCK = ".qatacov-config.lock"


def read_results(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`run_dir/results.json`, or None if absent or unreadable (a run still going)."""
    path = Path(run_dir) / rundir.RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_results(
    run_dir: str | os.PathLike, num_epochs: int | None = None
) -> dict[str, Any] | None:
    """The results of a finished run, else None.

    Finished: results.json holds the final evaluation and its counts (`final_state`) and,
    when `num_epochs` is given, the run trained that many epochs (a grown `num_epochs`
    makes a run unfinished again, as in `scripts/cross_validate.py`). Without it, the run's
    own configured epochs count.
    """
    results = read_results(run_dir)
    if not results or not results.get("final") or not results.get("final_state"):
        return None
    if num_epochs is None:
        num_epochs = (results.get("config") or {}).get("num_epochs")
    if num_epochs is not None and results.get("epochs") != int(num_epochs):
        return None
    return results


def run_status(run_dir: str | os.PathLike) -> str:
    """Why a run is not finished, in a few words (for the gathered table's missing list)."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG_FILE).exists():
        return "not started"
    results = read_results(run_dir)
    if results is None:
        return "started, not finished (no results.json yet)"
    configured = (results.get("config") or {}).get("num_epochs")
    if results.get("epochs") != configured:
        return f"trained {results.get('epochs')} of {configured} epochs"
    return "results.json without a final evaluation"


def task_config(config: ml_collections.ConfigDict, fold: int | None) -> ml_collections.ConfigDict:
    """A copy of a configuration's config for one fold (None: the dataset's own splits)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.fold = fold
    return out


@contextlib.contextmanager
def waiting_lock(path: Path, purpose: str) -> Iterator[None]:
    """An exclusive lock on `path` that waits for its holder (another task) to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=1)
    except filelock.Timeout:
        log.info("Waiting for another task to finish %s (%s)", purpose, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def prepare_data(config: ml_collections.ConfigDict) -> None:
    """Prepares the dataset once: the first task builds it, the others wait, then read it.

    Multi-process tasks (jax.distributed) skip this: `data.prepare` already builds on
    process 0 behind a barrier, and a lock here could stop process 0 before that barrier.
    """
    if jax.process_count() > 1:
        return
    from qatacov_jax import data
    from qatacov_jax.data.sources import data_dir

    with waiting_lock(Path(data_dir(config.data)) / PREPARE_LOCK, "preparing the dataset"):
        data.prepare(config.data)


def check_configuration_dir(workdir: Path, task: Task, config: ml_collections.ConfigDict) -> None:
    """Writes (or checks) `WORKDIR/<configuration>/config.json` of a CV configuration: the
    config of all its folds with `fold=0`, as `scripts/cross_validate.py` writes it.

    Raises:
      RunDirMismatchError: the directory holds another configuration (other overrides).
    """
    if task.fold is None:
        return  # the run directory itself holds the config
    cv_dir = workdir / task.configuration.name
    cv_config = task_config(config, 0)
    rundir.validate_config(cv_config)
    if jax.process_index() != 0:
        return
    with waiting_lock(cv_dir / CONFIG_LOCK, "writing the configuration's config.json"):
        rundir.check_or_write_config(cv_dir, cv_config)


def run_task(
    task: Task,
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    train: Callable[[ml_collections.ConfigDict, Path], Mapping[str, Any]] | None = None,
) -> tuple[Mapping[str, Any], bool]:
    """Trains and evaluates one task unless its run already finished.

    Args:
      task: the task (its configuration and fold).
      config: the configuration's config (any fold; the task's fold is set here).
      workdir: the table's workdir.
      train: the training function (default `training.loop.train_and_evaluate`).

    Returns:
      (the run's results, whether it trained now: False for a finished run left as it was).
    """
    workdir = Path(workdir).absolute()
    fold_config = task_config(config, task.fold)
    run_dir = workdir / task.run_dir
    done = finished_results(run_dir, int(fold_config.num_epochs))
    if done is not None:
        return done, False
    maybe_initialize_distributed(fold_config)
    check_configuration_dir(workdir, task, config)
    prepare_data(fold_config)
    train = train or train_and_evaluate
    return train(fold_config, run_dir), True


def describe(results: Mapping[str, Any]) -> str:
    """A run's headline figures, e.g. `pixel F1 84.12%, detection sensitivity 98.00%`."""
    final = results.get("final") or {}
    parts = []
    for key, label in (
        ("pixel_f1", "pixel F1"),
        ("pixel_dsc_per_image", "per-image DSC"),
        ("detection_sensitivity", "detection sensitivity"),
        ("detection_specificity", "specificity"),
    ):
        value = final.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {100 * value:.2f}%")
    return ", ".join(parts) or "no final metrics"


def run_all(
    tasks: tuple[Task, ...],
    load: Callable[[Configuration], ml_collections.ConfigDict],
    workdir: str | os.PathLike,
) -> tuple[list[Task], list[Task]]:
    """`--launcher local`: every task in turn, with a progress line before and after each.

    A run whose loss diverges (`NonFiniteLossError`) is reported and the next one starts:
    rerunning it would diverge the same way, and the others need not wait for it. Any other
    error stops the loop (rerunning resumes where it stopped).

    Returns:
      (the tasks trained now, the tasks that diverged); finished runs are left as they were.
    """
    trained, diverged = [], []
    workdir = Path(workdir).absolute()
    for i, task in enumerate(tasks, 1):
        where = f"[{i}/{len(tasks)}] {task.configuration.name} fold {task.fold}"
        config = load(task.configuration)
        done = finished_results(workdir / task.run_dir, int(config.num_epochs))
        if done is not None:
            log.info("%s: finished earlier, kept: %s", where, describe(done))
            continue
        log.info("%s: training into %s", where, workdir / task.run_dir)
        start = time.monotonic()
        try:
            results, _ = run_task(task, config, workdir)
        except NonFiniteLossError as e:
            log.error("%s: diverged, skipped: %s", where, e)
            diverged.append(task)
            continue
        trained.append(task)
        log.info("%s: done in %.0f s: %s", where, time.monotonic() - start, describe(results))
    return trained, diverged


def plan(
    tasks: tuple[Task, ...],
    load: Callable[[Configuration], ml_collections.ConfigDict],
    workdir: str | os.PathLike,
    *,
    check: bool = True,
) -> list[bool]:
    """Before any task starts: which runs already finished, and (with `check`) every
    configuration validated and its configuration directory's config.json written, so that
    a bad override is refused now rather than by each job-array task.

    `check=False` is for a cluster whose paths this machine does not see (Kubernetes):
    the tasks then check and write the same themselves.

    Returns:
      Per task (in order), whether its run already finished.
    """
    workdir = Path(workdir).absolute()
    finished = []
    for task in tasks:
        config = load(task.configuration)
        if check:
            rundir.validate_config(task_config(config, task.fold))
            check_configuration_dir(workdir, task, config)
        done = finished_results(workdir / task.run_dir, int(config.num_epochs))
        finished.append(done is not None)
    return finished
