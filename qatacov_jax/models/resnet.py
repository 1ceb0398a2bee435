"""ResNet-50 encoder: the pre-activation, MXNet-ported ResNet-50 of `classification_models`
(image-classifiers 1.0.0), which segmentation_models uses for 'resnet50'.

Not keras.applications' ResNet50: the input is normalised by a BatchNorm without scale
(`bn_data`), every unit pre-activates its input (`bn1`, `relu1`), and the first unit of each
stage projects the *pre-activated* input in its shortcut (`sc`). BN epsilon 2e-5, convs
he_uniform. Attribute names are the Keras layer names (`bn_data`, `conv0`, `bn0`,
`stage{S}_unit{U}_{bn1,conv1,bn2,conv2,bn3,conv3,sc}`, `bn1`).

Skip taps: `relu0` (/2, 64), `stage2_unit1_relu1` (/4, 256), `stage3_unit1_relu1` (/8, 512),
`stage4_unit1_relu1` (/16, 1024) and the final `relu1` (/32, 2048).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.layers import batch_norm, conv, he_uniform, max_pool, pad

BN_EPSILON = 2e-5


class ResNet50(nnx.Module):
    """Pre-activation ResNet-50 feature extractor.

    Call: `(B, H, W, 3)` float (BGR, 0..255 for the ImageNet weights; H, W multiples of 32)
    -> list of 5 features, finest first: `(B, H/2, W/2, 64)`, `(B, H/4, W/4, 256)`,
    `(B, H/8, W/8, 512)`, `(B, H/16, W/16, 1024)`, `(B, H/32, W/32, 2048)`.
    """

    out_channels: tuple[int, ...] = (64, 256, 512, 1024, 2048)
    repetitions: tuple[int, ...] = (3, 4, 6, 3)

    def __init__(self, *, rngs: nnx.Rngs, dtype: Any = None):
        c = partial(conv, rngs=rngs, dtype=dtype, kernel_init=he_uniform)
        bn = partial(batch_norm, epsilon=BN_EPSILON, rngs=rngs, dtype=dtype)
        self.bn_data = bn(3, use_scale=False)
        self.conv0 = c(3, 64, 7, strides=2, padding=pad(3))
        self.bn0 = bn(64)
        channels = 64
        for stage, units in enumerate(self.repetitions, start=1):
            filters = 64 * 2 ** (stage - 1)
            for unit in range(1, units + 1):
                name = f"stage{stage}_unit{unit}"
                stride = 2 if unit == 1 and stage > 1 else 1
                setattr(self, f"{name}_bn1", bn(channels))
                setattr(self, f"{name}_conv1", c(channels, filters, 1))
                setattr(self, f"{name}_bn2", bn(filters))
                setattr(
                    self, f"{name}_conv2", c(filters, filters, 3, strides=stride, padding=pad(1))
                )
                setattr(self, f"{name}_bn3", bn(filters))
                setattr(self, f"{name}_conv3", c(filters, 4 * filters, 1))
                if unit == 1:
                    setattr(self, f"{name}_sc", c(channels, 4 * filters, 1, strides=stride))
                channels = 4 * filters
        self.bn1 = bn(channels)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        x = self.bn_data(x)
        x = nnx.relu(self.bn0(self.conv0(x)))
        features = [x]
        x = max_pool(x, 3, 2, pad(1))
        for stage, units in enumerate(self.repetitions, start=1):
            for unit in range(1, units + 1):
                name = f"stage{stage}_unit{unit}"
                layer = partial(getattr, self)
                a = nnx.relu(layer(f"{name}_bn1")(x))
                if unit == 1:
                    if stage > 1:
                        features.append(a)
                    shortcut = layer(f"{name}_sc")(a)
                else:
                    shortcut = x
                y = nnx.relu(layer(f"{name}_bn2")(layer(f"{name}_conv1")(a)))
                y = nnx.relu(layer(f"{name}_bn3")(layer(f"{name}_conv2")(y)))
                x = layer(f"{name}_conv3")(y) + shortcut
        features.append(nnx.relu(self.bn1(x)))
        return features
