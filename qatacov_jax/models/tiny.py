"""The tiny segmentation model: the fast stand-in for tests and smoke runs.

Not a paper model. It keeps the contract the code around a model relies on (an `encoder`
submodule that `freeze` turns into `FrozenParam` except BatchNorm scale/offset, BatchNorm
everywhere, `(B, H, W, 3)` -> float32 logits `(B, H, W, 1)`), so training steps and loop,
run directories, evaluation, inference, export and the web app run exactly as with U-Net
DenseNet-121 but compile in a second instead of a minute on a CPU, and on inputs as small
as 4x4 (H, W multiples of 4).

A config selects it with `config.model.arch = "tiny"` and `config.model.encoder = "tiny"`
(the registry's `MODELS`), so a run directory trained with it loads again from its
`config.json` like any other. `config.model.arch = "classifier"` with `encoder = "tiny"`
is the tiny activation-map classifier. There are no pretrained weights for it; it expects
'unit' preprocessing (pixels in [0, 1]).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

NAME = "tiny"  # its `config.model.arch` and `config.model.encoder`


class TinyEncoder(nnx.Module):
    """Two strided conv-BN-ReLU stages: `(B, H, W, 3)` -> `[(B, H/2, W/2, 8), (B, H/4, W/4, 16)]`."""

    def __init__(self, *, rngs: nnx.Rngs, dtype: Any = None):
        self.conv1 = nnx.Conv(3, 8, (3, 3), strides=2, use_bias=False, rngs=rngs, dtype=dtype)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, rngs=rngs, dtype=dtype)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, use_bias=False, rngs=rngs, dtype=dtype)
        self.bn2 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs, dtype=dtype)
        self.out_channels = (8, 16)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        f1 = nnx.relu(self.bn1(self.conv1(x)))
        f2 = nnx.relu(self.bn2(self.conv2(f1)))
        return [f1, f2]


class TinySegmenter(nnx.Module):
    """`TinyEncoder` + one upsampling decoder block with a skip + a 3x3 logit head.

    Call: `(B, H, W, 3)` float, H and W multiples of 4 -> `(B, H, W, 1)` float32 logits.
    """

    def __init__(self, encoder: TinyEncoder, *, rngs: nnx.Rngs, dtype: Any = None):
        self.encoder = encoder
        skip = sum(encoder.out_channels)
        self.dec_conv = nnx.Conv(skip, 8, (3, 3), use_bias=False, rngs=rngs, dtype=dtype)
        self.dec_bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs, dtype=dtype)
        self.head = nnx.Conv(8, 1, (3, 3), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        f1, f2 = self.encoder(x)
        up = jax.image.resize(f2, f1.shape[:-1] + (f2.shape[-1],), "nearest")
        y = nnx.relu(self.dec_bn(self.dec_conv(jnp.concatenate([up, f1], -1))))
        y = jax.image.resize(y, x.shape[:-1] + (y.shape[-1],), "bilinear")
        return self.head(y).astype(jnp.float32)
