"""Inception-v3 encoder: segmentation_models 1.0.1's variant of Keras InceptionV3.

That variant uses 'same' padding everywhere (stride-2 convs and pools included) so every
feature is exactly /2, /4, ... of the input, and BatchNorm without scale (epsilon 1e-3).
Layers are named like Keras' auto-names, `conv2d_{k}` / `batch_normalization_{k}` for
k = 1..94 in creation order, so Keras weights port by name.

The graph is written once (`_graph`) against a small "ops" interface and evaluated twice: by
`_Builder` on channel counts (to create the layers, numbering them) and by `_Runner` on
arrays (the forward pass), so construction and call cannot drift apart.

Skip taps (segmentation_models' layer indices 9, 16, 86, 228 + output): the 64-channel
activation (/2), the 192-channel activation (/4), `mixed2` (/8), `mixed7` (/16), and
`mixed10` (/32).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.layers import avg_pool, batch_norm, conv, max_pool

BN_EPSILON = 1e-3
NUM_CONVS = 94


def _graph(ops: Any, x: Any) -> list[Any]:
    """InceptionV3 in Keras creation order; returns the 5 taps, finest first."""
    cbr, cat = ops.conv_bn, ops.concat
    x = cbr(x, 32, 3, 3, strides=2)
    x = cbr(x, 32, 3, 3)
    x = cbr(x, 64, 3, 3)
    taps = [x]
    x = ops.max_pool(x)
    x = cbr(x, 80, 1, 1)
    x = cbr(x, 192, 3, 3)
    taps.append(x)
    x = ops.max_pool(x)

    # mixed 0, 1, 2
    for pool_filters in (32, 64, 64):
        b1 = cbr(x, 64, 1, 1)
        b5 = cbr(cbr(x, 48, 1, 1), 64, 5, 5)
        b3 = cbr(cbr(cbr(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
        bp = cbr(ops.avg_pool(x), pool_filters, 1, 1)
        x = cat([b1, b5, b3, bp])
    taps.append(x)

    # mixed 3
    b3 = cbr(x, 384, 3, 3, strides=2)
    bd = cbr(cbr(cbr(x, 64, 1, 1), 96, 3, 3), 96, 3, 3, strides=2)
    x = cat([b3, bd, ops.max_pool(x)])

    # mixed 4, 5, 6, 7
    for width in (128, 160, 160, 192):
        b1 = cbr(x, 192, 1, 1)
        b7 = cbr(cbr(cbr(x, width, 1, 1), width, 1, 7), 192, 7, 1)
        bd = cbr(x, width, 1, 1)
        bd = cbr(cbr(cbr(bd, width, 7, 1), width, 1, 7), width, 7, 1)
        bd = cbr(bd, 192, 1, 7)
        bp = cbr(ops.avg_pool(x), 192, 1, 1)
        x = cat([b1, b7, bd, bp])
    taps.append(x)

    # mixed 8
    b3 = cbr(cbr(x, 192, 1, 1), 320, 3, 3, strides=2)
    b7 = cbr(cbr(cbr(x, 192, 1, 1), 192, 1, 7), 192, 7, 1)
    b7 = cbr(b7, 192, 3, 3, strides=2)
    x = cat([b3, b7, ops.max_pool(x)])

    # mixed 9, 10
    for _ in range(2):
        b1 = cbr(x, 320, 1, 1)
        b3 = cbr(x, 384, 1, 1)
        b3 = cat([cbr(b3, 384, 1, 3), cbr(b3, 384, 3, 1)])
        bd = cbr(cbr(x, 448, 1, 1), 384, 3, 3)
        bd = cat([cbr(bd, 384, 1, 3), cbr(bd, 384, 3, 1)])
        bp = cbr(ops.avg_pool(x), 192, 1, 1)
        x = cat([b1, b3, bd, bp])
    taps.append(x)
    return taps


class _Builder:
    """Evaluates `_graph` on channel counts, creating numbered conv/BN layers on `module`."""

    def __init__(self, module: nnx.Module, rngs: nnx.Rngs, dtype: Any):
        self.module, self.k = module, 0
        self.conv = partial(conv, rngs=rngs, dtype=dtype)
        self.bn = partial(batch_norm, epsilon=BN_EPSILON, use_scale=False, rngs=rngs, dtype=dtype)

    def conv_bn(self, c: int, filters: int, kh: int, kw: int, strides: int = 1) -> int:
        self.k += 1
        setattr(self.module, f"conv2d_{self.k}", self.conv(c, filters, (kh, kw), strides=strides))
        setattr(self.module, f"batch_normalization_{self.k}", self.bn(filters))
        return filters

    def max_pool(self, c: int) -> int:
        return c

    def avg_pool(self, c: int) -> int:
        return c

    def concat(self, cs: list[int]) -> int:
        return sum(cs)


class _Runner:
    """Evaluates `_graph` on arrays `(B, H, W, C)` with the layers `_Builder` created."""

    def __init__(self, module: nnx.Module):
        self.module, self.k = module, 0

    def conv_bn(self, x: jax.Array, filters: int, kh: int, kw: int, strides: int = 1):
        self.k += 1
        x = getattr(self.module, f"conv2d_{self.k}")(x)
        return nnx.relu(getattr(self.module, f"batch_normalization_{self.k}")(x))

    def max_pool(self, x: jax.Array) -> jax.Array:
        return max_pool(x, 3, 2, "SAME")

    def avg_pool(self, x: jax.Array) -> jax.Array:
        return avg_pool(x, 3, 1, "SAME")

    def concat(self, xs: list[jax.Array]) -> jax.Array:
        return jnp.concatenate(xs, axis=-1)


class InceptionV3(nnx.Module):
    """Inception-v3 feature extractor (segmentation_models variant).

    Call: `(B, H, W, 3)` float (H, W multiples of 32) -> list of 5 features, finest first:
    `(B, H/2, W/2, 64)`, `(B, H/4, W/4, 192)`, `(B, H/8, W/8, 288)`, `(B, H/16, W/16, 768)`,
    `(B, H/32, W/32, 2048)`.
    """

    out_channels: tuple[int, ...] = (64, 192, 288, 768, 2048)

    def __init__(self, *, rngs: nnx.Rngs, dtype: Any = None):
        builder = _Builder(self, rngs, dtype)
        channels = _graph(builder, 3)
        assert builder.k == NUM_CONVS and tuple(channels) == self.out_channels

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        return _graph(_Runner(self), x)
