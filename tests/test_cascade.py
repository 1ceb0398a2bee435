"""Paper 2's cascaded scheme (`models.cascade`, `training.cascade`) on the tiny model: the
infection model reads exactly the lung-masked X-ray, the lung model stays frozen while the
infection model trains, and a trained cascaded run loads, predicts and evaluates without
its lung run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_utils
from data_fakes import make_covid_qu_ex
from flax import nnx

from configs.paper2 import base as paper2
from qatacov_jax import models
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models.cascade import CascadedModel, unprocess
from qatacov_jax.training import cascade, loop, rundir

TORCH, UNIT = Preprocessing.from_mode("torch"), Preprocessing.from_mode("unit")


def _tiny(seed: int) -> nnx.Module:
    model = models.create_model("tiny", "tiny", rngs=nnx.Rngs(seed))
    model.eval()
    return model


def _grey(n: int, size: int) -> np.ndarray:
    """(n, size, size, 1) smooth grey 'X-rays' in [0, 1]."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0.1, 0.9, (n, size // 4, size // 4, 1)).astype(np.float32)
    return np.asarray(jax.image.resize(coarse, (n, size, size, 1), "bilinear"))


@pytest.mark.parametrize(("prep", "lung_size"), [(TORCH, 32), (Preprocessing.from_mode("tf"), 64)])
def test_the_infection_model_reads_the_lung_masked_xray(prep, lung_size):
    grey = _grey(2, 64)
    lung, infection = _tiny(1), _tiny(2)
    # The lung probability of the X-ray, computed apart from the cascade.
    small = jax.image.resize(grey, (2, lung_size, lung_size, 1), "bilinear")
    prob = jax.nn.sigmoid(lung(UNIT(small)))
    prob = np.asarray(jax.image.resize(prob, (2, 64, 64, 1), "bilinear"))
    threshold = float(np.median(prob))  # half the pixels are lung
    expected_mask = (prob >= threshold).astype(np.float32)
    expected = infection(prep(grey * expected_mask))

    model = CascadedModel(
        _tiny(1), _tiny(2), input_preprocessing=prep, lung_preprocessing=UNIT,
        lung_size=lung_size, threshold=threshold,
    )  # fmt: skip
    x = jnp.asarray(prep(grey))
    np.testing.assert_allclose(np.asarray(unprocess(prep, x)), np.repeat(grey, 3, -1), atol=1e-6)
    mask = np.asarray(model.lung_mask(x))
    assert 0.3 < mask.mean() < 0.7
    assert np.mean(mask == expected_mask) > 0.999  # up to pixels at the threshold itself
    out = np.asarray(model(x))
    assert out.shape == (2, 64, 64, 1)
    np.testing.assert_allclose(out, np.asarray(expected), atol=2e-4)
    # Outside the lungs the input is black, whatever the X-ray holds there.
    masked = unprocess(prep, model.masked_input(x))
    assert float(jnp.max(jnp.abs(masked * (1 - mask)))) < 1e-6


def test_the_lung_model_is_frozen_and_stays_in_inference_mode():
    model = CascadedModel(
        _tiny(1), _tiny(2), input_preprocessing=UNIT, lung_preprocessing=UNIT, lung_size=32
    )
    model.train()
    assert model.lung.encoder.bn1.use_running_average  # the lung model: inference mode
    assert not model.infection.dec_bn.use_running_average
    trainable = nnx.state(model, nnx.Param)
    assert "lung" not in trainable and "infection" in trainable
    counts = models.count_params(model)
    assert counts.trainable == models.count_params(_tiny(2)).trainable


@pytest.fixture(scope="module")
def lung_run(tmp_path_factory) -> Path:
    """A tiny 'lung' run directory (untrained weights with spread-out probabilities)."""
    path = train_utils.write_tiny_run(tmp_path_factory.mktemp("lung") / "run", seed=4)
    config = json.loads((path / rundir.CONFIG_FILE).read_text())
    config["data"]["target"] = "lung"
    (path / rundir.CONFIG_FILE).write_text(json.dumps(config))
    return path


