"""DenseNet-121 encoder (Keras `keras.applications.DenseNet121` graph; also CheXNet's).

Layer attributes carry the Keras layer names with '/' -> '_' (`conv1_conv`, `conv1_bn`,
`conv2_block1_0_bn`, ..., `pool2_bn`, `pool2_conv`, ..., `bn`), so Keras/CheXNet weights port by
name. Skip taps follow segmentation_models: `conv1/relu` (/2), `pool{2,3,4}_conv` (/4, /8, /16:
after each transition's 1x1 conv, before its average pooling) and the final `relu` (/32).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.layers import avg_pool, batch_norm, conv, max_pool, pad

BN_EPSILON = 1.001e-5
GROWTH_RATE = 32
BOTTLENECK = 4 * GROWTH_RATE  # the 1x1 conv of every dense layer has 128 filters


class DenseNet121(nnx.Module):
    """DenseNet-121 feature extractor.

    Call: `(B, H, W, 3)` float (H, W multiples of 32) -> list of 5 features, finest first:
    `(B, H/2, W/2, 64)`, `(B, H/4, W/4, 128)`, `(B, H/8, W/8, 256)`, `(B, H/16, W/16, 512)`,
    `(B, H/32, W/32, 1024)`.
    """

    out_channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    blocks: tuple[int, ...] = (6, 12, 24, 16)

    def __init__(self, *, rngs: nnx.Rngs, dtype: Any = None):
        c = partial(conv, rngs=rngs, dtype=dtype)
        bn = partial(batch_norm, epsilon=BN_EPSILON, rngs=rngs, dtype=dtype)
        self.conv1_conv = c(3, 64, 7, strides=2, padding=pad(3))
        self.conv1_bn = bn(64)
        channels = 64
        for stage, layers in enumerate(self.blocks, start=2):
            for block in range(1, layers + 1):
                name = f"conv{stage}_block{block}"
                setattr(self, f"{name}_0_bn", bn(channels))
                setattr(self, f"{name}_1_conv", c(channels, BOTTLENECK, 1))
                setattr(self, f"{name}_1_bn", bn(BOTTLENECK))
                setattr(self, f"{name}_2_conv", c(BOTTLENECK, GROWTH_RATE, 3, padding=pad(1)))
                channels += GROWTH_RATE
            if stage < 5:
                setattr(self, f"pool{stage}_bn", bn(channels))
                setattr(self, f"pool{stage}_conv", c(channels, channels // 2, 1))
                channels //= 2
        self.bn = bn(channels)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        x = nnx.relu(self.conv1_bn(self.conv1_conv(x)))
        features = [x]
        x = max_pool(x, 3, 2, pad(1))
        for stage, layers in enumerate(self.blocks, start=2):
            for block in range(1, layers + 1):
                name = f"conv{stage}_block{block}"
                y = nnx.relu(getattr(self, f"{name}_0_bn")(x))
                y = nnx.relu(getattr(self, f"{name}_1_bn")(getattr(self, f"{name}_1_conv")(y)))
                y = getattr(self, f"{name}_2_conv")(y)
                # Keras concatenates [input, new]; the order matters for ported weights.
                x = jax.numpy.concatenate([x, y], axis=-1)
            if stage < 5:
                x = getattr(self, f"pool{stage}_conv")(
                    nnx.relu(getattr(self, f"pool{stage}_bn")(x))
                )
                features.append(x)
                x = avg_pool(x, 2, 2)
        features.append(nnx.relu(self.bn(x)))
        return features
