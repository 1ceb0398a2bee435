"""`train_and_evaluate`: the training loop of one run directory.

Every epoch ends with a pass over the *selection split* (`data.sources.selection_split`:
a validation split, never the test data), a best-on-`config.best_metric` checkpoint and a
periodic checkpoint; re-running resumes exactly. Without a selection split (paper 1's CV:
no validation set) nothing is evaluated during training and `checkpoints/best` is the
newest epoch's model. The test split (`config.eval_split`, the held-out fold in CV) is read
once, by the final evaluation after training (docs/method.md#model-selection).
The run's schedule and progress are in `training.state`, the steps themselves in
`training.steps`, the run directory in `training.rundir` and `training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax import data
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.data.sources import selection_split
from qatacov_jax.data.sources import test_split as final_test_split
from qatacov_jax.metrics import MetricAccumulator
from qatacov_jax.runtime import locking, sharding, storage
from qatacov_jax.training import cascade, faults, rundir
from qatacov_jax.training import splits as run_splits
from qatacov_jax.training.checkpoint import CheckpointStore
from qatacov_jax.training.distributed import maybe_initialize_distributed
from qatacov_jax.training.factory import build_model, count_trainable
from qatacov_jax.training.faults import NonFiniteLossError, TrainingInterrupted
from qatacov_jax.training.state import RunState, Schedule, StepMetrics
from qatacov_jax.training.steps import (
    RunSteps,
    compile_steps,
    recalibrate_batch_norm,
    validate,
)

# The errors `train_and_evaluate` raises are part of this module's interface (the CLI
# catches them from here); they are defined beside the other faults.
__all__ = ["NonFiniteLossError", "TrainingInterrupted", "train_and_evaluate"]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    step_callback: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates it.

    Every epoch ends with an evaluation on the selection split (if the run has one), a
    best-on-`config.best_metric` checkpoint and a periodic checkpoint. After the last step
    the chosen model (`checkpoints/best`) is evaluated once on `config.eval_split` of fold
    `config.fold` (the held-out fold in CV): results.json `final` / `final_state`.

    Nothing is written before the configuration, the devices, the data and the model are
    known to be usable; the run directory is locked against a second writer
    (`runtime.locking`, process 0 only). See docs/reliability.md for the faults handled.

    Args:
      config: the full config (see configs/default.py).
      workdir: the run directory (layout in `qatacov_jax.training.checkpoint`).
      step_callback: called with the 1-based step number after each step (tests use it to
        interrupt a run; profilers can use it too).

    Returns:
      The contents of `workdir/results.json`.

    Raises:
      ConfigValueError, RunDirMismatchError, DirectoryLockedError: refused, nothing written.
      StorageError: the disk filled up (or went read-only / vanished) while writing.
      TrainingInterrupted: SIGTERM / SIGINT; a checkpoint of the stop step was saved.
    """
    maybe_initialize_distributed(config)
    workdir = Path(workdir).absolute()
    config = cascade.resolve(config)  # the cascaded scheme's lung model, recorded
    rundir.validate_config(config)
    mesh = sharding.make_mesh(config.get("num_devices"))
    sharding.check_batch_size(int(config.batch_size), mesh)
    writer_process = jax.process_index() == 0
    if writer_process:
        storage.check_writable(workdir, "to --workdir")
    with locking.run_dir_lock(workdir, purpose="train", enabled=writer_process):
        return _train_locked(config, workdir, mesh, step_callback)


