"""The jitted data-parallel train step: device-count invariance and the frozen encoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from train_utils import tiny_model

from qatacov_jax import models
from qatacov_jax.runtime import sharding
from qatacov_jax.training import optim
from qatacov_jax.training.losses import LossSpec
from qatacov_jax.training.steps import make_train_step

OPTIM = ml_collections.ConfigDict(
    {"name": "adam", "lr": 1e-2, "b1": 0.9, "b2": 0.999, "eps": 1e-7, "grad_clip_norm": None}
)


def _batches(n: int, b: int = 8, size: int = 32) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        image = rng.random((b, size, size, 3), np.float32)
        # Masks that depend on the image, so there is something to learn.
        mask = (image[..., :1] > 0.7).astype(np.float32)
        out.append({"image": image, "mask": mask})
    return out


def _setup(model: nnx.Module, mesh):
    model.train()
    opt = optim.make_optimizer(model, OPTIM)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(opt)
    step = make_train_step(model_def, opt_def, LossSpec(), mesh)
    state = sharding.replicate({"model": model_state, "opt": opt_state}, mesh)
    return step, state


def _train(model: nnx.Module, num_devices: int, batches) -> tuple[list[float], dict]:
    mesh = sharding.make_mesh(num_devices)
    step, state = _setup(model, mesh)
    losses = []
    for batch in batches:
        state, metrics = step(state, sharding.shard_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["model"].to_pure_dict())


def test_one_device_equals_eight_devices():
    """Same global batch on 1 and 8 devices: BatchNorm statistics and gradients are global,
    so losses and parameters agree to float round-off (the reductions are split differently)."""
    batches = _batches(3)
    l1, p1 = _train(tiny_model(0), 1, batches)
    l8, p8 = _train(tiny_model(0), 8, batches)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    assert l1[-1] < l1[0]  # it trains, so the comparison is not between two frozen models
    flat1, flat8 = jax.tree.leaves_with_path(p1), jax.tree.leaves(p8)
    for (path, a), b in zip(flat1, flat8, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))


def test_state_is_replicated_and_donated():
    mesh = sharding.make_mesh(8)
    step, state = _setup(tiny_model(0), mesh)
    old_leaf = jax.tree.leaves(state)[0]
    new_state, _ = step(state, sharding.shard_batch(_batches(1)[0], mesh))
    leaf = jax.tree.leaves(new_state)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
    assert old_leaf.is_deleted()  # donated: updated in place, no second copy of the state


def _changed(before: dict, after: dict) -> dict[str, bool]:
    out = {}
    for (path, a), b in zip(jax.tree.leaves_with_path(before), jax.tree.leaves(after), strict=True):
        out[jax.tree_util.keystr(path)] = not np.array_equal(a, b)
    return out


def _check_frozen(model: nnx.Module, batches, num_devices: int = 1) -> None:
    before = jax.device_get(nnx.state(model).to_pure_dict())
    frozen_paths = {
        jax.tree_util.keystr(p) for p, _ in nnx.to_flat_state(nnx.state(model, models.FrozenParam))
    }
    assert frozen_paths, "freezing produced no FrozenParam"
    _, after = _train(model, num_devices, batches)
    changed = _changed(before, after)
    encoder = {k: v for k, v in changed.items() if "'encoder'" in k}
    decoder = {k: v for k, v in changed.items() if "'encoder'" not in k}
    for path, did in encoder.items():
        is_bn_affine = ("'scale'" in path or "'bias'" in path) and "bn" in path.lower()
        is_bn_stat = "'mean'" in path or "'var'" in path
        if is_bn_affine or is_bn_stat:
            continue  # trainable (segmentation_models keeps BN gamma/beta trainable) / stats
        assert not did, f"frozen encoder weight {path} changed"
    assert any(v for k, v in encoder.items() if "'scale'" in k), "encoder BN scale not trained"
    assert all(decoder.values()), [k for k, v in decoder.items() if not v]


def test_frozen_encoder_tiny():
    _check_frozen(tiny_model(0, frozen=True), _batches(2))


@pytest.mark.slow
def test_frozen_encoder_unet_densenet121():
    """The real model: U-Net DenseNet-121 with frozen=True, 32x32, two steps."""
    rngs = nnx.Rngs(0)
    encoder = models.create_encoder("densenet121", rngs=rngs)
    model = models.create_model("unet", encoder, frozen=True, rngs=rngs)
    _check_frozen(model, _batches(2, b=2), num_devices=1)


def test_bf16_compute_keeps_fp32_params():
    mesh = sharding.make_mesh(1)
    step, state = _setup(tiny_model(0, dtype=jnp.bfloat16), mesh)
    state, metrics = step(state, sharding.shard_batch(_batches(1)[0], mesh))
    assert metrics["loss"].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(state["model"].to_pure_dict())} == {
        np.dtype(np.float32)
    }


def test_batch_norm_recalibration_uses_exact_batch_statistics():
    from qatacov_jax.training.steps import (
        make_batch_stats_step,
        recalibrate_batch_norm,
        zero_momentum_graphdef,
    )

    mesh = sharding.make_mesh(2)
    model = tiny_model(0)
    stats_step = make_batch_stats_step(zero_momentum_graphdef(model), mesh)
    assert all(m.momentum == 0.9 for _, m in model.iter_modules() if isinstance(m, nnx.BatchNorm))
    batches = _batches(3)
    state = sharding.replicate(nnx.state(model), mesh)
    new = recalibrate_batch_norm(
        stats_step, state, iter(sharding.shard_batch(b, mesh) for b in batches), 3
    )
    # encoder.bn1 sees conv1's output: its mean over each batch, averaged over batches.
    want = np.mean(
        [np.asarray(model.encoder.conv1(b["image"])).mean(axis=(0, 1, 2)) for b in batches], 0
    )
    np.testing.assert_allclose(
        np.asarray(new["encoder"]["bn1"]["mean"][...]), want, rtol=1e-4, atol=1e-6
    )
    # Weights untouched, structure unchanged (the jitted train step takes it as is).
    assert jax.tree.structure(new) == jax.tree.structure(state)
    np.testing.assert_array_equal(
        np.asarray(new["head"]["kernel"][...]), np.asarray(state["head"]["kernel"][...])
    )
