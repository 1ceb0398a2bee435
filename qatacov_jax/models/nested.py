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

UNet++'s dense skips are convolved once each: a skip X[i, k] enters the first conv of every
later node of row i, so as soon as it exists it is convolved with the stacked kernel slices of
all those nodes (`stacked_conv3x3`), and each node adds its part. Same function and parameters
as the Keras graph (tested against it), with the multiply-adds in fewer, wider convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.layers import DecoderBlock, stacked_conv3x3
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
        # Dense skips only: skip -> ((node, its first input channel in that node's conv), ...),
        # the nodes of its row that read it (`stacked_conv3x3`). DLA's skips are read once.
        uses: dict[tuple[int, int], list[tuple[tuple[int, int], int]]] = {}
        if dense_skips:
            for i, j, skips in self.nodes:
                first = channels[(i + 1, j - 1)]  # after the upsampled input
                for skip in skips:
                    uses.setdefault(skip, []).append(((i, j), first))
                    first += channels[skip]
        self.skip_uses = tuple((skip, tuple(nodes)) for skip, nodes in uses.items())

    def _block(self, node: tuple[int, int]) -> DecoderBlock:
        return getattr(self, f"decoder_stage{node[0]}_{node[1]}")

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        grid = {(i, 0): f for i, f in enumerate(features, start=1)}
        uses = dict(self.skip_uses)
        # node -> sum of its skips' parts of its first conv, filled as the skips appear.
        skip_terms: dict[tuple[int, int], jax.Array] = {}

        def convolve_skip(skip: tuple[int, int]) -> None:
            nodes = uses.get(skip, ())
            if not nodes:
                return
            parts = stacked_conv3x3(
                grid[skip], [(self._block(n).conv1.conv, first) for n, first in nodes]
            )
            for (node, _), part in zip(nodes, parts, strict=True):
                skip_terms[node] = part if node not in skip_terms else skip_terms[node] + part

        for i in range(1, DEPTH + 1):
            convolve_skip((i, 0))
        for i, j, skips in self.nodes:
            block = self._block((i, j))
            if uses:  # dense skips: their part is in skip_terms
                grid[(i, j)] = block(grid[(i + 1, j - 1)], skip_term=skip_terms.pop((i, j), None))
                convolve_skip((i, j))
            else:
                grid[(i, j)] = block(grid[(i + 1, j - 1)], [grid[s] for s in skips])
        return grid[(0, DEPTH)]
