"""Round trip: ported encoder -> full model -> a few training steps
-> orbax checkpoint -> reload gives identical outputs.

Written with plain nnx / optax / orbax (the training loop proper lives in `train.py`); the
model is U-Net on a ported ResNet-50 (the encoder whose training graph compiles fastest on
CPU), frozen the segmentation_models way, which also checks that frozen ported weights
survive training untouched while BatchNorm keeps learning. The model is built abstractly and
its decoder filled with host-side random values: eager random initialisation of the full
model costs tens of seconds on a 2-core CI machine and is not what this test is about.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import weights_files as wf
from flax import nnx

from qatacov_jax.models import TRAINABLE, FrozenParam, create_model
from qatacov_jax.weights import load_encoder_weights, port


def fill_random(model: nnx.Module, seed: int) -> None:
    """Gives every still-abstract variable of `model` a concrete small random value
    (BatchNorm: scale 1, bias/mean 0, var 1). Variables that already hold arrays are kept."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)

    def value(path, leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        name = getattr(path[-1], "key", path[-1])  # a jax DictKey
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

    pure = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(value, pure))
    nnx.update(model, state)


def _logits(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(x)


_logits_jit = jax.jit(_logits, static_argnums=0)


@pytest.mark.slow
def test_ported_encoder_trains_checkpoints_and_reloads_identically(tmp_path):
    weights = wf.random_weights("resnet50", seed=7)
    src = wf.write_keras_h5(tmp_path / "resnet50.h5", weights)
    ported = port(src, "resnet50", tmp_path / "ported")

    def build():
        return create_model("unet", "resnet50", frozen=True, rngs=nnx.Rngs(1))

    model = nnx.eval_shape(build)
    preprocessing = load_encoder_weights(model.encoder, ported)
    fill_random(model, seed=1)  # the decoder and head
    assert isinstance(model.encoder.conv0.kernel, FrozenParam)
    np.testing.assert_array_equal(model.encoder.conv0.kernel.value, weights[("conv0", "kernel")])

    rng = np.random.default_rng(0)
    images = preprocessing(rng.uniform(0, 1, (2, 64, 64, 1)).astype(np.float32))
    masks = (rng.uniform(0, 1, (2, 64, 64, 1)) > 0.7).astype(np.float32)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=TRAINABLE)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.sigmoid_binary_cross_entropy(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE))(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    losses = [float(train_step(model, optimizer, images, masks)) for _ in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # Frozen ported weights are untouched; BN statistics and gamma did move.
    kernel = model.encoder.stage3_unit2_conv2.kernel.value
    np.testing.assert_array_equal(kernel, weights[("stage3_unit2_conv2", "kernel")])
    assert not np.allclose(model.encoder.bn1.mean.value, weights[("bn1", "mean")])
    assert not np.allclose(model.encoder.bn0.scale.value, weights[("bn0", "scale")])

    model.eval()
    graphdef, state = nnx.split(model)
    expected = np.asarray(_logits_jit(graphdef, state, images))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", state)

    fresh = nnx.eval_shape(build)
    fresh.eval()
    fresh_graphdef, abstract_state = nnx.split(fresh)
    assert fresh_graphdef == graphdef
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "ckpt", abstract_state)
    got = np.asarray(_logits_jit(fresh_graphdef, restored, images))
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (2, 64, 64, 1) and np.isfinite(got).all()
    assert jnp.abs(got).max() > 0
