"""The segmentation models: API, shapes, skip features, freezing, modes, pure-function use.

Shape and gradient tests are parametrised from the registries (`ENCODERS`, `ARCHS`), so a
newly registered encoder or decoder is covered by registering it. Real weights are only built
for ResNet-50 (the cheapest encoder to initialise and compile on a CPU): every decoder runs
forward and backward on it under `jax.jit` at 64x64. Every other encoder runs forward and
backward with U-Net in slow tests; its other decoders are traced abstractly (`nnx.eval_shape`
/ `jax.eval_shape`), which checks every shape without compiling. Exact parameter counts live
in test_models_param_counts.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from qatacov_jax.models import (
    ARCHS,
    ENCODERS,
    TRAINABLE,
    FrozenParam,
    count_params,
    create_encoder,
    create_model,
)

SIZE = 64  # the smallest input size tried (inputs are multiples of 32)
STRIDES = (2, 4, 8, 16, 32)


def distinct(registry: dict) -> list[str]:
    """Registry names, in registration order, less aliases of an earlier name (`chexnet` is
    `densenet121`'s graph with other weights): one per constructor."""
    first: dict[int, str] = {}
    for name, constructor in registry.items():
        first.setdefault(id(constructor), name)
    return list(first.values())


MODEL_ENCODERS = distinct(ENCODERS)
DECODERS = distinct(ARCHS)
# Every decoder runs for real on REAL_ENCODER, the cheapest encoder to initialise and compile
# on a CPU; every other encoder runs for real with REAL_DECODER (slow), and is traced with
# the other decoders.
REAL_ENCODER = "resnet50"
REAL_DECODER = "unet"
# The nested decoders compile slowest: their real forward/backward runs only in slow tests.
SLOW_DECODERS = {"unetpp", "dla"}


def input_size(encoder: nnx.Module) -> int:
    """The smallest square input size, a multiple of 32 and at least SIZE, at which `encoder`
    gives all 5 features at their strides (an encoder with unpadded convolutions or pools
    needs more: its maps shrink to nothing or off the stride grid). Found by abstract
    evaluation: nothing is computed and the encoder is left as it was."""
    graphdef, state = nnx.split(encoder)

    def features(state, x):
        e = nnx.merge(graphdef, state)
        e.eval()
        return e(x)

    error = None
    for size in range(SIZE, 10 * SIZE + 1, 32):
        want = [
            (1, size // s, size // s, c) for s, c in zip(STRIDES, encoder.out_channels, strict=True)
        ]
        try:
            got = jax.eval_shape(
                features, state, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
            )
        except (ValueError, TypeError) as e:  # e.g. a concatenation of mismatched maps
            error = e
            continue
        if [f.shape for f in got] == want:
            return size
        error = AssertionError(f"features {[f.shape for f in got]}, want {want}")
    raise AssertionError(f"{type(encoder).__name__}: no input size up to {size} works") from error


def abstract_model(arch: str, encoder: str, **kw):
    return nnx.eval_shape(lambda: create_model(arch, encoder, rngs=nnx.Rngs(0), **kw))


def paths(model: nnx.Module, flt) -> set[tuple]:
    return {tuple(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(model, flt))}


def make_loss_fn(model: nnx.Module):
    """`(state, x, target) -> (loss, logits, grads, batch_stats)` as one jitted pure function,
    the way the trainer uses the model (split once, merge inside jit)."""
    graphdef, state = nnx.split(model)

    def loss_fn(m, x, target):
        logits = m(x)
        return optax.sigmoid_binary_cross_entropy(logits, target).mean(), logits

    @jax.jit
    def step(state, x, target):
        m = nnx.merge(graphdef, state)
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE), has_aux=True)
        (loss, logits), grads = grad_fn(m, x, target)
        return loss, logits, grads, nnx.state(m, nnx.BatchStat)

    return step, state


def batch(seed: int = 0, n: int = 2, size: int = SIZE) -> tuple[jax.Array, jax.Array]:
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, size, size, 3), jnp.float32)
    target = (jax.random.uniform(kt, (n, size, size, 1)) > 0.7).astype(jnp.float32)
    return x, target


