"""A run's Schedule and RunState without training: the step predicates and the checkpoint
`meta` round trip (the loop tests cover them end to end, resume included)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qatacov_jax.metrics import MetricAccumulator
from qatacov_jax.training.state import EpochSums, RunState, Schedule, StepMetrics


def _schedule(**kw) -> Schedule:
    fields = dict(
        global_batch=8,
        fold=0,
        steps_per_epoch=4,
        num_epochs=2,
        log_every=2,
        checkpoint_every=3,
    )
    return Schedule(**(fields | kw))


def test_schedule_steps():
    s = _schedule()
    assert s.total_steps == 8
    assert [s.epoch_of(step) for step in range(1, 9)] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [step for step in range(1, 9) if s.ends_epoch(step)] == [4, 8]
    # Epoch ends, every 3rd step and the last one.
    assert [step for step in range(1, 9) if s.saves_at(step)] == [3, 4, 6, 8]
    assert [step for step in range(1, 9) if s.logs_at(step)] == [2, 3, 4, 6, 8]
    no_periodic = _schedule(checkpoint_every=0, log_every=50)
    assert [step for step in range(1, 9) if no_periodic.saves_at(step)] == [4, 8]
    assert [step for step in range(1, 9) if no_periodic.logs_at(step)] == [4, 8]


def test_step_metrics_sum_step_by_step_into_the_epoch():
    sums, window = EpochSums(), StepMetrics()
    assert window.flush(into=sums) == {} and sums.count == 0
    for loss in (1.0, 2.0, 4.0):
        window.append({"loss": np.float32(loss)})
    assert window.flush(into=sums) == {"loss": pytest.approx(7 / 3)}
    window.append({"loss": np.float32(5.0)})
    window.flush(into=sums)
    assert sums.count == 4 and sums.means() == {"loss": 3.0}
    assert EpochSums().means() == {}


def _state_after_two_epochs() -> RunState:
    state = RunState(arrays={})
    for epoch, f1 in ((1, 0.5), (2, 0.25)):
        state.step = 4 * epoch
        state.epoch_train.add([{"loss": 1.0}, {"loss": 3.0}])
        entry = state.close_epoch(epoch)
        assert entry == {"epoch": epoch, "step": 4 * epoch, "train": {"loss": 2.0}}
        improved = state.record_validation(
            entry, "validation", {"pixel_f1": f1}, MetricAccumulator(num_bins=4), "pixel_f1"
        )
        assert improved == (epoch == 1)  # epoch 2 scored lower
        state.history.append(entry)
    return state


def test_record_validation_keeps_the_best_finite_score():
    state = _state_after_two_epochs()
    assert state.best == {
        "epoch": 1,
        "step": 4,
        "split": "validation",
        "score": 0.5,
        "metrics": {"pixel_f1": 0.5},
    }
    assert [h["pixel_f1"] for h in state.history] == [0.5, 0.25]
    assert state.epoch_train.count == 0 and state.epoch == 2
    nan = {"pixel_f1": float("nan")}
    assert not RunState(arrays={}).record_validation(
        {"epoch": 1, "step": 4}, "validation", nan, MetricAccumulator(num_bins=4), "pixel_f1"
    )


def test_meta_round_trip_in_the_checkpoint_format():
    state = _state_after_two_epochs()
    state.epoch_train.add([{"loss": 0.5}])
    state.train_time_s = 12.5
    meta = json.loads(json.dumps(state.meta()))  # what the checkpoint's JSON gives back
    assert set(meta) == {
        "epoch",
        "best",
        "history",
        "train_time_s",
        "epoch_train",
        "validation_state",
    }
    assert meta["epoch_train"] == {"sums": {"loss": 0.5}, "count": 1}
    back = RunState.from_meta({}, 8, meta)
    assert back.step == 8 and back.meta() == meta
    # Checkpoints of versions without the epoch's running sums, before any validation.
    old = {"epoch": 1, "best": None, "history": [], "train_time_s": 3.0}
    restored = RunState.from_meta({}, 4, old)
    assert restored.epoch_train == EpochSums() and restored.validation_state is None
    assert restored.meta() == old | {"epoch_train": {"sums": {}, "count": 0}}
