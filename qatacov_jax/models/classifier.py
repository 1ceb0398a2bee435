"""The activation-map baseline's classifier: encoder -> global average pooling -> softmax head.

Paper 1 ("Infection vs activation maps") trains the same encoders as 2-class COVID-19
classifiers and compares their Grad-CAM maps with the infection maps. The Keras original is
`Model(encoder.input, Dense(2, activation='softmax')(GlobalAveragePooling2D()(features)))`;
as for the segmentation models we return logits and leave the softmax to the loss and to
inference (numerically safer, and Grad-CAM needs the score *before* the softmax, eq. 14).

The call is split into `features` (the encoder's coarsest map, the one Grad-CAM weights) and
`classify` (pooling + head), so `qatacov_jax.inference.cam` can differentiate the class score
with respect to the feature map without re-running the encoder.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.layers import check_image_batch, glorot_uniform


class EncoderClassifier(nnx.Module):
    """Encoder -> GAP of its coarsest feature -> `head` (Dense, `num_classes` logits).

    Call: `(B, H, W, 3)` float (preprocessed; H, W multiples of 32) -> `(B, num_classes)`
    float32 logits. Class 1 is COVID-19 (the datasets' `label`). `model.train()` /
    `model.eval()` switch BatchNorm as for the segmentation models.

    Attributes:
      encoder: the encoder module (5 features finest first; only the coarsest is used).
      head: `nnx.Linear(encoder.out_channels[-1], num_classes)`, Keras' Dense initialisation.
      arch, encoder_name: registry names (`arch` is always "classifier").
      compute_dtype: dtype activations are computed in (parameters stay float32).
    """

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        num_classes: int = 2,
        rngs: nnx.Rngs,
        dtype: Any = None,
        encoder_name: str = "",
    ):
        self.encoder = encoder
        self.head = nnx.Linear(
            encoder.out_channels[-1],
            num_classes,
            kernel_init=glorot_uniform,
            bias_init=nnx.initializers.zeros_init(),
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.compute_dtype = None if dtype is None else jnp.dtype(dtype).name
        self.arch = "classifier"
        self.encoder_name = encoder_name

    def features(self, x: jax.Array) -> jax.Array:
        """`(B, H, W, 3)` -> the encoder's coarsest feature map `(B, H/32, W/32, C)`."""
        check_image_batch(x, "classifier")
        if self.compute_dtype is not None:
            x = x.astype(self.compute_dtype)
        return self.encoder(x)[-1]

    def classify(self, features: jax.Array) -> jax.Array:
        """`(B, h, w, C)` feature map -> `(B, num_classes)` float32 logits (GAP + Dense)."""
        pooled = jnp.mean(features, axis=(1, 2))
        return self.head(pooled).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.classify(self.features(x))
