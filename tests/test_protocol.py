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
    config.bn_recalibration_batches = 0  # the loop test covers it; time goes elsewhere
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
        patch.setattr(pipeline.LoadExample, "map", poisoned_map)
        results = loop.train_and_evaluate(config, workdir)
    return results, loaded


def _best_params(run_dir):
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
    positives = lambda r: r["final"]["pixel_tp"] + r["final"]["pixel_fn"]  # noqa: E731
    assert positives(clean) < positives(poisoned)  # inverted masks: mostly infection
    assert clean["final"]["loss"] != poisoned["final"]["loss"]
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


# ------------------------------------------------------------- paper 2's IoU / DSC, AUC


def test_per_image_iou_dsc_by_hand():
    """Three 2x2 images and a padding row: per-image means vs pooled ratios."""
    from qatacov_jax.metrics import MetricAccumulator, batch_statistics

    pred = np.array(
        [[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 1], [1, 1]]], np.float32
    )
    truth = np.array(
        [[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 1], [1, 0]], [[0, 0], [0, 0]]], np.float32
    )
    probs = np.where(pred > 0, 0.9, 0.1)[..., None]
    valid = np.array([True, True, True, False])
    acc = MetricAccumulator()
    acc.update(jax.jit(batch_statistics)(probs, truth[..., None], np.array([1, 0, 1, 0]), valid))
    m = acc.summary()["pixel"]["metrics"]
    # Image 0: tp 1, fp 1, fn 0 -> IoU 1/2, DSC 2/3; image 1: empty and empty -> 1, 1;
    # image 2: tp 0, fp 1, fn 2 -> 0, 0. Padding counts nowhere.
    assert m["iou_per_image"]["value"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["dsc_per_image"]["value"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["iou_per_image"]["n"] == 3 and m["iou_per_image"]["empty_images"] == 1
    mean = (0.5 + 1 + 0) / 3
    assert m["iou_per_image"]["ci95"] == pytest.approx(1.96 * np.sqrt(mean * (1 - mean) / 3))
    # Pooled: tp 1, fp 2, fn 2 over all pixels.
    assert m["iou"]["value"] == pytest.approx(1 / 5) and m["dsc"]["value"] == pytest.approx(2 / 6)
    # Merging (folds) adds the per-image sums; the state round-trips.
    both = acc.merge(MetricAccumulator.from_dict(acc.to_dict())).summary()["pixel"]["metrics"]
    assert both["iou_per_image"]["value"] == pytest.approx(mean)
    assert both["iou_per_image"]["n"] == 6


def test_logit_binned_auc_matches_sklearn_on_skewed_pixels():
    """Realistic skew: 1% infection pixels, background probabilities mostly 1e-6..1e-2 (the
    range uniform bins lumped into one bin): the bound holds and is below 0.05 points."""
    from sklearn.metrics import roc_auc_score

    from qatacov_jax.metrics import MetricAccumulator, batch_statistics

    rng = np.random.default_rng(0)
    n_img, side = 16, 64
    truth = np.zeros((n_img, side, side), bool)
    truth[:, 20:26, 20:27] = True  # 42 of 4096 pixels per image
    logits = np.where(truth, rng.normal(1.0, 2.5, truth.shape), rng.normal(-9.0, 2.5, truth.shape))
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    acc, stats_fn = MetricAccumulator(), jax.jit(batch_statistics)  # one compile, 4 batches
    for i in range(0, n_img, 4):  # streamed in batches
        sl = slice(i, i + 4)
        acc.update(
            stats_fn(
                probs[sl, ..., None],
                truth[sl, ..., None].astype(np.float32),
                np.ones(4, np.int32),
                np.ones(4, bool),
            )
        )
    auc = acc.summary()["pixel"]["metrics"]["auc"]
    exact = roc_auc_score(truth.ravel(), probs.ravel())
    assert abs(auc["value"] - exact) <= auc["bin_error"] + 1e-12
    assert auc["bin_error"] <= 0.0005
    # The curve thresholds are the bin edges and 0.5 is one of them.
    curves = acc.curves("pixel")
    assert curves.thresholds[0] == 1.0 and curves.thresholds[-1] == 0.0
    assert np.any(curves.thresholds == 0.5)


# ------------------------------------------------- detection decided on the model grid


def test_infer_and_evaluate_decide_detection_on_the_model_grid(tmp_path):
    """A borderline image: the threshold lies between the maximum of the map resized to the
    image (what infer.py used to test) and the maximum on the model grid (what evaluate.py
    tests). Both now call it COVID-19."""
    from PIL import Image
    from train_utils import tiny_model

    from qatacov_jax.data.preprocessing import Preprocessing
    from qatacov_jax.data.resize import resize_image, resize_map
    from qatacov_jax.inference import files as infer
    from qatacov_jax.inference.batching import grid_max_key
    from qatacov_jax.inference.predictor import Predictor
    from qatacov_jax.runtime.sharding import make_mesh

    model = tiny_model(3)
    model.eval()
    mesh, unit = make_mesh(1), Preprocessing.from_mode("unit")
    pixels = (np.random.default_rng(1).random((53, 47)) * 255).astype(np.uint8)
    path = tmp_path / "xray.png"
    Image.fromarray(pixels).save(path)

    # evaluate.py's path: the image at the model size, its stats step's detection counts.
    grid = resize_image(pixels.astype(np.float32) / 255.0, 16).astype(np.float32) / 255.0
    image = unit(grid[None, ..., None])
    probs = np.asarray(jax.nn.sigmoid(model(image)))[0, ..., 0]
    grid_max, resized_max = probs.max(), resize_map(probs, pixels.shape).max()
    assert grid_max - resized_max > 1e-4, "not a borderline image"
    threshold = float((grid_max + resized_max) / 2)
    stats = runner.make_stats_fn(model, mesh, threshold=threshold)(
        {
            "image": image,
            "mask": np.zeros((1, 16, 16, 1), np.float32),
            "label": np.ones(1, np.int32),
            "valid": np.ones(1, bool),
        }
    )
    assert int(stats["detection_tp"]) == 1  # evaluate: COVID-19

    predictor = Predictor({"infection": model}, {"infection": unit}, {"infection": 16}, mesh)
    items, _ = infer.collect_inputs([path])
    pred = predictor.predict_batch([pixels.astype(np.float32) / 255.0])[0]
    assert float(pred[grid_max_key("infection")]) == pytest.approx(grid_max, abs=1e-6)
    assert pred["infection"].max() < threshold  # the resized map alone would say control
    rows = infer.run_inference(
        items, predictor.predict_batch, tmp_path / "out", batch_size=1, threshold=threshold
    )
    assert rows[0]["covid19"] is True
    assert rows[0]["max_probability"] == pytest.approx(grid_max, abs=1e-6)
