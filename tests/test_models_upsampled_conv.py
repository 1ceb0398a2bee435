"""The decoders' conv on the low-resolution grid equals upsample -> concatenate -> conv.

`qatacov_jax.models.layers.conv_of_upsampled_concat` replaces the Keras graphs'
UpSampling2D + Concatenate + Conv2D in every U-Net/UNet++/DLA node and in the FPN's final
stage (a speed-up measured by benchmarks/compare_keras.py). These tests hold it to the
literal computation: every upsampling factor used, uneven and tiny maps (borders are where
the phase taps differ), with and without bias and skips, in training mode (BatchNorm batch
statistics) and with gradients, and in bfloat16. The UNet++ decoder, whose dense skips are
convolved once for all later nodes of their row (`stacked_conv3x3`), is held to the same
literal graph node by node.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qatacov_jax.models.folding import fold_batchnorm
from qatacov_jax.models.fpn import FPNDecoder
from qatacov_jax.models.layers import (
    ConvBnRelu,
    DecoderBlock,
    conv,
    conv3x3_of_upsampled,
    conv_of_upsampled_concat,
    upsample,
)
from qatacov_jax.models.nested import NestedDecoder

DN = ("NHWC", "HWIO", "NHWC")


def literal_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DN)


def normal(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
@pytest.mark.parametrize("hw", [(1, 1), (2, 5), (7, 7)])
def test_conv3x3_of_upsampled_equals_upsample_then_conv(factor, hw):
    rng = np.random.default_rng(factor)
    x, kernel = normal(rng, 2, *hw, 3), normal(rng, 3, 3, 3, 4)
    expected = literal_conv(upsample(x, factor), kernel)
    got = conv3x3_of_upsampled(x, kernel, factor)
    assert got.shape == expected.shape == (2, factor * hw[0], factor * hw[1], 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "parts",
    [
        [(2, 5)],  # the U-Net's top node: nothing to concatenate
        [(2, 5), (1, 3)],  # U-Net node: upsampled + one skip
        [(2, 5), (1, 3), (1, 2), (1, 1)],  # UNet++ node: several skips, convolved together
        [(1, 4), (2, 3), (4, 2), (8, 5)],  # FPN final stage
    ],
)
@pytest.mark.parametrize("use_bias", [False, True])
def test_conv_of_upsampled_concat_equals_the_keras_graph(parts, use_bias):
    rng = np.random.default_rng(len(parts))
    size = 16
    xs = [(normal(rng, 2, size // f, size // f, c), f) for f, c in parts]
    layer = conv(sum(c for _, c in parts), 6, 3, rngs=nnx.Rngs(0), use_bias=use_bias)
    if use_bias:
        layer.bias.set_value(normal(rng, 6))
    expected = layer(jnp.concatenate([upsample(x, f) if f > 1 else x for x, f in xs], -1))
    np.testing.assert_allclose(conv_of_upsampled_concat(layer, xs), expected, rtol=1e-5, atol=1e-5)


def assert_same_loss_and_grads(loss, ours: tuple, reference: tuple) -> None:
    """`loss(module, forward)` and its parameter gradients agree for two (module, forward)."""
    value, grads = nnx.value_and_grad(loss)(*ours)
    ref, ref_grads = nnx.value_and_grad(loss)(*reference)
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    flat = nnx.to_flat_state(nnx.state(grads))
    ref_flat = nnx.to_flat_state(nnx.state(ref_grads))
    for (path, g), (_, rg) in zip(flat, ref_flat, strict=True):
        rg = np.asarray(rg.get_value())
        # float32 sums in a different order: compare against each gradient's own scale.
        np.testing.assert_allclose(g.get_value(), rg, atol=1e-5 * np.abs(rg).max(), err_msg=path)


def literal_block(block: DecoderBlock, x: jax.Array, skips: list[jax.Array]) -> jax.Array:
    """The Keras node as written: upsample, concatenate, two Conv-BN-ReLU."""
    y = jnp.concatenate([upsample(x, 2), *skips], axis=-1)
    return block.conv2(block.conv1(y))


def test_decoder_block_matches_literal_graph_in_training_with_gradients():
    rng = np.random.default_rng(0)
    x, skip = normal(rng, 3, 4, 4, 5), normal(rng, 3, 8, 8, 2)
    block = DecoderBlock(7, 4, rngs=nnx.Rngs(0))
    twin = nnx.clone(block)
    block.train()
    twin.train()

    def loss(m, f):
        return jnp.sum(f(m, x, [skip]) ** 2)

    assert_same_loss_and_grads(loss, (block, lambda m, *a: m(*a)), (twin, literal_block))
    # BatchNorm's running statistics were updated from the same batch statistics.
    np.testing.assert_allclose(
        block.conv1.bn.mean.get_value(), twin.conv1.bn.mean.get_value(), atol=1e-6
    )


def test_bfloat16_compute_matches_float32_within_bf16_rounding():
    rng = np.random.default_rng(3)
    x, skip = normal(rng, 2, 6, 6, 8), normal(rng, 2, 12, 12, 8)
    layer32 = ConvBnRelu(16, 8, rngs=nnx.Rngs(0)).conv
    layer16 = ConvBnRelu(16, 8, rngs=nnx.Rngs(0), dtype=jnp.bfloat16).conv
    y32 = conv_of_upsampled_concat(layer32, [(x, 2), (skip, 1)])
    y16 = conv_of_upsampled_concat(layer16, [(x, 2), (skip, 1)])
    assert y16.dtype == jnp.bfloat16
    scale = float(jnp.abs(y32).max())
    np.testing.assert_allclose(y16.astype(jnp.float32), y32, atol=0.02 * scale)


def assert_decoder_matches_literal(decoder: nnx.Module, literal, features: list) -> None:
    """`decoder(features)` equals `literal(decoder, features)` (the Keras graph as written):
    loss and gradients in training mode, then folded for inference against the literal
    graph in eval mode."""
    twin = nnx.clone(decoder)
    decoder.train()
    twin.train()

    def loss(m, f):
        return jnp.sum(f(m, features) ** 2)

    assert_same_loss_and_grads(loss, (decoder, lambda m, f: m(f)), (twin, literal))
    folded = fold_batchnorm(decoder)
    twin.eval()
    expected = literal(twin, features)
    scale = float(jnp.abs(expected).max())
    np.testing.assert_allclose(folded(features), expected, atol=1e-5 * scale)


def literal_nested(decoder: NestedDecoder, features: list[jax.Array]) -> jax.Array:
    """The Keras UNet++/DLA graph as written: every node upsamples, concatenates, convolves."""
    grid = {(i, 0): f for i, f in enumerate(features, start=1)}
    for i, j, skips in decoder.nodes:
        block = getattr(decoder, f"decoder_stage{i}_{j}")
        grid[(i, j)] = literal_block(block, grid[(i + 1, j - 1)], [grid[s] for s in skips])
    return grid[(0, 5)]


@pytest.mark.parametrize("dense_skips", [True, False])
def test_nested_decoder_matches_literal_graph_in_training_with_gradients(dense_skips):
    rng = np.random.default_rng(4)
    channels = (3, 4, 5, 6, 7)
    features = [normal(rng, 2, 32 >> k, 32 >> k, c) for k, c in enumerate(channels)]
    decoder = NestedDecoder(
        channels, dense_skips=dense_skips, rngs=nnx.Rngs(0), decoder_filters=(8, 6, 5, 4, 3)
    )
    assert bool(decoder.skip_uses) == dense_skips  # UNet++ stacks its skips, DLA has none
    assert_decoder_matches_literal(decoder, literal_nested, features)


def literal_fpn(decoder: FPNDecoder, features: list[jax.Array]) -> jax.Array:
    """The Keras FPN graph as written: every pyramid level built, upsampled, concatenated."""
    x, levels = features[4], []
    for stage, skip in zip((5, 4, 3, 2), features[3::-1], strict=True):
        block = getattr(decoder, f"fpn_stage_p{stage}")
        if block.pre_conv is not None:
            x = block.pre_conv(x)
        x = upsample(x, 2) + block.conv(skip)
        segm = getattr(decoder, f"segm_stage{stage}")
        levels.append(segm.conv_b(segm.conv_a(x)))
    s5, s4, s3, s2 = levels
    y = decoder.final_stage(
        jnp.concatenate([s2, upsample(s3, 2), upsample(s4, 4), upsample(s5, 8)], axis=-1)
    )
    b, h, w, c = y.shape
    return jax.image.resize(y, (b, 2 * h, 2 * w, c), method="bilinear")


def test_fpn_decoder_matches_literal_graph_in_training_with_gradients():
    # P2 is never built (its segmentation conv composes the 1x1 lateral conv into the 3x3
    # one); borders matter (the lateral bias through a zero-padded 3x3 conv), so tiny maps.
    rng = np.random.default_rng(5)
    channels = (3, 4, 5, 6, 300)  # the deepest != 256: the P5 block has its pre_conv
    features = [normal(rng, 2, 32 >> k, 32 >> k, c) for k, c in enumerate(channels)]
    decoder = FPNDecoder(channels, rngs=nnx.Rngs(0))
    p2 = decoder.fpn_stage_p2.conv
    p2.bias.set_value(normal(rng, *p2.bias.shape))  # a non-zero lateral bias
    assert_decoder_matches_literal(decoder, literal_fpn, features)
