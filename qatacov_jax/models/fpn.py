"""FPN decoder (COVID-QU-Ex paper's best decoder): segmentation_models 1.0.1 Keras `FPN`.

We follow the Keras `FPN` defaults: pyramid 256 filters, segmentation 128, 'concat'
aggregation, BatchNorm, no dropout, then a bilinear x2 upsampling to full resolution before
the 3x3 head. Its parameter count is pinned in the tests (Keras rebuild of
`sm.FPN(backbone, classes=1, activation='sigmoid')`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.layers import (
    ConvBnRelu,
    conv,
    conv_of_upsampled_concat,
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
        for stage, skip in zip((5, 4, 3, 2), features[3::-1], strict=True):
            x = getattr(self, f"fpn_stage_p{stage}")(x, skip)
            levels.append(getattr(self, f"segm_stage{stage}")(x))
        s5, s4, s3, s2 = levels
        # final_stage(concat([s2, up2(s3), up4(s4), up8(s5)])), each upsampled level
        # convolved on its own grid (same function, fewer multiply-adds, no upsampled copies).
        final = self.final_stage
        x = conv_of_upsampled_concat(final.conv, [(s2, 1), (s3, 2), (s4, 4), (s5, 8)])
        x = nnx.relu(final.bn(x))
        b, h, w, c = x.shape
        # Keras UpSampling2D(interpolation='bilinear') = half-pixel bilinear, as jax.image.
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
