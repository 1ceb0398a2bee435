"""smp 0.6's `Unet`, `UnetPlusPlus` and `FPN` decoders with their default settings.

All three read the encoder's 6 features (input first) and drop the full-resolution one.

- Unet: blocks 0..4 = nearest x2 -> concat [x, skip] -> 2 x Conv2dReLU (3x3, BN), widths
  (256, 128, 64, 32, 16); the last block has no skip.
- UnetPlusPlus: smp's nested grid `x_{depth}_{layer}` (it differs from the paper-1 Keras
  `Xnet` of `models/nested.py`: every node concatenates all earlier nodes of its row plus the
  encoder skip, and intermediate nodes have the skip's width), then `x_0_4` without a skip.
- FPN: p5 = 1x1(c5); p_k = nearest x2(p_{k+1}) + 1x1(c_k) at 256 channels; each level ->
  (3x3 conv, GroupNorm 32, ReLU, bilinear x2 align_corners) until stride 4, 128 channels;
  merged by *sum* (smp's default `merge_policy="add"`, 128 channels) or concatenated
  (`"cat"`, [p5, p4, p3, p2] -> 512 channels, as paper 2's text describes); Dropout2d(0.2).

See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.layers import conv_of_upsampled_concat, upsample
from qatacov_jax.models.smp.layers import (
    ChannelDropout,
    ConvBnReLU,
    ReLU,
    Seq,
    conv,
    group_norm,
    upsample_bilinear,
)

DECODER_CHANNELS = (256, 128, 64, 32, 16)
PYRAMID_CHANNELS = 256
SEGMENTATION_CHANNELS = 128
FPN_DROPOUT = 0.2
GROUPS = 32


class DecoderBlock(nnx.Module):
    """nearest x2 -> concat [x, *skips] -> conv1 -> conv2 (Conv2dReLU each).

    Call: `x (B, h, w, C)`, skips `(B, 2h, 2w, C_k)` -> `(B, 2h, 2w, out_features)`. The first
    conv runs on the low-resolution grid for the upsampled part (`conv_of_upsampled_concat`:
    the same function with fewer multiply-adds and no upsampled copy).
    """

    def __init__(self, cin: int, skip: int, cout: int, *, rngs: nnx.Rngs, dtype: Any):
        self.conv1 = ConvBnReLU(cin + skip, cout, rngs=rngs, dtype=dtype)
        self.conv2 = ConvBnReLU(cout, cout, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, skips: Sequence[jax.Array] = ()) -> jax.Array:
        y = conv_of_upsampled_concat(self.conv1[0], [(x, 2), *((s, 1) for s in skips)])
        return self.conv2(nnx.relu(self.conv1[1](y)))


def _decoder_widths(encoder_channels: Sequence[int]) -> tuple[list[int], list[int]]:
    """(in widths, skip widths) of the 5 U-Net stages, from the head of the encoder down."""
    rev = list(encoder_channels[1:])[::-1]
    return [rev[0], *DECODER_CHANNELS[:-1]], [*rev[1:], 0]


class UnetDecoder(nnx.Module):
    """Call: 6 encoder features (input first) -> `(B, H, W, 16)`."""

    def __init__(self, encoder_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any = None):
        ins, skips = _decoder_widths(encoder_channels)
        self.blocks = Seq(
            *(
                DecoderBlock(i, s, o, rngs=rngs, dtype=dtype)
                for i, s, o in zip(ins, skips, DECODER_CHANNELS, strict=True)
            )
        )
        self.out_channels = DECODER_CHANNELS[-1]

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        feats = list(features[1:])[::-1]
        x = feats[0]
        for i in range(len(self.blocks)):
            x = self.blocks[i](x, feats[i + 1 : i + 2])
        return x


class Blocks(nnx.Module):
    """`nn.ModuleDict` of UNet++ nodes: attributes `x_{depth}_{layer}`."""


class UnetPlusPlusDecoder(nnx.Module):
    """Call: 6 encoder features (input first) -> `(B, H, W, 16)`."""

    def __init__(self, encoder_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any = None):
        ins, skips = _decoder_widths(encoder_channels)
        outs = DECODER_CHANNELS
        self.depth = len(ins) - 1
        blocks = Blocks()
        for layer in range(self.depth):
            for d in range(layer + 1):
                if d == 0:
                    cin, skip, cout = ins[layer], skips[layer] * (layer + 1), outs[layer]
                else:
                    cin, skip, cout = skips[layer - 1], skips[layer] * (layer + 1 - d), skips[layer]
                setattr(
                    blocks, f"x_{d}_{layer}", DecoderBlock(cin, skip, cout, rngs=rngs, dtype=dtype)
                )
        setattr(
            blocks, f"x_0_{self.depth}", DecoderBlock(ins[-1], 0, outs[-1], rngs=rngs, dtype=dtype)
        )
        self.blocks = blocks
        self.out_channels = outs[-1]

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        feats = list(features[1:])[::-1]
        node = lambda d, lay: getattr(self.blocks, f"x_{d}_{lay}")  # noqa: E731
        dense: dict[tuple[int, int], jax.Array] = {}
        for layer in range(self.depth):
            for d in range(self.depth - layer):
                if layer == 0:
                    dense[(d, d)] = node(d, d)(feats[d], [feats[d + 1]])
                else:
                    last = d + layer
                    skips = [dense[(k, last)] for k in range(d + 1, last + 1)] + [feats[last + 1]]
                    dense[(d, last)] = node(d, last)(dense[(d, last - 1)], skips)
        return node(0, self.depth)(dense[(0, self.depth - 1)])


class FPNBlock(nnx.Module):
    """p = nearest x2(x) + skip_conv(skip) (1x1 with bias)."""

    def __init__(self, skip: int, *, rngs: nnx.Rngs, dtype: Any):
        self.skip_conv = conv(skip, PYRAMID_CHANNELS, 1, bias=True, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        return upsample(x, 2) + self.skip_conv(skip)


class Conv3x3GNReLU(nnx.Module):
    """Sequential(conv 3x3 no bias, GroupNorm(32), ReLU) then, if `up`, bilinear x2."""

    def __init__(self, cin: int, cout: int, up: bool, *, rngs: nnx.Rngs, dtype: Any):
        self.block = Seq(
            conv(cin, cout, 3, padding=1, rngs=rngs, dtype=dtype),
            group_norm(cout, GROUPS, rngs=rngs, dtype=dtype),
            ReLU(),
        )
        self.up = up

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block(x)
        return upsample_bilinear(x, 2) if self.up else x


class SegmentationBlock(nnx.Module):
    """max(1, n) x Conv3x3GNReLU, the first n of them followed by bilinear x2."""

    def __init__(self, cin: int, cout: int, n_upsamples: int, *, rngs: nnx.Rngs, dtype: Any):
        layers = [Conv3x3GNReLU(cin, cout, n_upsamples > 0, rngs=rngs, dtype=dtype)]
        layers += [
            Conv3x3GNReLU(cout, cout, True, rngs=rngs, dtype=dtype) for _ in range(1, n_upsamples)
        ]
        self.block = Seq(*layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.block(x)


MERGE_POLICIES = ("add", "cat")


class FPNDecoder(nnx.Module):
    """Call: 6 encoder features (input first) -> `(B, H/4, W/4, 128)` (`merge_policy="add"`)
    or `(B, H/4, W/4, 512)` (`"cat"`: the four levels' maps concatenated, p5 first)."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        merge_policy: str = "add",
        rngs: nnx.Rngs,
        dtype: Any = None,
    ):
        if merge_policy not in MERGE_POLICIES:
            raise ValueError(
                f"FPN merge_policy must be one of {list(MERGE_POLICIES)}, got {merge_policy!r}."
            )
        c2, c3, c4, c5 = encoder_channels[-4:]
        self.p5 = conv(c5, PYRAMID_CHANNELS, 1, bias=True, rngs=rngs, dtype=dtype)
        self.p4 = FPNBlock(c4, rngs=rngs, dtype=dtype)
        self.p3 = FPNBlock(c3, rngs=rngs, dtype=dtype)
        self.p2 = FPNBlock(c2, rngs=rngs, dtype=dtype)
        self.seg_blocks = Seq(
            *(
                SegmentationBlock(
                    PYRAMID_CHANNELS, SEGMENTATION_CHANNELS, n, rngs=rngs, dtype=dtype
                )
                for n in (3, 2, 1, 0)
            )
        )
        self.dropout = ChannelDropout(FPN_DROPOUT, rngs=rngs)
        self.merge_policy = merge_policy
        self.out_channels = SEGMENTATION_CHANNELS * (4 if merge_policy == "cat" else 1)

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        c2, c3, c4, c5 = features[-4:]
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        levels = [self.seg_blocks[i](p) for i, p in enumerate((p5, p4, p3, p2))]
        x = jnp.concatenate(levels, axis=-1) if self.merge_policy == "cat" else sum(levels)
        return self.dropout(x)
