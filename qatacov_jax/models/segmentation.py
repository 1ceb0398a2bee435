"""The segmentation model: encoder + decoder + 3x3 head producing one logit per pixel."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.folding import fold_batchnorm
from qatacov_jax.models.layers import check_image_batch, conv


def in_eval_mode(model: nnx.Module) -> bool:
    """True when every BatchNorm of `model` uses its running statistics (`model.eval()`).

    A model with no BatchNorm counts as not in eval mode (there is nothing to fold).
    """
    flags = [m.use_running_average for _, m in model.iter_modules() if isinstance(m, nnx.BatchNorm)]
    return bool(flags) and all(flags)


class SegmentationModel(nnx.Module):
    """Encoder -> decoder -> `final_conv` (3x3 'same', with bias, 1 channel).

    Call: `(B, H, W, 3)` float (preprocessed for the encoder; H, W multiples of 32) ->
    `(B, H, W, 1)` float32 **logits** (the Keras models end in a sigmoid; we leave it to the
    loss / inference code, which is numerically safer). Train vs inference BatchNorm behaviour
    is switched with `model.train()` / `model.eval()`.

    In eval mode a call folds BatchNorm into the convs before it (`models.folding`: exact up
    to float rounding, since each BN is then a fixed affine map per channel), on every call,
    from the current weights: one elementwise pass over the folded kernels, which under
    `jax.jit` is small beside the convolutions and leaves nothing cached to go stale. So
    `jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))` of an eval-mode model runs the same
    program as the inference path (`make_forward`). `unfolded(x)` runs the graph as built
    (the reference the folding is tested against). Train mode never folds.

    Attributes:
      encoder: the encoder module (`out_channels`, 5 features finest first).
      decoder: the decoder module (`out_channels`).
      final_conv: the head.
      arch, encoder_name: registry names this model was built from.
      compute_dtype: dtype activations are computed in (parameters stay float32).
    """

    def __init__(
        self,
        encoder: nnx.Module,
        decoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        dtype: Any = None,
        arch: str = "",
        encoder_name: str = "",
    ):
        self.encoder = encoder
        self.decoder = decoder
        self.final_conv = conv(decoder.out_channels, 1, 3, use_bias=True, rngs=rngs, dtype=dtype)
        self.compute_dtype = None if dtype is None else jnp.dtype(dtype).name
        self.arch = arch
        self.encoder_name = encoder_name

    def __call__(self, x: jax.Array) -> jax.Array:
        if in_eval_mode(self):
            # A folded clone sharing this model's arrays (its BNs are gone or identities).
            return fold_batchnorm(self).unfolded(x)
        return self.unfolded(x)

    def unfolded(self, x: jax.Array) -> jax.Array:
        """The model's graph as built, each BatchNorm its own op: `(B, H, W, 3) -> (B, H, W, 1)`."""
        check_image_batch(x, f"{self.arch or 'segmentation'} model")
        if self.compute_dtype is not None:
            x = x.astype(self.compute_dtype)
        logits = self.final_conv(self.decoder(self.encoder(x)))
        return logits.astype(jnp.float32)
