"""The activation-map baseline's classifiers: model, loss, steps, and the training loop."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_utils
from flax import nnx

from qatacov_jax import models
from qatacov_jax.metrics import MetricAccumulator, batch_statistics
from qatacov_jax.runtime import sharding
from qatacov_jax.training import loop, optim, rundir
from qatacov_jax.training.losses import (
    ClassificationLoss,
    LossSpec,
    categorical_crossentropy,
    make_loss,
)
from qatacov_jax.training.steps import make_train_step


def tiny_classifier(seed: int = 0) -> models.EncoderClassifier:
    """The tiny encoder as a classifier, as `build_model` makes it of `tiny_config` with
    `model.arch = "classifier"` and `seed`."""
    return models.create_classifier(train_utils.TINY, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("encoder", ["densenet121", "inceptionv3", "resnet50"])
def test_classifier_is_the_encoder_plus_a_dense_head(encoder):
    """Abstract build (no memory): the encoder's parameters + a (C, 2) kernel and 2 biases
    (Keras' GlobalAveragePooling2D + Dense(2)); frozen, only BatchNorm and the head train."""
    cls = nnx.eval_shape(lambda: models.create_classifier(encoder, rngs=nnx.Rngs(0)))
    head = cls.encoder.out_channels[-1] * 2 + 2
    assert models.count_params(cls).trainable == models.count_params(cls.encoder).trainable + head
    assert cls.encoder_name == encoder and cls.arch == models.CLASSIFIER_ARCH
    if encoder == "densenet121":
        frozen = nnx.eval_shape(
            lambda: models.create_classifier(encoder, frozen=True, rngs=nnx.Rngs(0))
        )
        bn_affine = sum(
            x.size for x in jax.tree.leaves(nnx.state(frozen.encoder, models.TRAINABLE))
        )
        assert models.count_params(frozen).trainable == bn_affine + head


def test_classifier_output():
    model = tiny_classifier()
    logits = model(jnp.ones((3, 32, 32, 3)))
    assert logits.shape == (3, 2) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="divisible by 32"):
        model(jnp.ones((1, 30, 30, 3)))


def test_categorical_crossentropy_is_minus_log_softmax():
    logits = jnp.array([[2.0, -1.0], [0.5, 0.5], [-30.0, 40.0]])
    labels = jnp.array([0, 1, 1])
    # float64 reference; the float32 side is a 2-term log-sum-exp per row and a 3-term mean of
    # non-negative values (no cancellation), a few ulp from exact on any CPU: rtol=1e-6 (~8 ulp).
    z = np.asarray(logits, np.float64)
    want = -np.log(np.exp(z) / np.exp(z).sum(-1, keepdims=True))[[0, 1, 2], labels]
    value, parts = categorical_crossentropy(logits, labels)
    assert parts == {}
    np.testing.assert_allclose(float(value), want.mean(), rtol=1e-6)
    weighted, _ = categorical_crossentropy(logits, labels, weights=jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(float(weighted), want[:2].mean(), rtol=1e-6)


def test_make_loss_picks_the_task_from_the_arch():
    from configs import classifier_quickstart, quickstart

    assert isinstance(make_loss(quickstart.get_config()), LossSpec)
    config = classifier_quickstart.get_config()
    assert make_loss(config) == ClassificationLoss()
    config.loss.name = "focal"
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        make_loss(config)


def test_classifier_statistics_have_detection_counts_only():
    probs = np.array([0.9, 0.2, 0.6, 0.4], np.float32)
    stats = batch_statistics(probs, None, np.array([1, 1, 0, 0]), np.array([1, 1, 1, 0], bool))
    acc = MetricAccumulator()
    acc.update(stats)
    assert acc.pixel.total == 0
    assert (acc.detection.tp, acc.detection.fn, acc.detection.fp, acc.detection.tn) == (1, 1, 1, 0)


def test_classifier_train_step_one_device_equals_eight():
    """The classification step on the data-parallel mesh: same losses on 1 and 8 devices."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        label = rng.integers(0, 2, 8).astype(np.int32)
        # Brighter images are "COVID-19": something a few steps can learn.
        image = rng.random((8, 32, 32, 3)) * 0.5 + 0.5 * label[:, None, None, None]
        batches.append({"image": image.astype(np.float32), "label": label})
    cfg = train_utils.tiny_config("unused").optim
    losses = {}
    for n in (1, 8):
        model = tiny_classifier()
        model.train()
        opt = optim.make_optimizer(model, cfg)
        (mdef, mstate), (odef, ostate) = nnx.split(model), nnx.split(opt)
        mesh = sharding.make_mesh(n)
        step = make_train_step(mdef, odef, ClassificationLoss(), mesh)
        state = sharding.replicate({"model": mstate, "opt": ostate}, mesh)
        losses[n] = []
        for b in batches:
            state, metrics = step(state, sharding.shard_batch(b, mesh))
            losses[n].append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[1], losses[8], rtol=1e-5)
    assert losses[1][-1] < losses[1][0]


def test_classifier_run_directory(tmp_path):
    """`train_and_evaluate` trains a classifier like a segmenter (checkpoints, results,
    resume-ready run directory); validation reports detection metrics and no pixel ones,
    and `load_model` gives the classifier back."""
    from configs import default

    config = train_utils.tiny_config(str(tmp_path / "tfds"))
    config.model.arch = models.CLASSIFIER_ARCH
    config.loss = default.classifier_variant("densenet121").loss
    config.best_metric = "detection_f1"
    results = loop.train_and_evaluate(config, tmp_path / "run")
    final = results["final"]
    assert "detection_f1" in final and not any(k.startswith("pixel_") for k in final)
    assert set(results["history"][0]["train"]) == {"loss", "grad_norm"}
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["final"]["detection_f1"] == results["final"]["detection_f1"]
    assert on_disk["selection"]["split"] is None  # a CV round: the final model, no selection
    model, cfg, _ = rundir.load_model(tmp_path / "run")
    assert isinstance(model, models.EncoderClassifier) and cfg.model.arch == "classifier"
    assert jax.tree.leaves(nnx.state(model))  # restored from checkpoints/best