def _train_locked(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mesh: Mesh,
    step_callback: Callable[[int], None] | None,
) -> dict[str, Any]:
    if (workdir / rundir.CONFIG_FILE).exists():
        rundir.check_or_write_config(workdir, config)  # a different run: refused at once
    # The data and the model are checked before config.json is written (a failed start
    # must not leave a config that makes the corrected command be refused).
    schedule = Schedule.from_config(config)
    model, preprocessing = build_model(config, seed=int(config.seed))
    rundir.check_or_write_config(workdir, config)
    # The images of each split, recorded before the first step; a resumed run must still
    # select the same ones.
    run_splits.write_or_check(workdir, config, schedule.fold)
    # Without a selection split, `best` is ranked by epoch: the newest epoch's model.
    store = CheckpointStore(
        workdir,
        keep=int(config.get("keep_checkpoints", 2)),
        best_metric=config.best_metric if selection_split(config.data, schedule.fold) else "epoch",
    )
    done_steps = store.latest_step()
    if done_steps is not None and done_steps > schedule.total_steps:
        store.close()
        raise rundir.ConfigValueError(
            f"--workdir {workdir} holds a run trained for {done_steps} steps, more than "
            f"config.num_epochs={config.num_epochs} epochs ({schedule.total_steps} steps); "
            "refusing to rewrite its results with fewer epochs. Set --config.num_epochs back "
            "(or higher), or use a new --workdir."
        )
    try:
        return _train(config, workdir, mesh, schedule, store, model, preprocessing, step_callback)
    except storage.StorageError:
        raise
    except BaseException as e:
        failure = faults.storage_failure(workdir, store, e)
        if failure is None:
            raise
        raise failure from None


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed while a run trains: where, on what, how long, and the compiled steps."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: Mesh
    schedule: Schedule
    store: CheckpointStore
    preprocessing: Preprocessing
    writer: metric_writers.MetricWriter
    steps: RunSteps
    selection: str | None  # the split that picks `best` (None: the newest epoch is best)
    test_split: str  # the split of the one final evaluation

    def train_batches(self, seed: int) -> data.ShardedIterator:
        return _train_batches(self.config, self.schedule, self.preprocessing, self.mesh, seed)

    def evaluate(
        self, split: str, model_state: nnx.State
    ) -> tuple[dict[str, float], MetricAccumulator]:
        """One pass over `split`: (flat metrics, accumulator), as `steps.validate`."""
        batches = data.eval_iterator(
            self.config.data,
            fold=self.schedule.fold,
            split=split,
            global_batch_size=self.schedule.global_batch,
            preprocessing=self.preprocessing,
            mesh=self.mesh,
        )
        try:
            return validate(self.steps.eval_step, model_state, batches)
        finally:
            batches.close()


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mesh: Mesh,
    schedule: Schedule,
    store: CheckpointStore,
    model: nnx.Module,
    preprocessing: Preprocessing,
    step_callback: Callable[[int], None] | None,
) -> dict[str, Any]:
    rundir.write_json(workdir / rundir.PREPROCESSING_FILE, preprocessing.to_dict())
    params = count_trainable(model)
    steps, arrays = compile_steps(config, mesh, model)
    train_iter = _train_batches(config, schedule, preprocessing, mesh, seed=int(config.seed))
    state = _start_or_resume(store, arrays, train_iter, mesh)
    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0, asynchronous=False
    )
    if state.step == 0:
        writer.write_hparams(rundir.hparams(config))
    selection = selection_split(config.data, schedule.fold)
    # The final evaluation never reports the split that chose the model: with fold=None
    # the default eval_split ('eval', the validation split) gives way to 'test'.
    test_split = final_test_split(config.data, schedule.fold, config.eval_split)
    run = _Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        schedule=schedule,
        store=store,
        preprocessing=preprocessing,
        writer=writer,
        selection=selection,
        test_split=test_split,
        steps=steps,
    )
    try:
        _log_start(run, params)
        _fit(run, state, train_iter, step_callback)
        results = _final_evaluation(run, state, params)
        rundir.write_json(workdir / rundir.RESULTS_FILE, results)
    except BaseException:
        # Background checkpoint threads may fail again while closing (a full disk): the
        # first error is the one to report, and the threads must be joined before the
        # interpreter shuts down.
        with contextlib.suppress(BaseException):
            writer.flush()
        with contextlib.suppress(BaseException):
            store.close()
        raise
    writer.flush()
    store.close()
    return results


def _train_batches(
    config: ml_collections.ConfigDict,
    schedule: Schedule,
    preprocessing: Preprocessing,
    mesh: Mesh,
    seed: int,
) -> data.ShardedIterator:
    return data.train_iterator(
        config.data,
        fold=schedule.fold,
        global_batch_size=schedule.global_batch,
        preprocessing=preprocessing,
        mesh=mesh,
        seed=seed,
    )


def _start_or_resume(
    store: CheckpointStore,
    arrays: dict[str, nnx.State],
    train_iter: data.ShardedIterator,
    mesh: Mesh,
) -> RunState:
    """A fresh state at step 0, or the newest checkpoint's, with `train_iter` moved to the
    position saved with it."""
    if store.latest_step() is None:
        return RunState(arrays=arrays)
    state, data_state = RunState.restore(store, arrays, sharding.replicated(mesh))
    train_iter.set_state(data_state)
    logging.info(
        "Resumed %s from step %d (epoch %d).", store.directory.parent, state.step, state.epoch
    )
    return state


def _log_start(run: _Run, params: tuple[int, int]) -> None:
    m = run.config.model
    logging.info(
        "Training %s/%s (frozen=%s): %d trainable / %d non-trainable parameters, %d steps of "
        "%d on %d devices, %d processes.",
        m.arch,
        m.encoder,
        m.frozen,
        *params,
        run.schedule.total_steps,
        run.schedule.global_batch,
        run.mesh.devices.size,
        jax.process_count(),
    )


