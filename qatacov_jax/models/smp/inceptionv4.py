"""Inception-v4 (pretrainedmodels / Cadene) as smp 0.6's `InceptionV4Encoder` builds it.

smp changes the original graph in one way: every 3x3 conv and every max pool gets padding 1,
so each reduction halves the size exactly (the original 'valid' stem shrinks 299 -> 35 ->
17 -> 8). Module and attribute names are pretrainedmodels' (`features.3.conv.bn.weight` ...),
so its `inceptionv4-8e4777a0.pth` and smp state dicts port by name. BasicConv2d = conv (no
bias) -> BatchNorm (epsilon 1e-3) -> ReLU. Features are tapped after `features[2]` (/2, 64),
`[4]` (/4, 192), `[8]` (/8, 384), `[14]` (/16, 1024) and `[21]` (/32, 1536).
See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.smp.layers import Seq, avg_pool, batch_norm, conv, max_pool

BN_EPSILON = 1e-3
TAPS = (2, 4, 8, 14, 21)  # indices of `features` whose outputs are the encoder's features
Kernel = int | tuple[int, int]


class BasicConv2d(nnx.Module):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU; a 3x3 kernel is always padded by 1 (smp)."""

    def __init__(
        self, cin: int, cout: int, k: Kernel, stride: int = 1, padding: Kernel = 0, *, mk: Any
    ):
        if k == 3:
            padding = 1
        self.conv = conv(cin, cout, k, stride=stride, padding=padding, **mk)
        self.bn = batch_norm(cout, epsilon=BN_EPSILON, **mk)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class AvgPool3(nnx.Module):
    """`nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool(x, 3, 1, 1)


def _pool(x: jax.Array) -> jax.Array:
    return max_pool(x, 3, 2, 1)  # `nn.MaxPool2d(3, stride=2)` with smp's padding 1


def _cat(*xs: jax.Array) -> jax.Array:
    return jnp.concatenate(xs, axis=-1)


class Mixed3a(nnx.Module):
    def __init__(self, *, mk: Any):
        self.conv = BasicConv2d(64, 96, 3, 2, mk=mk)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(_pool(x), self.conv(x))


class Mixed4a(nnx.Module):
    def __init__(self, *, mk: Any):
        self.branch0 = Seq(BasicConv2d(160, 64, 1, mk=mk), BasicConv2d(64, 96, 3, mk=mk))
        self.branch1 = Seq(
            BasicConv2d(160, 64, 1, mk=mk),
            BasicConv2d(64, 64, (1, 7), 1, (0, 3), mk=mk),
            BasicConv2d(64, 64, (7, 1), 1, (3, 0), mk=mk),
            BasicConv2d(64, 96, 3, mk=mk),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(self.branch0(x), self.branch1(x))


class Mixed5a(nnx.Module):
    def __init__(self, *, mk: Any):
        self.conv = BasicConv2d(192, 192, 3, 2, mk=mk)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(self.conv(x), _pool(x))


class InceptionA(nnx.Module):
    def __init__(self, *, mk: Any):
        self.branch0 = BasicConv2d(384, 96, 1, mk=mk)
        self.branch1 = Seq(BasicConv2d(384, 64, 1, mk=mk), BasicConv2d(64, 96, 3, mk=mk))
        self.branch2 = Seq(
            BasicConv2d(384, 64, 1, mk=mk),
            BasicConv2d(64, 96, 3, mk=mk),
            BasicConv2d(96, 96, 3, mk=mk),
        )
        self.branch3 = Seq(AvgPool3(), BasicConv2d(384, 96, 1, mk=mk))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x))


class ReductionA(nnx.Module):
    def __init__(self, *, mk: Any):
        self.branch0 = BasicConv2d(384, 384, 3, 2, mk=mk)
        self.branch1 = Seq(
            BasicConv2d(384, 192, 1, mk=mk),
            BasicConv2d(192, 224, 3, mk=mk),
            BasicConv2d(224, 256, 3, 2, mk=mk),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(self.branch0(x), self.branch1(x), _pool(x))


class InceptionB(nnx.Module):
    def __init__(self, *, mk: Any):
        self.branch0 = BasicConv2d(1024, 384, 1, mk=mk)
        self.branch1 = Seq(
            BasicConv2d(1024, 192, 1, mk=mk),
            BasicConv2d(192, 224, (1, 7), 1, (0, 3), mk=mk),
            BasicConv2d(224, 256, (7, 1), 1, (3, 0), mk=mk),
        )
        self.branch2 = Seq(
            BasicConv2d(1024, 192, 1, mk=mk),
            BasicConv2d(192, 192, (7, 1), 1, (3, 0), mk=mk),
            BasicConv2d(192, 224, (1, 7), 1, (0, 3), mk=mk),
            BasicConv2d(224, 224, (7, 1), 1, (3, 0), mk=mk),
            BasicConv2d(224, 256, (1, 7), 1, (0, 3), mk=mk),
        )
        self.branch3 = Seq(AvgPool3(), BasicConv2d(1024, 128, 1, mk=mk))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x))


class ReductionB(nnx.Module):
    def __init__(self, *, mk: Any):
        self.branch0 = Seq(BasicConv2d(1024, 192, 1, mk=mk), BasicConv2d(192, 192, 3, 2, mk=mk))
        self.branch1 = Seq(
            BasicConv2d(1024, 256, 1, mk=mk),
            BasicConv2d(256, 256, (1, 7), 1, (0, 3), mk=mk),
            BasicConv2d(256, 320, (7, 1), 1, (3, 0), mk=mk),
            BasicConv2d(320, 320, 3, 2, mk=mk),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return _cat(self.branch0(x), self.branch1(x), _pool(x))


class InceptionC(nnx.Module):
    def __init__(self, *, mk: Any):
        self.branch0 = BasicConv2d(1536, 256, 1, mk=mk)
        self.branch1_0 = BasicConv2d(1536, 384, 1, mk=mk)
        self.branch1_1a = BasicConv2d(384, 256, (1, 3), 1, (0, 1), mk=mk)
        self.branch1_1b = BasicConv2d(384, 256, (3, 1), 1, (1, 0), mk=mk)
        self.branch2_0 = BasicConv2d(1536, 384, 1, mk=mk)
        self.branch2_1 = BasicConv2d(384, 448, (3, 1), 1, (1, 0), mk=mk)
        self.branch2_2 = BasicConv2d(448, 512, (1, 3), 1, (0, 1), mk=mk)
        self.branch2_3a = BasicConv2d(512, 256, (1, 3), 1, (0, 1), mk=mk)
        self.branch2_3b = BasicConv2d(512, 256, (3, 1), 1, (1, 0), mk=mk)
        self.branch3 = Seq(AvgPool3(), BasicConv2d(1536, 256, 1, mk=mk))

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return _cat(
            self.branch0(x),
            self.branch1_1a(b1),
            self.branch1_1b(b1),
            self.branch2_3a(b2),
            self.branch2_3b(b2),
            self.branch3(x),
        )


class InceptionV4Encoder(nnx.Module):
    """smp's Inception-v4 encoder.

    Call: `(B, H, W, 3)` -> 6 features, the input first: `(B, H, W, 3)`, then strides 2, 4, 8,
    16, 32 with 64, 192, 384, 1024, 1536 channels.
    """

    out_channels: tuple[int, ...] = (3, 64, 192, 384, 1024, 1536)

    def __init__(self, name: str = "inceptionv4", *, rngs: nnx.Rngs, dtype: Any = None):
        mk = dict(rngs=rngs, dtype=dtype)
        self.features = Seq(
            BasicConv2d(3, 32, 3, 2, mk=mk),
            BasicConv2d(32, 32, 3, mk=mk),
            BasicConv2d(32, 64, 3, mk=mk),
            Mixed3a(mk=mk),
            Mixed4a(mk=mk),
            Mixed5a(mk=mk),
            *(InceptionA(mk=mk) for _ in range(4)),
            ReductionA(mk=mk),
            *(InceptionB(mk=mk) for _ in range(7)),
            ReductionB(mk=mk),
            *(InceptionC(mk=mk) for _ in range(3)),
        )

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        features = [x]
        for i in range(len(self.features)):
            x = self.features[i](x)
            if i in TAPS:
                features.append(x)
        return features