def check_forward_backward(model: nnx.Module) -> None:
    size = input_size(model.encoder)
    step, state = make_loss_fn(model)
    before = nnx.state(model, nnx.BatchStat)
    loss, logits, grads, stats = step(state, *batch(size=size))
    params = nnx.state(model, TRAINABLE)
    assert logits.shape == (2, size, size, 1) and logits.dtype == jnp.float32
    assert np.isfinite(float(loss)) and bool(jnp.isfinite(logits).all())
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, params)
    norms = {"/".join(map(str, p)): float(jnp.linalg.norm(v)) for p, v in nnx.to_flat_state(grads)}
    assert all(np.isfinite(n) for n in norms.values())
    # Gradients reach both ends of the network.
    assert norms["final_conv/kernel"] > 0
    first_conv = next(k for k in norms if k.startswith("encoder/") and k.endswith("kernel"))
    assert norms[first_conv] > 0, first_conv
    # Training mode updates the BatchNorm running statistics.
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, stats)
    assert any(jax.tree.leaves(moved))


# --- names and inputs -----------------------------------------------------------------------


def test_registries_hold_the_contract_names():
    assert set(ENCODERS) == {"densenet121", "chexnet", "inceptionv3", "resnet50"}
    assert set(ARCHS) == {"unet", "unetpp", "dla", "fpn"}
    assert ENCODERS["chexnet"] is ENCODERS["densenet121"]


def test_unknown_names_raise_listing_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown encoder 'vgg16'.*densenet121.*resnet50"):
        create_encoder("vgg16", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Unknown architecture 'segnet'.*dla.*fpn.*unet"):
        create_model("segnet", "resnet50", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Unknown encoder"):
        create_model("unet", "resnet", rngs=nnx.Rngs(0))


def test_whole_models_are_registered_apart_from_the_paper_grid():
    """`MODELS` (the tiny test model): selected by arch = encoder = its name, built on its own
    encoder only, outside `ENCODERS` x `ARCHS`; each name is registered once."""
    from qatacov_jax.models import MODELS, encoder_preprocessing, register_model
    from qatacov_jax.models.tiny import TinyEncoder, TinySegmenter

    assert set(MODELS) == {"tiny"} and "tiny" not in ENCODERS and "tiny" not in ARCHS
    model = create_model("tiny", "tiny", rngs=nnx.Rngs(0))
    assert isinstance(model, TinySegmenter) and isinstance(model.encoder, TinyEncoder)
    assert model(jnp.ones((2, 8, 12, 3))).shape == (2, 8, 12, 1)
    assert tuple(count_params(model)) == (3233, 64)
    # Frozen: the encoder's conv kernels (216 + 1152) stop training, its BatchNorms do not.
    frozen = create_model(
        "tiny", create_encoder("tiny", rngs=nnx.Rngs(0)), frozen=True, rngs=nnx.Rngs(0)
    )
    assert tuple(count_params(frozen)) == (3233 - 1368, 64 + 1368)
    assert encoder_preprocessing("tiny").mode == "unit"
    with pytest.raises(ValueError, match="its own encoder"):
        create_model("tiny", "resnet50", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="encoder of model 'tiny' only"):
        create_model("unet", "tiny", rngs=nnx.Rngs(0))
    for taken in ("tiny", "unet", "resnet50", "classifier"):
        with pytest.raises(ValueError, match="taken"):
            register_model(taken, MODELS["tiny"])


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 60, 64, 3), "divisible by 32"),
        ((1, 64, 100, 3), "divisible by 32"),
        ((1, 64, 64, 1), r"\(B, H, W, 3\)"),
        ((64, 64, 3), r"\(B, H, W, 3\)"),
    ],
)
def test_bad_input_shapes_raise(shape, message):
    model = abstract_model("unet", "resnet50")
    # The check runs before any layer, so the abstract model is enough.
    with pytest.raises(ValueError, match=message) as info:
        model(np.zeros(shape, np.float32))
    assert str(shape) in str(info.value)


# --- encoders -------------------------------------------------------------------------------


