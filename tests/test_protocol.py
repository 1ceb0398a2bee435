"""The evaluation protocol (docs/method.md#model-selection): the test fold never chooses the
model, and `scripts/evaluate.py` refuses to report the split that did."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import train_utils
from flax import nnx

from qatacov_jax.cli import evaluate as evaluate_cli
from qatacov_jax.data import pipeline, sources
from qatacov_jax.evaluation import runner
from qatacov_jax.training import loop, rundir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir: str):
    config = train_utils.tiny_config(data_dir)
    config.data.validation_fraction = 0.25
    config.steps_per_epoch = 2
    config.checkpoint_every_steps = 0
    return config


def _test_fold(config) -> set[int]:
    builder = sources.prepare(config.data)
    return set(sources.select(config.data, builder, fold=0, split="eval")[1].tolist())


def _train(config, workdir, poison: set[int] | None = None) -> tuple[dict, list[int]]:
    """Trains `config`; with `poison`, those records' labels and masks are inverted.

    Returns (results, records loaded from `poison` in load order)."""
    loaded: list[int] = []
    real_map = pipeline.LoadExample.map

    def poisoned_map(self, element):
        out = real_map(self, element)
        if poison is not None and element["record"] in poison:
            loaded.append(element["record"])
            out["label"] = np.int32(1 - out["label"])
            out["mask"] = 1.0 - out["mask"]
        return out

    with pytest.MonkeyPatch.context() as patch:
        train_utils.use_tiny_model(patch.setattr)
        patch.setattr(pipeline.LoadExample, "map", poisoned_map)
        results = loop.train_and_evaluate(config, workdir)
    return results, loaded


def _best_params(run_dir):
    with pytest.MonkeyPatch.context() as patch:
        train_utils.use_tiny_model(patch.setattr)
        model, _, _ = rundir.load_model(run_dir, which="best")
    return jax.device_get(nnx.state(model).to_pure_dict())


@pytest.fixture(scope="module")
def clean_and_poisoned(data_dir, tmp_path_factory):
    config = _config(data_dir)
    test_fold = _test_fold(config)
    dirs = tmp_path_factory.mktemp("clean"), tmp_path_factory.mktemp("poisoned")
    clean, _ = _train(config, dirs[0])
    poisoned, loaded = _train(_config(data_dir), dirs[1], test_fold)
    return config, test_fold, (clean, poisoned), loaded, dirs


def test_validation_split_is_carved_from_the_training_folds(data_dir):
    config = _config(data_dir)
    builder = sources.prepare(config.data)
    train = sources.select(config.data, builder, fold=0, split="train")[1]
    val = sources.select(config.data, builder, fold=0, split="validation")[1]
    test = sources.select(config.data, builder, fold=0, split="eval")[1]
    config.data.validation_fraction = 0.0
    whole = sources.select(config.data, builder, fold=0, split="train")[1]
    assert not set(train) & set(val) and not set(test) & (set(train) | set(val))
    assert sorted(np.concatenate([train, val])) == sorted(whole)
    labels = sources.binary_labels(builder, "train", "covid19")
    # Stratified: both classes are in the validation split, about 1/4 of each.
    for cls in (0, 1):
        n_whole, n_val = np.sum(labels[whole] == cls), np.sum(labels[val] == cls)
        assert abs(n_val - 0.25 * n_whole) <= 1
    with pytest.raises(ValueError, match="validation_fraction is 0"):
        sources.select(config.data, builder, fold=0, split="validation")


def test_poisoned_test_fold_does_not_change_the_chosen_checkpoint(clean_and_poisoned):
    config, test_fold, (clean, poisoned), loaded, dirs = clean_and_poisoned
    assert clean["selection"]["split"] == poisoned["selection"]["split"] == "validation"
    assert clean["best"]["step"] == poisoned["best"]["step"]
    assert [h["pixel_f1"] for h in clean["history"]] == [h["pixel_f1"] for h in poisoned["history"]]
    a, b = (_best_params(d) for d in dirs)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    # The test fold was read once, by the final evaluation (one padded pass), ...
    batches = -(-len(test_fold) // config.batch_size)
    assert len(loaded) == batches * config.batch_size
    # ... which the poison did change.
    assert clean["final"]["split"] == "eval"
    assert clean["final"]["pixel_f1"] != poisoned["final"]["pixel_f1"]
    assert clean["final"]["num_examples"] == len(test_fold)


def test_evaluate_refuses_the_selection_split(clean_and_poisoned, tmp_path, capsys):
    config, *_ = clean_and_poisoned
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_json(run / "config.json", rundir.config_to_dict(config))
    rundir.write_json(run / "results.json", {"selection": {"split": "validation"}})
    with pytest.raises(runner.SelectionSplitError, match="'validation' split"):
        runner.evaluate(run, split="validation")
    assert evaluate_cli.main([str(run), "--split=validation"]) == 2
    err = capsys.readouterr().err
    assert "optimistic" in err and "--split test" in err
    assert not (run / "evaluation").exists()  # refused before anything was written
    # A run whose config picks no checkpoint (fold given, no validation fraction): nothing
    # to refuse; a legacy results.json (no `selection`) chose on its eval_split.
    rundir.write_json(run / "results.json", {"eval_split": "eval"})
    with pytest.raises(runner.SelectionSplitError, match="'eval' split"):
        runner.evaluate(run, split="eval")
