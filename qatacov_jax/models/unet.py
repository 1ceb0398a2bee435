"""U-Net decoder: segmentation_models 1.0.1 `Unet` with upsampling blocks and BatchNorm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.layers import DecoderBlock

DECODER_FILTERS = (256, 128, 64, 32, 16)


class UNetDecoder(nnx.Module):
    """Classic U: stage i = up2(previous) ++ skip_i -> 2 x (conv3x3, BN, ReLU).

    Stage 0 starts from the bottom feature (/32); stages 0-3 take the skips /16, /8, /4, /2;
    stage 4 (full resolution) has no skip.

    Call: the encoder's 5 features (finest first) -> `(B, H, W, 16)`.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        rngs: nnx.Rngs,
        dtype: Any = None,
        decoder_filters: Sequence[int] = DECODER_FILTERS,
    ):
        skip_channels = list(encoder_channels[3::-1]) + [0]
        channels = encoder_channels[4]
        for i, (filters, skip) in enumerate(zip(decoder_filters, skip_channels, strict=True)):
            setattr(
                self,
                f"decoder_stage{i}",
                DecoderBlock(channels + skip, filters, rngs=rngs, dtype=dtype),
            )
            channels = filters
        self.num_stages = len(decoder_filters)
        self.out_channels = channels

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        skips = list(features[3::-1])
        x = features[4]
        for i in range(self.num_stages):
            block = getattr(self, f"decoder_stage{i}")
            x = block(x, skips[i : i + 1])
        return x