def test_parametrisation_covers_every_registered_graph():
    # Aliases (`chexnet`) share their constructor, hence their graph, with a tested encoder.
    assert set(ENCODERS.values()) == {ENCODERS[name] for name in MODEL_ENCODERS}
    assert len(MODEL_ENCODERS) == len(set(ENCODERS.values())) and "chexnet" not in MODEL_ENCODERS
    assert set(DECODERS) == set(ARCHS) and SLOW_DECODERS <= set(ARCHS)
    assert REAL_ENCODER in MODEL_ENCODERS and REAL_DECODER in DECODERS


@pytest.mark.parametrize("name", MODEL_ENCODERS)
def test_encoder_features_have_declared_channels_and_strides(name):
    encoder = nnx.eval_shape(lambda: create_encoder(name, rngs=nnx.Rngs(0)))
    encoder.eval()
    assert len(encoder.out_channels) == 5
    size = input_size(encoder)
    h, w = size, size + 32  # not square, to catch swapped axes
    features = nnx.eval_shape(
        lambda e, x: e(x), encoder, jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    )
    assert [f.shape for f in features] == [
        (2, h // s, w // s, c) for s, c in zip(STRIDES, encoder.out_channels, strict=True)
    ]


def test_encoder_layer_names_follow_keras():
    dn = nnx.eval_shape(lambda: create_encoder("densenet121", rngs=nnx.Rngs(0)))
    for name in ("conv1_conv", "conv1_bn", "conv2_block1_0_bn", "conv2_block1_1_conv",
                 "conv2_block6_2_conv", "pool2_bn", "pool2_conv", "conv5_block16_2_conv", "bn"):  # fmt: skip
        assert hasattr(dn, name), name
    assert isinstance(dn.conv1_conv, nnx.Conv) and isinstance(dn.bn, nnx.BatchNorm)
    assert dn.conv1_conv.kernel.shape == (7, 7, 3, 64)  # HWIO, as Keras

    inc = nnx.eval_shape(lambda: create_encoder("inceptionv3", rngs=nnx.Rngs(0)))
    assert inc.conv2d_1.kernel.shape == (3, 3, 3, 32)
    assert inc.conv2d_94.kernel.shape == (1, 1, 2048, 192)  # mixed10's pool branch
    assert not hasattr(inc, "conv2d_95")
    assert inc.batch_normalization_1.scale is None  # BN without scale

    rn = nnx.eval_shape(lambda: create_encoder("resnet50", rngs=nnx.Rngs(0)))
    assert rn.bn_data.scale is None and rn.bn_data.epsilon == 2e-5
    assert rn.stage1_unit1_sc.kernel.shape == (1, 1, 64, 256)
    assert not hasattr(rn, "stage1_unit2_sc")
    assert rn.stage4_unit3_conv3.kernel.shape == (1, 1, 512, 2048)


# --- full models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_encoder():
    return create_encoder(REAL_ENCODER, rngs=nnx.Rngs(1))


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_DECODERS else a for a in DECODERS]
)
def test_resnet50_models_forward_and_gradients(resnet50_encoder, arch):
    # Each model gets its own copy of the (randomly initialised) encoder.
    model = create_model(arch, nnx.clone(resnet50_encoder), rngs=nnx.Rngs(2))
    assert model.encoder is not None and model.arch == arch
    check_forward_backward(model)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", [e for e in MODEL_ENCODERS if e != REAL_ENCODER])