def _fit(
    run: _Run,
    state: RunState,
    train_iter: data.ShardedIterator,
    step_callback: Callable[[int], None] | None,
) -> None:
    """Trains from `state.step` to the last step, checkpointing on the schedule.

    Raises:
      NonFiniteLossError: a logged window of steps had a NaN / Inf metric (nothing saved).
      TrainingInterrupted: a stop signal; the stop step was checkpointed first.
    """
    schedule, store, target = run.schedule, run.store, run.steps.loss.target
    progress = periodic_actions.ReportProgress(
        num_train_steps=schedule.total_steps, writer=run.writer, every_secs=30.0
    )
    window = StepMetrics()
    stop = faults.StopSignals()
    state.start_clock()
    with stop.installed():
        for step in range(state.step + 1, schedule.total_steps + 1):
            batch = next(train_iter)
            state.arrays, metrics = run.steps.train_step(
                state.arrays, {"image": batch["image"], target: batch[target]}
            )
            state.step = step
            window.append(metrics)
            progress(step)
            faults.check_workdir(run.workdir)
            saving = schedule.saves_at(step)
            if schedule.logs_at(step):
                means = _flush(window, state, store)
                run.writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
            if schedule.ends_epoch(step):
                _end_epoch(run, state)
            if step_callback is not None:
                step_callback(step)  # before the stop check: tests send signals here
            stopping = step < schedule.total_steps and stop.requested()
            if stopping and not saving:
                _flush(window, state, store)
            if saving or stopping:
                state.save(store, train_iter.get_state())
            if stopping:
                store.wait()
                raise faults.interrupted(run.schedule, run.store, stop.name(), step)
        store.wait()


def _flush(window: StepMetrics, state: RunState, store: CheckpointStore) -> dict[str, float]:
    """Moves the window's step metrics into the epoch's running sums; returns their means.
    Checked before anything is saved, so a checkpoint never holds a NaN state."""
    means = window.flush(into=state.epoch_train)
    faults.check_finite(means, state.step, store)
    return means


def _end_epoch(run: _Run, state: RunState) -> None:
    """Closes the epoch ending at `state.step`: precise BatchNorm (if asked), validation on
    the selection split and the `best` checkpoint."""
    step = state.step
    entry = state.close_epoch(run.schedule.epoch_of(step))
    steps = run.steps
    if steps.stats_step is not None:
        # A separate, seeded stream of training batches: the main iterator's position (and
        # so exact resume) is unaffected.
        batches = run.train_batches(seed=int(run.config.seed) + 1)
        try:
            model = recalibrate_batch_norm(
                steps.stats_step, state.model, batches, steps.recal_batches
            )
        finally:
            batches.close()
        state.arrays = {**state.arrays, "model": model}
    if run.selection is None:
        state.choose_newest()  # nothing may choose the model
        run.store.save_best(step, state.model, {"epoch": float(state.epoch)})
    else:
        val, val_acc = run.evaluate(run.selection, state.model)
        run.writer.write_scalars(step, {f"val/{k}": v for k, v in val.items()})
        if state.record_validation(entry, run.selection, val, val_acc, run.config.best_metric):
            run.store.save_best(step, state.model, _finite_only(val))
    state.history.append(entry)


def _final_evaluation(run: _Run, state: RunState, params: tuple[int, int]) -> dict[str, Any]:
    """The one read of the test split, by the chosen model (the final one without a
    selection split), whose counts and histograms cross-validation pools over folds.

    Returns:
      The contents of results.json.
    """
    chosen = state.model
    if run.selection is not None and state.best is not None:
        chosen = run.store.restore_best(chosen, run.mesh)
    final, final_acc = run.evaluate(run.test_split, chosen)
    run.writer.write_scalars(run.schedule.total_steps, {f"test/{k}": v for k, v in final.items()})
    best = state.best or {}
    config, schedule, selection = run.config, run.schedule, run.selection
    return {
        "final": {
            "epoch": best.get("epoch"),
            "step": best.get("step"),
            "split": run.test_split,
            **final,
        },
        "final_state": final_acc.to_dict(),
        "best": state.best,
        "best_metric": config.best_metric,
        "history": state.history,
        "fold": config.fold,
        "eval_split": config.eval_split,
        "steps": schedule.total_steps,
        "steps_per_epoch": schedule.steps_per_epoch,
        "epochs": state.epoch,
        "train_time_s": state.train_time_s,
        "params": {"trainable": params[0], "non_trainable": params[1]},
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "config": rundir.config_to_dict(config),
        "selection": {
            "split": selection,
            "metric": config.best_metric if selection else None,
            "checkpoint": f"best {config.best_metric} on {selection}" if selection else "final",
            "test_split": run.test_split,
        },
        "preprocessing": run.preprocessing.to_dict(),
    }


def _finite_only(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
