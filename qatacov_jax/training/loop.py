"""`train_and_evaluate`: the training loop of one run directory.

Every epoch ends with a pass over the *selection split* (`data.sources.selection_split`:
a validation split, never the test data), a best-on-`config.best_metric` checkpoint and a
periodic checkpoint; re-running resumes exactly. Without a selection split (paper 1's CV:
no validation set) nothing is evaluated during training and `checkpoints/best` is the
newest epoch's model. The test split (`config.eval_split`, the held-out fold in CV) is read
once, by the final evaluation after training (docs/method.md#model-selection).
The steps themselves are in `training.steps`, the run directory in `training.rundir` and
`training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from qatacov_jax import data
from qatacov_jax.data.sources import final_split, selection_split
from qatacov_jax.runtime import locking, sharding, storage
from qatacov_jax.training import checkpoint, optim, rundir
from qatacov_jax.training.checkpoint import CheckpointStore, restore_model
from qatacov_jax.training.factory import build_model, count_trainable
from qatacov_jax.training.losses import make_loss
from qatacov_jax.training.steps import (
    make_batch_stats_step,
    make_eval_step,
    make_train_step,
    recalibrate_batch_norm,
    validate,
    zero_momentum_graphdef,
)


class NonFiniteLossError(FloatingPointError):
    """Training diverged (NaN/Inf loss or gradient)."""


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize` when asked (config or env), before any device use.

    Asked by `config.distributed.initialize=True` (coordinator/num_processes/process_id
    from the config, or auto-detected on SLURM/TPU/GKE when left unset), or by the
    environment variable `QATACOV_DISTRIBUTED=1`. Single-process runs never touch it.
    """
    dist = config.get("distributed")
    wanted = bool(dist and dist.get("initialize")) or os.environ.get("QATACOV_DISTRIBUTED") == "1"
    if not wanted or _distributed_ready():
        return
    kwargs: dict[str, Any] = {}
    if dist is not None:
        for key in ("coordinator_address", "num_processes", "process_id"):
            if dist.get(key) is not None:
                kwargs[key] = dist.get(key)
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        # CPU collectives across processes need an explicit implementation.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def _distributed_ready() -> bool:
    # jax has no public "is jax.distributed initialised?"; the private module is imported
    # here, guarded, so a jax release that moves it only loses this check.
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # pragma: no cover - private API moved; assume not initialised
        return False


def _check_finite(metrics: Mapping[str, float], step: int, store: CheckpointStore) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        last = store.latest_step()
        where = (
            f"the last good checkpoint (step {last}) is kept in {store.directory / 'latest'} "
            "and a restart resumes from it"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"Non-finite training metrics {bad} by step {step}; stopping without saving this "
            f"state ({where}). Lower config.optim.lr, set config.optim.grad_clip_norm, use "
            "config.model.dtype='float32', or check the data for corrupt masks."
        )


class TrainingInterrupted(Exception):
    """SIGTERM / SIGINT stopped training at a step boundary after saving a checkpoint.

    `scripts/train.py` prints the message and exits with `EXIT_CODE` (75, EX_TEMPFAIL:
    "try again"), which a job script can test to requeue.
    """

    EXIT_CODE = 75


class _StopSignals:
    """SIGTERM / SIGINT handlers that only *request* a stop, honoured at the next step
    boundary (what SLURM and Kubernetes send before killing a job). A second signal while a
    stop is pending interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        logging.warning(
            "Received %s: saving a checkpoint at the end of this step, then stopping "
            "(send it again to stop at once).",
            signal.Signals(signum).name,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        old = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def requested(self) -> bool:
        """Whether to stop; in multi-process runs, whether *any* process was signalled (all
        processes must save the same step together)."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
        return bool(np.any(flags))


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
    rundir.validate_config(config)
    mesh = sharding.make_mesh(config.get("num_devices"))
    global_batch = int(config.batch_size)
    sharding.check_batch_size(global_batch, mesh)
    writer_process = jax.process_index() == 0
    if writer_process:
        storage.check_writable(workdir, "to --workdir")
    with locking.run_dir_lock(workdir, purpose="train", enabled=writer_process):
        return _train_locked(config, workdir, mesh, step_callback)


