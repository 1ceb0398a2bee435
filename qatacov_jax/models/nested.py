"""UNet++ (`Xnet`) and DLA (`Nestnet`) decoders of the UNet++ Keras fork the paper used.

Both build the same nested grid X[i, j]: row i has stride 2**i, X[i, 0] are the encoder
features (X[1..5, 0] = strides /2../32; there is no X[0, 0]), and node X[i, j] (j >= 1) is a
decoder block on up2(X[i+1, j-1]) concatenated with skips from row i. The only difference is
the skip rule:

* UNet++ / Xnet: **all** existing X[i, 0..j-1] (dense skips);
* DLA / Nestnet: **only** X[i, j-1].

Quirks of the Keras fork that Table 8's parameter counts depend on (docs/original_models.md,
"UNet++ and DLA quirks"):
* node filters are `decoder_filters[N - i - 2]` (N = 5), which for i = 4 is index -1, so the
  deepest nodes get 16 filters;
* row 0 has only the top node X[0, 5] (up2(X[1, 4]), no skip), which feeds the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.layers import DecoderBlock
from qatacov_jax.models.unet import DECODER_FILTERS

DEPTH = 5


def nested_grid(dense_skips: bool) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """The decoder nodes in evaluation order: `(i, j, skips)` with skips as grid indices."""
    exists = {(i, 0) for i in range(1, DEPTH + 1)}
    nodes = []
    for j in range(1, DEPTH + 1):
        for i in range(DEPTH - j + 1):
            if i == 0 and j < DEPTH:
                continue  # row 0 only has the top node
            if dense_skips:
                skips = tuple((i, k) for k in range(j) if (i, k) in exists)
            else:
                skips = ((i, j - 1),) if (i, j - 1) in exists else ()
            nodes.append((i, j, skips))
            exists.add((i, j))
    return nodes


class NestedDecoder(nnx.Module):
    """Nested-grid decoder; `dense_skips=True` is UNet++ (Xnet), False is DLA (Nestnet).

    Call: the encoder's 5 features (finest first) -> `(B, H, W, 32)` (the top node X[0, 5]).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        dense_skips: bool,
        rngs: nnx.Rngs,
        dtype: Any = None,
        decoder_filters: Sequence[int] = DECODER_FILTERS,
    ):
        channels = {(i, 0): encoder_channels[i - 1] for i in range(1, DEPTH + 1)}
        self.nodes = tuple(nested_grid(dense_skips))
        for i, j, skips in self.nodes:
            filters = decoder_filters[DEPTH - i - 2]  # i = 4 -> index -1: the fork's quirk
            in_features = channels[(i + 1, j - 1)] + sum(channels[s] for s in skips)
            setattr(
                self,
                f"decoder_stage{i}_{j}",
                DecoderBlock(in_features, filters, rngs=rngs, dtype=dtype),
            )
            channels[(i, j)] = filters
        self.out_channels = channels[(0, DEPTH)]

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        grid = {(i, 0): f for i, f in enumerate(features, start=1)}
        for i, j, skips in self.nodes:
            block = getattr(self, f"decoder_stage{i}_{j}")
            grid[(i, j)] = block(grid[(i + 1, j - 1)], [grid[s] for s in skips])
        return grid[(0, DEPTH)]
