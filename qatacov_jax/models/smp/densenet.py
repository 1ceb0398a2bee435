"""torchvision DenseNet-121/161 as smp 0.6's `DenseNetEncoder` uses them (names = PyTorch keys).

features.conv0 7x7/2 -> norm0 -> ReLU (feature /2) -> max pool 3/2 -> denseblock1 ->
transition1.norm -> ReLU (feature /4) -> transition1.conv 1x1 (halves the width) -> avg pool 2
-> denseblock2 -> ... -> denseblock4 -> norm5 (feature /32, *no* ReLU: smp taps the BatchNorm
output). Each dense layer: norm1 -> ReLU -> conv1 1x1 (4 x growth) -> norm2 -> ReLU -> conv2
3x3 (growth), appended to its input. Note smp taps the transitions *before* their conv, unlike
the Keras segmentation_models (`models/densenet.py`), so the skip widths differ (256, 512,
1024 for DenseNet-121). See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.smp.layers import avg_pool, batch_norm, conv, max_pool

# name -> (stem width, growth rate, layers per dense block).
DENSENETS = {
    "densenet121": (64, 32, (6, 12, 24, 16)),
    "densenet161": (96, 48, (6, 12, 36, 24)),
}
BN_SIZE = 4  # the bottleneck 1x1 conv has BN_SIZE * growth filters


class DenseLayer(nnx.Module):
    """x -> concat([x, conv2(relu(norm2(conv1(relu(norm1(x))))))])."""

    def __init__(self, cin: int, growth: int, *, rngs: nnx.Rngs, dtype: Any):
        c = partial(conv, rngs=rngs, dtype=dtype)
        bn = partial(batch_norm, rngs=rngs, dtype=dtype)
        self.norm1 = bn(cin)
        self.conv1 = c(cin, BN_SIZE * growth, 1)
        self.norm2 = bn(BN_SIZE * growth)
        self.conv2 = c(BN_SIZE * growth, growth, 3, padding=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv1(nnx.relu(self.norm1(x)))
        y = self.conv2(nnx.relu(self.norm2(y)))
        return jnp.concatenate([x, y], axis=-1)


class Transition(nnx.Module):
    """norm -> ReLU (the smp feature) then conv 1x1 (width // 2) -> avg pool 2 (next block)."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs, dtype: Any):
        self.norm = batch_norm(cin, rngs=rngs, dtype=dtype)
        self.conv = conv(cin, cin // 2, 1, rngs=rngs, dtype=dtype)


class Features(nnx.Module):
    """The `features` container of torchvision's DenseNet (attributes as its children)."""


class DenseNetEncoder(nnx.Module):
    """smp's DenseNet encoder.

    Call: `(B, H, W, 3)` -> 6 features, the input first: `(B, H, W, 3)`, then strides 2, 4, 8,
    16, 32 with `out_channels[1:]` channels (DenseNet-121: 64, 256, 512, 1024, 1024;
    DenseNet-161: 96, 384, 768, 2112, 2208).
    """

    def __init__(self, name: str, *, rngs: nnx.Rngs, dtype: Any = None):
        stem, growth, blocks = DENSENETS[name]
        f = Features()
        f.conv0 = conv(3, stem, 7, stride=2, padding=3, rngs=rngs, dtype=dtype)
        f.norm0 = batch_norm(stem, rngs=rngs, dtype=dtype)
        channels, out_channels = stem, [3, stem]
        for i, n in enumerate(blocks, start=1):
            block = Features()
            for j in range(1, n + 1):
                setattr(
                    block, f"denselayer{j}", DenseLayer(channels, growth, rngs=rngs, dtype=dtype)
                )
                channels += growth
            setattr(f, f"denseblock{i}", block)
            out_channels.append(channels)
            if i < len(blocks):
                setattr(f, f"transition{i}", Transition(channels, rngs=rngs, dtype=dtype))
                channels //= 2
        f.norm5 = batch_norm(channels, rngs=rngs, dtype=dtype)
        self.features = f
        self.num_layers = tuple(blocks)
        self.out_channels = tuple(out_channels)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        f = self.features
        features = [x]
        x = nnx.relu(f.norm0(f.conv0(x)))
        features.append(x)
        x = max_pool(x, 3, 2, 1)
        for i, n in enumerate(self.num_layers, start=1):
            block = getattr(f, f"denseblock{i}")
            for j in range(1, n + 1):
                x = getattr(block, f"denselayer{j}")(x)
            if i < len(self.num_layers):
                t = getattr(f, f"transition{i}")
                x = nnx.relu(t.norm(x))
                features.append(x)
                x = avg_pool(t.conv(x), 2, 2)
        features.append(f.norm5(x))
        return features