def _train_locked(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mesh: Any,
    step_callback: Callable[[int], None] | None,
) -> dict[str, Any]:
    global_batch = int(config.batch_size)
    fold = rundir.config_fold(config)
    if (workdir / rundir.CONFIG_FILE).exists():
        rundir.check_or_write_config(workdir, config)  # a different run: refused at once
    # The data and the model are checked before config.json is written (a failed start
    # must not leave a config that makes the corrected command be refused).
    n_train = data.num_examples(config.data, fold=fold, split="train")
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"The training split has {n_train} examples, fewer than config.batch_size="
            f"{global_batch}; lower the batch size."
        )
    if config.get("steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(config.steps_per_epoch))
    total_steps = int(config.num_epochs) * steps_per_epoch
    model, preprocessing = build_model(config, seed=int(config.seed))
    rundir.check_or_write_config(workdir, config)
    # Without a selection split, `best` is ranked by epoch: the newest epoch's model.
    store = CheckpointStore(
        workdir,
        keep=int(config.get("keep_checkpoints", 2)),
        best_metric=config.best_metric if selection_split(config.data, fold) else "epoch",
    )
    done_steps = store.latest_step()
    if done_steps is not None and done_steps > total_steps:
        store.close()
        raise rundir.ConfigValueError(
            f"--workdir {workdir} holds a run trained for {done_steps} steps, more than "
            f"config.num_epochs={config.num_epochs} epochs ({total_steps} steps); refusing to "
            "rewrite its results with fewer epochs. Set --config.num_epochs back (or higher), "
            "or use a new --workdir."
        )
    try:
        return _train(
            config, workdir, mesh, store, model, preprocessing, steps_per_epoch, step_callback
        )
    except storage.StorageError:
        raise
    except BaseException as e:
        code = storage.storage_errno(e)
        vanished = not workdir.exists()
        if code is not None and not storage.is_full(code) and not vanished:
            try:  # "permission denied" may be about the data, not the run directory
                storage.check_writable(workdir, "to --workdir")
                code = None
            except storage.StorageError:
                pass
        if code is None and not vanished:
            raise
        raise _storage_failure(workdir, store, code, vanished, e) from None


def _vanished(workdir: Path) -> storage.StorageError:
    return storage.StorageError(
        f"--workdir {workdir} vanished during training (deleted, moved or unmounted); "
        "nothing more can be saved there. Restore it and rerun the same command to resume "
        "from its last checkpoint."
    )


def _storage_failure(
    workdir: Path, store: CheckpointStore, code: int | None, vanished: bool, e: BaseException
) -> storage.StorageError:
    """One line for a full / read-only / vanished run directory; partial checkpoints of
    this run are removed, complete ones never."""
    if vanished:
        return _vanished(workdir)
    removed = checkpoint.remove_partial(store.directory)
    last = checkpoint.complete_steps(store.directory / "latest")
    kept = (
        f"the last complete checkpoint (step {last[-1]}) in {store.directory / 'latest'} is "
        "intact and a rerun resumes from it"
        if last
        else "no checkpoint had been completed yet"
    )
    cleaned = f" (removed {len(removed)} partial checkpoint folder(s))" if removed else ""
    what = storage.describe(code) if code is not None else str(e)
    return storage.StorageError(
        f"cannot write to --workdir {workdir}: {what}{cleaned}; {kept}. Free space (or raise "
        "the quota / limit) and rerun the same command.",
        code,
    )


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mesh: Any,
    store: CheckpointStore,
    model: nnx.Module,
    preprocessing: Any,
    steps_per_epoch: int,
    step_callback: Callable[[int], None] | None,
) -> dict[str, Any]:
    global_batch = int(config.batch_size)
    fold = rundir.config_fold(config)
    total_steps = int(config.num_epochs) * steps_per_epoch
    rundir.write_json(workdir / rundir.PREPROCESSING_FILE, preprocessing.to_dict())
    trainable, non_trainable = count_trainable(model)
    model.train()
    opt = optim.make_optimizer(model, config.optim)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(opt)
    recal_batches = int(config.get("bn_recalibration_batches") or 0)
    stats_step = (
        make_batch_stats_step(zero_momentum_graphdef(model), mesh) if recal_batches else None
    )
    model.eval()
    eval_def = nnx.graphdef(model)
    loss = make_loss(config)  # segmentation (masks) or classification (image labels)
    train_step = make_train_step(model_def, opt_def, loss, mesh)
    eval_step = make_eval_step(eval_def, loss, mesh)
    state = sharding.replicate({"model": model_state, "opt": opt_state}, mesh)
    del model, opt, model_state, opt_state

    selection = selection_split(config.data, fold)
    # The final evaluation never reports the split that chose the model: with fold=None
    # the default eval_split ('eval', the validation split) gives way to 'test'.
    test_split = config.eval_split
    if test_split == selection:
        test_split = final_split(config.data, fold)
    train_iter = data.train_iterator(
        config.data,
        fold=fold,
        global_batch_size=global_batch,
        preprocessing=preprocessing,
        mesh=mesh,
        seed=int(config.seed),
    )
    meta: dict[str, Any] = {
        "epoch": 0,
        "best": None,
        "history": [],
        "train_time_s": 0.0,
        "epoch_train": _empty_epoch_train(),
    }
    start_step = 0
    if store.latest_step() is not None:
        start_step, state, data_state, meta = store.restore_latest(state, sharding.replicated(mesh))
        meta.setdefault("epoch_train", _empty_epoch_train())  # checkpoints of older versions
        train_iter.set_state(data_state)
        logging.info("Resumed %s from step %d (epoch %d).", workdir, start_step, meta["epoch"])

    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0, asynchronous=False
    )
    if start_step == 0:
        writer.write_hparams(_flat_hparams(config))
    progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=writer, every_secs=30.0
    )
    log_every = max(1, int(config.get("log_every_steps", 50)))
    ckpt_every = int(config.get("checkpoint_every_steps") or 0)

    def recalibrate() -> None:
        # A separate, seeded stream of training batches: the main iterator's position (and
        # so exact resume) is unaffected.
        batches = data.train_iterator(
            config.data,
            fold=fold,
            global_batch_size=global_batch,
            preprocessing=preprocessing,
            mesh=mesh,
            seed=int(config.seed) + 1,
        )
        state["model"] = recalibrate_batch_norm(stats_step, state["model"], batches, recal_batches)
        batches.close()

    def do_eval(split: str, model_state: Any) -> tuple[dict[str, float], Any]:
        batches = data.eval_iterator(
            config.data,
            fold=fold,
            split=split,
            global_batch_size=global_batch,
            preprocessing=preprocessing,
            mesh=mesh,
        )
        try:
            return validate(eval_step, model_state, batches)
        finally:
            batches.close()

    writer_process = jax.process_index() == 0  # the one that wrote config.json
    window: list[dict[str, jax.Array]] = []  # step metrics since the last flush (on device)

    def flush(step: int) -> dict[str, float]:
        """Moves the window's step metrics into the epoch's running sums (saved with every
        checkpoint, so the per-epoch means do not depend on the log / checkpoint cadence nor
        on interruptions); returns the window's means."""
        values = jax.device_get(window)
        window.clear()
        sums, count = meta["epoch_train"]["sums"], meta["epoch_train"]["count"]
        for v in values:  # step by step, in order: the same float sums on every cadence
            for k, x in v.items():
                sums[k] = sums.get(k, 0.0) + float(x)
            count += 1
        meta["epoch_train"]["count"] = count
        means = {k: float(np.mean([v[k] for v in values])) for k in values[0]} if values else {}
        # Checked before anything is saved, so a checkpoint never holds a NaN state.
        _check_finite(means, step, store)
        return means

    t0 = time.perf_counter()
    train_time_before = float(meta["train_time_s"])
    logging.info(
        "Training %s/%s (frozen=%s): %d trainable / %d non-trainable parameters, %d steps of "
        "%d on %d devices, %d processes.",
        config.model.arch,
        config.model.encoder,
        config.model.frozen,
        trainable,
        non_trainable,
        total_steps,
        global_batch,
        mesh.devices.size,
        jax.process_count(),
    )
    stop = _StopSignals()
    try:
        with stop.installed():
            for step in range(start_step + 1, total_steps + 1):
                batch = next(train_iter)
                state, step_metrics = train_step(
                    state, {"image": batch["image"], loss.target: batch[loss.target]}
                )
                window.append(step_metrics)
                progress(step)
                if writer_process and not (workdir / rundir.CONFIG_FILE).exists():
                    # Orbax would recreate the checkpoint folders in an empty new directory
                    # and carry on; a run directory that vanished must stop the run.
                    raise _vanished(workdir)
                end_of_epoch = step % steps_per_epoch == 0
                periodic = ckpt_every > 0 and step % ckpt_every == 0
                saving = end_of_epoch or periodic or step == total_steps
                if step % log_every == 0 or saving:
                    means = flush(step)
                    writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
                if end_of_epoch:
                    epoch = step // steps_per_epoch
                    et = meta["epoch_train"]
                    train_epoch = {k: v / max(et["count"], 1) for k, v in et["sums"].items()}
                    meta["epoch_train"] = _empty_epoch_train()
                    if recal_batches:
                        recalibrate()
                    meta["epoch"] = epoch
                    entry: dict[str, Any] = {"epoch": epoch, "step": step, "train": train_epoch}
                    if selection is None:
                        # Nothing may choose the model: `best` is simply the newest epoch's.
                        meta["best"] = {"epoch": epoch, "step": step, "split": None}
                        store.save_best(step, state["model"], {"epoch": float(epoch)})
                    else:
                        val, val_acc = do_eval(selection, state["model"])
                        writer.write_scalars(step, {f"val/{k}": v for k, v in val.items()})
                        meta["validation_state"] = val_acc.to_dict()
                        entry.update({"split": selection, **val})
                        score = val[config.best_metric]
                        best = meta["best"]
                        if math.isfinite(score) and (best is None or score > best["score"]):
                            meta["best"] = {
                                "epoch": epoch,
                                "step": step,
                                "split": selection,
                                "score": score,
                                "metrics": val,
                            }
                            store.save_best(step, state["model"], _finite_only(val))
                    meta["history"].append(entry)
                if step_callback is not None:
                    step_callback(step)  # before the stop check: tests send signals here
                stopping = step < total_steps and stop.requested()
                if stopping and not saving:
                    flush(step)
                if saving or stopping:
                    meta["train_time_s"] = train_time_before + time.perf_counter() - t0
                    store.save_latest(step, state, train_iter.get_state(), meta)
                if stopping:
                    store.wait()
                    name = signal.Signals(stop.received or signal.SIGTERM).name
                    raise TrainingInterrupted(
                        f"stopped by {name} at step {step} of {total_steps} (epoch "
                        f"{(step - 1) // steps_per_epoch + 1} of {config.num_epochs}); the "
                        f"checkpoint of step {step} is saved in {store.directory / 'latest'}. "
                        "Rerun the same command to resume."
                    )
            store.wait()

        # The one read of the test split: the chosen model (the final one without a
        # selection split), whose counts and histograms cross-validation pools over folds.
        chosen = state["model"]
        if selection is not None and meta["best"] is not None:
            chosen = _restore_best(workdir, state["model"], mesh)
        final, final_acc = do_eval(test_split, chosen)
        writer.write_scalars(total_steps, {f"test/{k}": v for k, v in final.items()})
        best = meta["best"] or {}
        meta["final"] = {
            "epoch": best.get("epoch"),
            "step": best.get("step"),
            "split": test_split,
            **final,
        }
        meta["final_state"] = final_acc.to_dict()
        results = _results(config, meta, trainable, non_trainable, total_steps, steps_per_epoch)
        results["selection"] = {
            "split": selection,
            "metric": config.best_metric if selection else None,
            "checkpoint": f"best {config.best_metric} on {selection}" if selection else "final",
            "test_split": test_split,
        }
        results["preprocessing"] = preprocessing.to_dict()
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


