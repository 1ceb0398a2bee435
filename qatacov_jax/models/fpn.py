"""FPN decoder (COVID-QU-Ex paper's best decoder): segmentation_models 1.0.1 Keras `FPN`.

We follow the Keras `FPN` defaults: pyramid 256 filters, segmentation 128, 'concat'
aggregation, BatchNorm, no dropout, then a bilinear x2 upsampling to full resolution before
the 3x3 head. Its parameter count is pinned in the tests (Keras rebuild of
`sm.FPN(backbone, classes=1, activation='sigmoid')`).

Computed, not built: the upsampled levels of the final concatenation are convolved on their
own grids (`conv_of_upsampled_concat`) and the finest level P2 is never materialised
(`segmentation_conv_of_finest_level`); both are the same function as the Keras graph (tested
against it, with gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.layers import (
    ConvBnRelu,
    conv,
    conv3x3_of_upsampled,
    conv_of_upsampled_concat,
    conv_same,
    he_uniform,
    upsample,
)

PYRAMID_FILTERS = 256
SEGMENTATION_FILTERS = 128


class FPNBlock(nnx.Module):
    """P_k = up2(1x1(P_{k+1})) + 1x1(skip); the 1x1 on the input only if its width differs."""

    def __init__(self, in_features: int, skip_features: int, *, rngs: nnx.Rngs, dtype: Any = None):
        if in_features != PYRAMID_FILTERS:
            self.pre_conv = conv(
                in_features, PYRAMID_FILTERS, 1, use_bias=True, kernel_init=he_uniform,
                rngs=rngs, dtype=dtype,
            )  # fmt: skip
        else:
            self.pre_conv = None
        self.conv = conv(
            skip_features, PYRAMID_FILTERS, 1, use_bias=True, kernel_init=he_uniform,
            rngs=rngs, dtype=dtype,
        )  # fmt: skip

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        if self.pre_conv is not None:
            x = self.pre_conv(x)
        return upsample(x, 2) + self.conv(skip)


def segmentation_conv_of_finest_level(
    block: FPNBlock, stage: SegmentationStage, x: jax.Array, skip: jax.Array
) -> jax.Array:
    """`stage.conv_a.conv(block(x, skip))` (pre-BatchNorm) without building the level.

    The finest level P2 = up2(x) + 1x1(skip) is read only by its segmentation stage, whose
    first 3x3 conv (256 -> 128 at H/2) dominates the FPN. The conv is linear, so it splits
    into a 3x3 conv of the upsampled part, done on the low-resolution grid
    (`conv3x3_of_upsampled`), and a 3x3 conv of the 1x1 conv's output, which composes into
    one 3x3 conv straight from the encoder's 64 skip channels (kernel = 1x1 kernel @ 3x3
    kernel) plus the 1x1 bias pushed through the 3x3 kernel. The bias term is a conv of a
    constant map: the zero padding makes it smaller along the border, so it is convolved
    (one channel) rather than added as a constant. Same function, ~8% of the FPN's
    multiply-adds fewer at 224x224 (DenseNet-121).

    Args:
      block: the `FPNBlock` of P2 (no `pre_conv`: its input is already 256 wide).
      x: `(B, h, w, 256)` (P3); skip: `(B, 2h, 2w, C)` (the finest encoder feature).
    Returns:
      `(B, 2h, 2w, 128)`, with `stage.conv_a.conv`'s own bias (set when BatchNorm is folded).
    """
    target = stage.conv_a.conv
    kernel = target.kernel[...]  # (3, 3, 256, 128)
    lateral = block.conv.kernel[...][0, 0]  # (C, 256)
    # Composed in the stored (float32) precision, then cast to the compute dtype.
    composed = jnp.einsum("cp,rspo->rsco", lateral, kernel)
    bias_kernel = jnp.einsum("p,rspo->rso", block.conv.bias[...], kernel)[:, :, None, :]
    ones = jnp.ones((1, *skip.shape[1:3], 1), jnp.float32)
    x, skip, ones, composed, bias_kernel = target.promote_dtype(
        (x, skip, ones, composed, bias_kernel), dtype=target.dtype
    )
    precision = target.precision
    y = conv3x3_of_upsampled(x, kernel, 2, precision=precision)
    y = y + conv_same(skip, composed, precision=precision)
    y = y + conv_same(ones, bias_kernel, precision=precision)
    if target.bias is not None:
        y = y + target.bias[...].astype(y.dtype)
    return y


class SegmentationStage(nnx.Module):
    """Two ConvBnRelu (he_uniform, as the Keras FPN) on one pyramid level."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs, dtype: Any = None):
        kw = dict(rngs=rngs, dtype=dtype, kernel_init=he_uniform)
        self.conv_a = ConvBnRelu(in_features, SEGMENTATION_FILTERS, **kw)
        self.conv_b = ConvBnRelu(SEGMENTATION_FILTERS, SEGMENTATION_FILTERS, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv_b(self.conv_a(x))


class FPNDecoder(nnx.Module):
    """Feature pyramid P5..P2 (strides /16../2) -> per-level segmentation heads -> upsample to
    /2 -> concat -> ConvBnRelu -> bilinear x2.

    Call: the encoder's 5 features (finest first) -> `(B, H, W, 128)`.
    """

    def __init__(self, encoder_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any = None):
        skips = list(encoder_channels[3::-1])
        channels = encoder_channels[4]
        for stage, skip in zip((5, 4, 3, 2), skips, strict=True):
            setattr(self, f"fpn_stage_p{stage}", FPNBlock(channels, skip, rngs=rngs, dtype=dtype))
            setattr(
                self,
                f"segm_stage{stage}",
                SegmentationStage(PYRAMID_FILTERS, rngs=rngs, dtype=dtype),
            )
            channels = PYRAMID_FILTERS
        self.final_stage = ConvBnRelu(
            4 * SEGMENTATION_FILTERS, SEGMENTATION_FILTERS, rngs=rngs, dtype=dtype,
            kernel_init=he_uniform,
        )  # fmt: skip
        self.out_channels = SEGMENTATION_FILTERS

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        x = features[4]
        levels = []
        for stage, skip in zip((5, 4, 3), features[3:0:-1], strict=True):
            x = getattr(self, f"fpn_stage_p{stage}")(x, skip)
            levels.append(getattr(self, f"segm_stage{stage}")(x))
        # P2 is never built: its segmentation stage's first conv reads P3 and the skip.
        segm = self.segm_stage2
        y = segmentation_conv_of_finest_level(self.fpn_stage_p2, segm, x, features[0])
        levels.append(segm.conv_b(nnx.relu(segm.conv_a.bn(y))))
        s5, s4, s3, s2 = levels
        # final_stage(concat([s2, up2(s3), up4(s4), up8(s5)])), each upsampled level
        # convolved on its own grid (same function, fewer multiply-adds, no upsampled copies).
        final = self.final_stage
        x = conv_of_upsampled_concat(final.conv, [(s2, 1), (s3, 2), (s4, 4), (s5, 8)])
        x = nnx.relu(final.bn(x))
        b, h, w, c = x.shape
        # Keras UpSampling2D(interpolation='bilinear') = half-pixel bilinear, as jax.image.
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
