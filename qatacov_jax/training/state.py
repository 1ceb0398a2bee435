"""The state of a training run: its schedule, fixed by the config, and its progress.

`Schedule` says how many steps a run takes and at which steps it logs, checkpoints and ends
an epoch. `RunState` is what changes as it trains: the step, the replicated model + optimizer
arrays and the loop's bookkeeping (epoch, best checkpoint, history, training time, the
running sums of the current epoch's step metrics). `RunState.save` / `RunState.restore`
write and read it through `training.checkpoint.CheckpointStore`; the bookkeeping is the
`meta` JSON of every `checkpoints/latest/<step>` (`RunState.meta` / `RunState.from_meta`),
in the format earlier versions wrote, so their checkpoints resume exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from qatacov_jax import data
from qatacov_jax.metrics import MetricAccumulator
from qatacov_jax.training.checkpoint import CheckpointStore
from qatacov_jax.training.rundir import config_fold


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The steps of a run, computed once from the config and the training split's size.

    Steps are 1-based; epoch e is steps (e - 1) * steps_per_epoch + 1 .. e * steps_per_epoch.
    """

    global_batch: int  # examples per step, over all devices and processes
    fold: int | None  # the cross-validation fold (`config.fold`), None for fixed splits
    steps_per_epoch: int
    num_epochs: int
    log_every: int  # steps between training-metric logs
    checkpoint_every: int  # steps between periodic checkpoints (0: epoch ends only)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Schedule:
        """Reads the training split's size (`data.num_examples`) for the epoch length.

        Raises:
          ValueError: the training split holds fewer examples than one global batch.
        """
        global_batch = int(config.batch_size)
        fold = config_fold(config)
        n_train = data.num_examples(config.data, fold=fold, split="train")
        steps_per_epoch = n_train // global_batch
        if steps_per_epoch < 1:
            raise ValueError(
                f"The training split has {n_train} examples, fewer than config.batch_size="
                f"{global_batch}; lower the batch size."
            )
        if config.get("steps_per_epoch"):
            steps_per_epoch = min(steps_per_epoch, int(config.steps_per_epoch))
        return cls(
            global_batch=global_batch,
            fold=fold,
            steps_per_epoch=steps_per_epoch,
            num_epochs=int(config.num_epochs),
            log_every=max(1, int(config.get("log_every_steps", 50))),
            checkpoint_every=int(config.get("checkpoint_every_steps") or 0),
        )

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch that `step` belongs to."""
        return (step - 1) // self.steps_per_epoch + 1

    def ends_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def saves_at(self, step: int) -> bool:
        """Whether `step` is checkpointed: an epoch end, a periodic step or the last one."""
        periodic = self.checkpoint_every > 0 and step % self.checkpoint_every == 0
        return self.ends_epoch(step) or periodic or step == self.total_steps

    def logs_at(self, step: int) -> bool:
        """Whether the training metrics are logged after `step` (always before a save)."""
        return step % self.log_every == 0 or self.saves_at(step)


@dataclasses.dataclass
class EpochSums:
    """Running sums of the current epoch's step metrics and the number of steps summed.

    Saved with every checkpoint, so the per-epoch means depend neither on the log /
    checkpoint cadence nor on interruptions.
    """

    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    count: int = 0

    def add(self, steps: Sequence[Mapping[str, Any]]) -> None:
        # Step by step, in order: the same float sums on every cadence.
        for values in steps:
            for k, x in values.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(x)
            self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


class StepMetrics:
    """The step metrics since the last flush, left on the devices until read in one go."""

    def __init__(self) -> None:
        self._pending: list[dict[str, jax.Array]] = []

    def append(self, metrics: dict[str, jax.Array]) -> None:
        self._pending.append(metrics)

    def flush(self, into: EpochSums) -> dict[str, float]:
        """Adds the pending steps to `into`; returns their means (empty if none)."""
        values = jax.device_get(self._pending)
        self._pending = []
        into.add(values)
        if not values:
            return {}
        return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


@dataclasses.dataclass(eq=False)  # arrays do not compare with ==
class RunState:
    """A run's progress: the last step done, its arrays and the loop's bookkeeping.

    `arrays` is `{"model": model state, "opt": optimizer state}`, replicated over the mesh;
    `best` is `{"epoch", "step", "split"}` plus `"score"` and `"metrics"` when a selection
    split chose it; `history` holds one entry per finished epoch.
    """

    arrays: dict[str, nnx.State]
    step: int = 0
    epoch: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    train_time_s: float = 0.0
    epoch_train: EpochSums = dataclasses.field(default_factory=EpochSums)
    # The selection split's counts and histograms at the last epoch end (None: not yet).
    validation_state: dict[str, Any] | None = None
    # Training time before this process resumed, and when it started its clock.
    _time_before: float = dataclasses.field(default=0.0, init=False, repr=False)
    _clock_start: float | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def model(self) -> nnx.State:
        return self.arrays["model"]

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def restore(
        cls, store: CheckpointStore, like: dict[str, nnx.State], sharding: jax.sharding.Sharding
    ) -> tuple[RunState, Any]:
        """The newest readable `checkpoints/latest` step, restored into `like`'s structure
        with `sharding`; returns (state, the data iterator's saved position)."""
        step, arrays, data_state, meta = store.restore_latest(like, sharding)
        return cls.from_meta(arrays, step, meta), data_state

    def save(self, store: CheckpointStore, data_state: Any) -> None:
        """Checkpoints `step` (asynchronously) with the data iterator's position."""
        if self._clock_start is not None:
            self.train_time_s = self._time_before + time.perf_counter() - self._clock_start
        store.save_latest(self.step, self.arrays, data_state, self.meta())

    def start_clock(self) -> None:
        """Starts timing this process's training (added to the time of earlier processes)."""
        self._time_before = float(self.train_time_s)
        self._clock_start = time.perf_counter()

    def meta(self) -> dict[str, Any]:
        """The bookkeeping as the JSON-ready dict stored with each checkpoint."""
        meta = {
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "train_time_s": self.train_time_s,
            "epoch_train": {"sums": dict(self.epoch_train.sums), "count": self.epoch_train.count},
        }
        if self.validation_state is not None:
            meta["validation_state"] = self.validation_state
        return meta

    @classmethod
    def from_meta(
        cls, arrays: dict[str, nnx.State], step: int, meta: Mapping[str, Any]
    ) -> RunState:
        """The inverse of `meta`; checkpoints of versions without `epoch_train` start the
        epoch's sums empty."""
        epoch_train = meta.get("epoch_train") or {"sums": {}, "count": 0}
        return cls(
            arrays=arrays,
            step=int(step),
            epoch=int(meta["epoch"]),
            best=meta["best"],
            history=list(meta["history"]),
            train_time_s=float(meta["train_time_s"]),
            epoch_train=EpochSums(dict(epoch_train["sums"]), int(epoch_train["count"])),
            validation_state=meta.get("validation_state"),
        )

    # ------------------------------------------------------------------ epochs

    def close_epoch(self, epoch: int) -> dict[str, Any]:
        """Ends `epoch` at `step` and resets the running sums; returns the epoch's history
        entry with its mean training metrics (validation may add to it before it is
        appended to `history`)."""
        entry = {"epoch": epoch, "step": self.step, "train": self.epoch_train.means()}
        self.epoch_train = EpochSums()
        self.epoch = epoch
        return entry

    def choose_newest(self) -> None:
        """Without a selection split, `best` is simply the newest epoch's model."""
        self.best = {"epoch": self.epoch, "step": self.step, "split": None}

    def record_validation(
        self,
        entry: dict[str, Any],
        split: str,
        metrics: dict[str, float],
        acc: MetricAccumulator,
        best_metric: str,
    ) -> bool:
        """Adds the selection split's metrics to the epoch's entry; returns whether this
        epoch's model is the new best (a finite `best_metric` above the best so far)."""
        self.validation_state = acc.to_dict()
        entry.update({"split": split, **metrics})
        score = metrics[best_metric]
        if math.isfinite(score) and (self.best is None or score > self.best["score"]):
            self.best = {
                "epoch": entry["epoch"],
                "step": entry["step"],
                "split": split,
                "score": score,
                "metrics": metrics,
            }
            return True
        return False
