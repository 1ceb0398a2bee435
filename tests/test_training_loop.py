"""`train_and_evaluate` end to end on a tiny synthetic set: outputs, resume, guards."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import train_utils
from flax import nnx

from qatacov_jax.training import checkpoint as ckpt
from qatacov_jax.training import loop as train
from qatacov_jax.training import rundir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    """One uninterrupted 2-epoch run (8 steps; checkpoints at 3, 4, 6, 8)."""
    workdir = tmp_path_factory.mktemp("run")
    results = train.train_and_evaluate(train_utils.tiny_config(data_dir), workdir)
    return workdir, results


def _params(run_dir, which="latest"):
    model, _, _ = rundir.load_model(run_dir, which=which)
    return jax.device_get(nnx.state(model).to_pure_dict())


def test_run_directory_layout_and_results(uninterrupted):
    workdir, results = uninterrupted
    assert (workdir / "config.json").exists()
    assert (workdir / "preprocessing.json").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["best", "latest"]
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["steps"] == 8 and on_disk["epochs"] == 2
    assert len(on_disk["history"]) == 2  # evaluated every epoch
    final = on_disk["final"]
    for key in ("loss", "pixel_f1", "detection_sensitivity", "detection_specificity"):
        assert key in final
    from qatacov_jax import data

    cfg = train_utils.tiny_config(str(workdir))  # data_dir is irrelevant for the count below
    cfg.data.data_dir = on_disk["config"]["data"]["data_dir"]
    assert final["num_examples"] == data.num_examples(cfg.data, fold=0, split="eval")
    assert on_disk["config"]["model"]["arch"] == train_utils.TINY
    # No validation fraction in a CV round: nothing selects, `best` is the final model, and
    # the held-out fold was evaluated once, after training (docs/method.md#model-selection).
    assert results["best"]["step"] == 8 and results["selection"]["split"] is None
    assert "pixel_f1" not in on_disk["history"][0] and final["split"] == "eval"
    # The pixel counts add up to every held-out pixel.
    n_pix = final["num_examples"] * 32 * 32
    assert sum(final[f"pixel_{k}"] for k in ("tp", "fp", "tn", "fn")) == n_pix


def test_load_model_best_and_latest(uninterrupted):
    workdir, results = uninterrupted
    model, config, preprocessing = rundir.load_model(workdir, which="latest")
    assert config.model.arch == train_utils.TINY and preprocessing.mode == "unit"
    assert model.dec_bn.use_running_average  # eval mode
    out = model(np.zeros((1, 32, 32, 3), np.float32))
    assert out.shape == (1, 32, 32, 1)
    best = _params(workdir, "best")
    assert jax.tree.structure(best) == jax.tree.structure(_params(workdir, "latest"))


def test_kill_and_resume_is_bit_identical(uninterrupted, data_dir, tmp_path):
    """Killed at step 7 (epoch 2 is steps 5-8; last checkpoint: the periodic one at step 5,
    mid-epoch); the restart resumes from step 5 with the data iterator's saved position and
    must end exactly where the uninterrupted run ended. On CPU the same compiled program on
    the same inputs is deterministic, so we require bit-identical parameters."""
    workdir_ref, results_ref = uninterrupted
    config = train_utils.tiny_config(data_dir)
    config.checkpoint_every_steps = 5  # so the kill at step 7 resumes mid-epoch, from step 5

    class Killed(Exception):
        pass

    def kill_at_7(step: int) -> None:
        if step == 7:
            raise Killed

    # The reference run checkpoints every 3 steps: the cadence must not change the maths.
    with pytest.raises(Killed):
        train.train_and_evaluate(config, tmp_path, step_callback=kill_at_7)
    assert ckpt.CheckpointStore(tmp_path).latest_step() == 5
    resumed = train.train_and_evaluate(config, tmp_path)
    a, b = _params(workdir_ref), _params(tmp_path)
    for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    assert resumed["final"]["pixel_tp"] == results_ref["final"]["pixel_tp"]
    assert resumed["final"]["loss"] == results_ref["final"]["loss"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_different_config_is_refused(uninterrupted, data_dir):
    workdir, _ = uninterrupted
    config = train_utils.tiny_config(data_dir)
    config.optim.lr = 0.5
    with pytest.raises(rundir.RunDirMismatchError, match="optim.lr"):
        train.train_and_evaluate(config, workdir)


def test_config_guard_ignores_resumable_fields(tmp_path):
    from configs import default

    config = default.get_config()
    rundir.check_or_write_config(tmp_path, config)
    config.num_epochs = 80  # extending a run is allowed
    config.data.data_dir = "/elsewhere"
    rundir.check_or_write_config(tmp_path, config)
    config.model.arch = "unetpp"
    config.fold = 3
    with pytest.raises(rundir.RunDirMismatchError) as e:
        rundir.check_or_write_config(tmp_path, config)
    assert "model.arch" in str(e.value) and "fold" in str(e.value)
    assert "num_epochs" not in str(e.value)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    config = train_utils.tiny_config(data_dir)
    config.optim.lr = 1e38  # the first update makes weights ~1e38: the next forward overflows
    config.log_every_steps = 1
    config.checkpoint_every_steps = 1
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
        train.train_and_evaluate(config, tmp_path)
    store = ckpt.CheckpointStore(tmp_path)
    last = store.latest_step()
    assert last is not None and last >= 1
    params = _params(tmp_path)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_cross_validation_runs_folds_and_averages(data_dir, tmp_path):
    from qatacov_jax.training import cross_validation as cv

    config = train_utils.tiny_config(data_dir)
    config.num_epochs = 1
    config.steps_per_epoch = 2
    summary = cv.cross_validate(config, tmp_path, folds=[0, 1])
    assert summary["folds"] == [0, 1]
    for k in (0, 1):
        fold_results = json.loads((tmp_path / f"fold_{k}" / "results.json").read_text())
        assert fold_results["fold"] == k
    f1 = [summary["per_fold"][str(k)]["pixel_f1"] for k in (0, 1)]
    f1 = [v for v in f1 if v is not None]
    if f1:
        np.testing.assert_allclose(summary["mean"]["pixel_f1"], np.mean(f1))
    pooled = summary["pooled"]["detection"]["confusion"]
    n_eval = sum(summary["per_fold"][str(k)]["num_examples"] for k in (0, 1))
    assert sum(pooled.values()) == n_eval
    assert json.loads((tmp_path / "results.json").read_text())["folds"] == [0, 1]
    # Re-running does not retrain finished folds (their results are read back).
    stamps = [(tmp_path / f"fold_{k}" / "results.json").stat().st_mtime_ns for k in (0, 1)]
    again = cv.cross_validate(config, tmp_path, folds=[0, 1])
    assert stamps == [(tmp_path / f"fold_{k}" / "results.json").stat().st_mtime_ns for k in (0, 1)]
    for k in ("0", "1"):
        assert again["per_fold"][k]["loss"] == summary["per_fold"][k]["loss"]
