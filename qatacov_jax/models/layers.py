"""Building blocks shared by the encoders and decoders: conv/BN factories, pooling, upsampling.

Every conv is an `nnx.Conv` (kernel HWIO, as Keras stores it) and every BatchNorm an
`nnx.BatchNorm`, so porting Keras weights is a table of names. Padding is explicit wherever the
Keras graph pads explicitly (`ZeroPadding2D` + 'valid'), because XLA's 'SAME' puts the extra row
of an even-sized input on the other side and would shift every feature map by a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Padding = str | Sequence[tuple[int, int]]

# Keras' default kernel initializer; the paper's decoders were trained from it.
glorot_uniform = nnx.initializers.glorot_uniform()
# classification_models' ResNets use he_uniform.
he_uniform = nnx.initializers.he_uniform()

# Keras BatchNormalization default momentum, same update rule as Flax:
# running = momentum * running + (1 - momentum) * batch.
BN_MOMENTUM = 0.99


class FrozenParam(nnx.Variable):
    """An encoder weight frozen by `create_model(..., frozen=True)`.

    Deliberately *not* a subclass of `nnx.Param`: the optimizer and `count_params` select
    trainable leaves with the `TRAINABLE` filter (`nnx.Param`), so a frozen weight is simply
    invisible to them, and its value is still saved/restored with the rest of the state.
    """


# The one filter meaning "trainable": used by nnx.Optimizer(wrt=TRAINABLE) and count_params.
TRAINABLE = nnx.Param


def pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric zero padding of `p` pixels on H and W (Keras `ZeroPadding2D(p)`)."""
    return ((p, p), (p, p))


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int],
    *,
    rngs: nnx.Rngs,
    strides: int = 1,
    padding: Padding = "SAME",
    use_bias: bool = False,
    dtype: Any = None,
    kernel_init: Any = glorot_uniform,
) -> nnx.Conv:
    """An NHWC conv; no bias by default because almost every conv here is followed by BN."""
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        rngs=rngs,
    )


def batch_norm(
    features: int,
    *,
    epsilon: float,
    rngs: nnx.Rngs,
    use_scale: bool = True,
    dtype: Any = None,
) -> nnx.BatchNorm:
    """Keras-convention BatchNorm (momentum 0.99); `epsilon` is the original model's."""
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=epsilon,
        use_scale=use_scale,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def max_pool(x: jax.Array, size: int, stride: int, padding: Padding) -> jax.Array:
    """Max pooling `(B, H, W, C)`. Padded cells never win (they are -inf), which equals Keras'
    zero padding wherever the input is post-ReLU (all our explicit-padding uses)."""
    return nnx.max_pool(x, (size, size), strides=(stride, stride), padding=padding)


def avg_pool(x: jax.Array, size: int, stride: int, padding: Padding = "VALID") -> jax.Array:
    """Average pooling `(B, H, W, C)`; with 'SAME' padding the padded cells are excluded from
    the mean, as in TensorFlow."""
    return nnx.avg_pool(
        x, (size, size), strides=(stride, stride), padding=padding, count_include_pad=False
    )


def upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling `(B, H, W, C) -> (B, fH, fW, C)` (Keras UpSampling2D).

    A broadcast + reshape rather than a gather, so XLA fuses it into the consumer.
    """
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, factor * h, factor * w, c)


class ConvBnRelu(nnx.Module):
    """Conv3x3 'same' (no bias) -> BN -> ReLU: segmentation_models' `Conv3x3BnReLU`.

    Call: `(B, H, W, in_features) -> (B, H, W, out_features)`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = None,
        kernel_init: Any = glorot_uniform,
    ):
        self.conv = conv(
            in_features, out_features, 3, rngs=rngs, dtype=dtype, kernel_init=kernel_init
        )
        # Keras' BatchNormalization default epsilon.
        self.bn = batch_norm(out_features, epsilon=1e-3, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class DecoderBlock(nnx.Module):
    """Upsample x2 (nearest) -> concat skips -> 2 x ConvBnRelu: one U-Net/UNet++/DLA node.

    Call: `x (B, h, w, C)`, skips each `(B, 2h, 2w, C_k)` -> `(B, 2h, 2w, out_features)`.
    Concatenation order is [upsampled, *skips], as in the Keras graphs.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.conv1 = ConvBnRelu(in_features, out_features, rngs=rngs, dtype=dtype)
        self.conv2 = ConvBnRelu(out_features, out_features, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, skips: Sequence[jax.Array] = ()) -> jax.Array:
        x = upsample(x, 2)
        if skips:
            x = jnp.concatenate([x, *skips], axis=-1)
        return self.conv2(self.conv1(x))


def freeze(module: nnx.Module) -> int:
    """Turns every `nnx.Param` of `module` outside BatchNorm layers into a `FrozenParam`.

    This is segmentation_models 1.x's `encoder_freeze`: all encoder layers are frozen *except*
    BatchNormalization, whose gamma/beta stay trainable (Table 8's counts depend on it).
    Returns the number of variables frozen. Mutates `module` in place.
    """
    frozen = 0
    for _, sub in module.iter_modules():
        if isinstance(sub, nnx.BatchNorm):
            continue
        for name, value in list(vars(sub).items()):
            if isinstance(value, nnx.Param):
                setattr(sub, name, FrozenParam(value.get_value()))
                frozen += 1
    return frozen


def check_image_batch(x: jax.Array, what: str) -> None:
    """Raises a ValueError unless `x` is `(B, H, W, 3)` with H, W multiples of 32.

    Shapes are static, so under `jax.jit` this runs once per trace, not per step.
    """
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"{what} expects images of shape (B, H, W, 3), got {shape}; "
            "replicate grayscale X-rays to 3 channels (the preprocessing does this)."
        )
    if shape[1] % 32 or shape[2] % 32:
        raise ValueError(
            f"{what} needs H and W divisible by 32 (five stride-2 stages), got {shape}; "
            "resize or pad the images, e.g. to 224x224 or 256x256."
        )
