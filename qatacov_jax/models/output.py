"""From a segmentation model's output to the per-pixel foreground probability.

Paper 1's models have one logit per pixel (sigmoid); paper 2's smp models have two classes
(background, foreground) under a softmax, so the foreground probability is softmax[..., 1].
Every consumer (training metrics, evaluation, inference, infection maps, severity, export)
goes through this one function, so both kinds of model are treated alike everywhere.
See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def foreground_probability(logits: jax.Array) -> jax.Array:
    """`(B, H, W, 1)` logits -> sigmoid; `(B, H, W, 2)` logits -> softmax channel 1.

    Returns:
      `(B, H, W, 1)` float32 probabilities in [0, 1].

    Raises:
      ValueError: any other channel count (a multi-class model has no single foreground).
    """
    logits = logits.astype(jnp.float32)
    channels = logits.shape[-1]
    if channels == 1:
        return jax.nn.sigmoid(logits)
    if channels == 2:
        # softmax[..., 1] = sigmoid(z1 - z0): one exp, and exact for large logit gaps.
        return jax.nn.sigmoid(logits[..., 1:2] - logits[..., 0:1])
    raise ValueError(
        f"model output has {channels} channels per pixel; the foreground probability is "
        "defined for 1 (sigmoid) or 2 (softmax: background, foreground) channels."
    )
