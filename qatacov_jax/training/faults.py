"""What stops a training run early, and how it is reported (docs/reliability.md).

- `NonFiniteLossError`: the training metrics became NaN / Inf (`check_finite`);
- `StopSignals`: SIGTERM / SIGINT (what SLURM and Kubernetes send before they kill a job)
  only *request* a stop, which the loop honours at the next step boundary after saving a
  checkpoint, then raises `TrainingInterrupted` (`interrupted`);
- `storage_failure`: a run directory that filled up, went read-only or vanished
  (`check_workdir`) becomes one `StorageError` line saying what is kept; the partial
  checkpoints of the failed save are removed, complete ones never.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from qatacov_jax.runtime import storage
from qatacov_jax.training import checkpoint, rundir
from qatacov_jax.training.checkpoint import CheckpointStore
from qatacov_jax.training.state import Schedule


class NonFiniteLossError(FloatingPointError):
    """Training diverged (NaN/Inf loss or gradient)."""


def check_finite(metrics: Mapping[str, float], step: int, store: CheckpointStore) -> None:
    """Raises `NonFiniteLossError` if a training metric is NaN / Inf (before the state of
    `step` is saved, so no checkpoint ever holds a diverged model)."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        last = store.latest_step()
        where = (
            f"the last good checkpoint (step {last}) is kept in {store.latest_dir} "
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


def interrupted(
    schedule: Schedule, store: CheckpointStore, signal_name: str, step: int
) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"stopped by {signal_name} at step {step} of {schedule.total_steps} (epoch "
        f"{schedule.epoch_of(step)} of {schedule.num_epochs}); the checkpoint of step {step} "
        f"is saved in {store.latest_dir}. Rerun the same command to resume."
    )


class StopSignals:
    """SIGTERM / SIGINT handlers that only record the request; a second signal while a stop
    is pending interrupts at once (KeyboardInterrupt)."""

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
    def installed(self) -> Iterator[StopSignals]:
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

    def name(self) -> str:
        """The received signal's name (SIGTERM if none was received)."""
        return signal.Signals(self.received or signal.SIGTERM).name


def check_workdir(workdir: Path) -> None:
    """Raises the `vanished` error if the run directory (its config.json) is gone."""
    if jax.process_index() == 0 and not (workdir / rundir.CONFIG_FILE).exists():
        # Orbax would recreate the checkpoint folders in an empty new directory and carry
        # on; a run directory that vanished must stop the run. (Process 0 wrote config.json.)
        raise vanished(workdir)


def vanished(workdir: Path) -> storage.StorageError:
    return storage.StorageError(
        f"--workdir {workdir} vanished during training (deleted, moved or unmounted); "
        "nothing more can be saved there. Restore it and rerun the same command to resume "
        "from its last checkpoint."
    )


def storage_failure(
    workdir: Path, store: CheckpointStore, e: BaseException
) -> storage.StorageError | None:
    """The `StorageError` that `e` amounts to, or None when it is not about the run
    directory (a full / read-only disk, a vanished directory)."""
    code = storage.storage_errno(e)
    if not workdir.exists():
        return vanished(workdir)
    if code is not None and not storage.is_full(code):
        try:  # "permission denied" may be about the data, not the run directory
            storage.check_writable(workdir, "to --workdir")
            return None
        except storage.StorageError:
            pass
    if code is None:
        return None
    removed = checkpoint.remove_partial(store.directory)
    last = checkpoint.complete_steps(store.latest_dir)
    kept = (
        f"the last complete checkpoint (step {last[-1]}) in {store.latest_dir} is intact and "
        "a rerun resumes from it"
        if last
        else "no checkpoint had been completed yet"
    )
    cleaned = f" (removed {len(removed)} partial checkpoint folder(s))" if removed else ""
    return storage.StorageError(
        f"cannot write to --workdir {workdir}: {storage.describe(code)}{cleaned}; {kept}. "
        "Free space (or raise the quota / limit) and rerun the same command.",
        code,
    )