def _cascaded_config(tmp_path: Path, lung_run: Path):
    manual = tmp_path / "manual"
    make_covid_qu_ex(manual, per_class=3)
    config = train_utils.tiny_config(str(tmp_path / "tfds"))
    config.data.dataset, config.data.target = "covid_qu_ex/infection", "infection"
    config.data.manual_dir, config.data.stored_size = str(manual), 32
    config.data.protocol, config.data.num_folds = "paper2", 3
    config.model.preprocessing = "torch"
    config.model.cascade = paper2.cascade_block()
    config.model.cascade.scheme = "cascaded"
    config.model.cascade.lung_run = str(lung_run)
    config.batch_size, config.num_epochs, config.steps_per_epoch = 2, 1, 3
    config.bn_recalibration_batches = 0
    config.eval_split = "test"
    return config


@pytest.fixture(scope="module")
def cascaded_run(tmp_path_factory, lung_run) -> Path:
    root = tmp_path_factory.mktemp("cascaded")
    loop.train_and_evaluate(_cascaded_config(root, lung_run), root / "run")
    return root / "run"


def test_a_cascaded_run_trains_the_infection_model_only_and_loads_alone(
    cascaded_run, lung_run, tmp_path
):
    stored = rundir.read_config(cascaded_run)
    assert stored.model.cascade.lung_model.arch == "tiny"
    assert stored.model.cascade.lung_image_size == 32
    assert stored.model.cascade.lung_preprocessing.mode == "unit"
    results = json.loads((cascaded_run / rundir.RESULTS_FILE).read_text())
    assert results["final"]["split"] == "test"

    lung_before, _, _ = rundir.load_model(lung_run)
    moved = tmp_path / "elsewhere"
    shutil.move(str(lung_run), moved)  # the trained run holds the lung weights itself
    try:
        model, _, prep = rundir.load_model(cascaded_run)
    finally:
        shutil.move(str(moved), lung_run)
    assert isinstance(model, CascadedModel) and prep == TORCH
    same = jax.tree.map(
        lambda a, b: bool(jnp.array_equal(a, b)),
        nnx.to_pure_dict(nnx.state(model.lung)),
        nnx.to_pure_dict(nnx.state(lung_before)),
    )
    assert all(jax.tree.leaves(same))  # frozen through training, restored from the run
    x = jnp.asarray(TORCH(_grey(2, 32)))
    np.testing.assert_allclose(
        np.asarray(model(x)), np.asarray(model.infection(model.masked_input(x))), atol=1e-6
    )


def test_a_cascaded_run_predicts_and_exports_as_one_model(cascaded_run, tmp_path):
    from qatacov_jax.export.artifact import export_run, load_stablehlo
    from qatacov_jax.inference.predictor import make_probability_fn

    model, _, prep = rundir.load_model(cascaded_run)
    pixels = (_grey(3, 32) * 255).round().astype(np.uint8)
    want = np.asarray(models.foreground_probability(model(jnp.asarray(prep(pixels / 255.0)))))
    forward, states = make_probability_fn({"infection": model}, {"infection": prep})
    got = forward(states, {"infection": pixels / np.float32(255)})["infection"]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    export_run(cascaded_run, tmp_path / "hlo", fmt="stablehlo")
    exported = load_stablehlo(tmp_path / "hlo")
    served = np.asarray(jax.device_get(exported.call({"infection": pixels})["infection"]))
    np.testing.assert_allclose(served, want, atol=1e-4)


def test_a_cascaded_config_needs_a_lung_run(tmp_path, lung_run):
    config = _cascaded_config(tmp_path, lung_run)
    config.model.cascade.lung_run = None
    with pytest.raises(rundir.ConfigValueError, match="cascade.lung_run"):
        cascade.resolve(config)
    config.model.cascade.lung_run = str(tmp_path)
    with pytest.raises(rundir.ConfigValueError, match="not a training run directory"):
        cascade.resolve(config)
    config.model.cascade.scheme = "serial"
    with pytest.raises(rundir.ConfigValueError, match="parallel"):
        cascade.resolve(config)


def test_the_cascaded_config_pair_differs_only_in_the_scheme():
    from configs.paper2 import infection_fpn_densenet161, infection_fpn_densenet161_cascaded

    parallel = infection_fpn_densenet161.get_config().to_dict()
    cascaded = infection_fpn_densenet161_cascaded.get_config().to_dict()
    assert parallel["model"].pop("cascade")["scheme"] == "parallel"
    assert cascaded["model"].pop("cascade")["scheme"] == "cascaded"
    assert parallel == cascaded