def test_unet_forward_and_gradients(encoder):
    check_forward_backward(create_model(REAL_DECODER, encoder, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    "arch,encoder",
    [(a, e) for a in DECODERS if a != REAL_DECODER for e in MODEL_ENCODERS if e != REAL_ENCODER],
)
def test_other_models_trace_forward(arch, encoder):
    # Decoders are encoder-agnostic code (they see only `out_channels`), and run for real on
    # ResNet-50 above; here every other pairing is traced for shapes. Eval mode keeps the
    # trace free of BatchNorm statistic updates, which makes it much cheaper.
    model = abstract_model(arch, encoder)
    model.eval()
    size = input_size(model.encoder)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    logits = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert logits.shape == (2, size, size, 1) and logits.dtype == jnp.float32


def test_eval_mode_uses_running_statistics(resnet50_encoder):
    model = create_model("unet", nnx.clone(resnet50_encoder), rngs=nnx.Rngs(3))

    # The graphdef holds the train/eval switch, so it is a static argument: a mode change
    # must retrace (a closed-over graphdef would silently reuse the first trace).
    @jax.jit(static_argnums=0)
    def forward(graphdef, state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m)

    x, _ = batch(seed=4, n=3)
    pair_b, pair_c = x[:2], x[::2]  # the same first image with different batch partners
    model.eval()
    graphdef, state = nnx.split(model)
    out_b, after = forward(graphdef, state, pair_b)
    out_c, _ = forward(graphdef, state, pair_c)
    # Inference is per-sample (no batch statistics) and leaves the running averages alone.
    np.testing.assert_allclose(out_b[0], out_c[0], rtol=1e-5, atol=1e-5)
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state, after)
    assert all(jax.tree.leaves(same))
    model.train()
    graphdef, state = nnx.split(model)
    train_b, _ = forward(graphdef, state, pair_b)
    train_c, _ = forward(graphdef, state, pair_c)
    assert not np.allclose(train_b[0], train_c[0], atol=1e-4)


# --- freezing and the trainable filter ------------------------------------------------------


def test_frozen_param_is_not_trainable():
    assert issubclass(FrozenParam, nnx.Variable)
    assert not issubclass(FrozenParam, nnx.Param)
    assert TRAINABLE is nnx.Param


@pytest.mark.parametrize("encoder", MODEL_ENCODERS)
def test_trainable_filter_selects_expected_leaves(encoder):
    free = abstract_model("unet", encoder)
    frozen = abstract_model("unet", encoder, frozen=True)
    all_params = paths(free, nnx.Param)
    assert paths(free, FrozenParam) == set()
    assert paths(free, TRAINABLE) == all_params

    encoder_params = {p for p in all_params if p[0] == "encoder"}
    # Encoder convs have no bias (all followed by BN); everything else in it is BN scale/bias.
    conv_kernels = {p for p in encoder_params if p[-1] == "kernel"}
    bn_affine = encoder_params - conv_kernels
    assert conv_kernels and bn_affine and {p[-1] for p in bn_affine} <= {"scale", "bias"}

    assert paths(frozen, FrozenParam) == conv_kernels
    assert paths(frozen, TRAINABLE) == all_params - conv_kernels
    assert paths(frozen, nnx.BatchStat) == paths(free, nnx.BatchStat)
    assert {p[-1] for p in paths(frozen, nnx.BatchStat)} == {"mean", "var"}
    # Nothing else lives in the state (no RNG streams, no stray variables).
    every = paths(frozen, ...)
    assert every == paths(frozen, nnx.Any(TRAINABLE, FrozenParam, nnx.BatchStat))


def test_optimizer_sees_only_trainable_parameters():
    def build():
        model = create_model("unet", "resnet50", frozen=True, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, optax.adam(1e-4), wrt=TRAINABLE)

    model, optimizer = nnx.eval_shape(build)
    mu = optimizer.opt_state[0].mu
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(mu)) == count_params(model).trainable


def test_frozen_encoder_passed_in_is_frozen_in_place():
    def build():
        encoder = create_encoder("resnet50", rngs=nnx.Rngs(0))
        return encoder, create_model("fpn", encoder, frozen=True, rngs=nnx.Rngs(0))

    encoder, model = nnx.eval_shape(build)
    assert model.encoder is encoder
    assert isinstance(model.encoder.conv0.kernel, FrozenParam)
    assert isinstance(model.encoder.bn0.scale, nnx.Param)
    assert isinstance(model.decoder.final_stage.conv.kernel, nnx.Param)
    assert model.encoder_name == "resnet50"


# --- compute dtype --------------------------------------------------------------------------


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    model = abstract_model("unet", "resnet50", dtype=jnp.bfloat16)
    model.eval()
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32)
    features = nnx.eval_shape(lambda m, x: m.encoder(x.astype(jnp.bfloat16)), model, x)
    assert {f.dtype for f in features} == {jnp.dtype(jnp.bfloat16)}
    logits = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert logits.dtype == jnp.float32