def _empty_epoch_train() -> dict[str, Any]:
    return {"sums": {}, "count": 0}


def _restore_best(workdir: Path, like: Any, mesh: Any) -> Any:
    """`checkpoints/best` as a replicated model state of `like`'s structure."""
    pure = restore_model(
        workdir / "checkpoints" / "best", "best", jax.device_get(like.to_pure_dict())
    )
    # Host arrays, replicated below exactly as the initial state is (multi-process too).
    pure = jax.device_get(pure)
    restored = jax.tree.map(lambda x: x, like)
    nnx.replace_by_pure_dict(restored, pure)
    return sharding.replicate(restored, mesh)


def _finite_only(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat = rundir.flat_config(config)
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def _results(
    config: ml_collections.ConfigDict,
    meta: Mapping[str, Any],
    trainable: int,
    non_trainable: int,
    total_steps: int,
    steps_per_epoch: int,
) -> dict[str, Any]:
    return {
        "final": meta.get("final"),
        "final_state": meta.get("final_state"),
        "best": meta["best"],
        "best_metric": config.best_metric,
        "history": meta["history"],
        "fold": config.fold,
        "eval_split": config.eval_split,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": meta["epoch"],
        "train_time_s": meta["train_time_s"],
        "params": {"trainable": trainable, "non_trainable": non_trainable},
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "config": rundir.config_to_dict(config),
    }
