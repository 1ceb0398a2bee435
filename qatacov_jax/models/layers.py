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
import numpy as np
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


def conv_same(x: jax.Array, kernel: jax.Array, *, precision: Any = None) -> jax.Array:
    """Stride-1 'SAME' conv of `x (B, H, W, C)` with an HWIO `kernel (k, k, C, O)`: the plain
    conv the restructured decoder paths below are built from (no dtype promotion here)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )


def _phase_taps(kernel: jax.Array, axis: int, factor: int) -> jax.Array:
    """Folds a 3-tap kernel axis into (phase, 2 taps) for a conv after x`factor` upsampling.

    Nearest upsampling by f followed by a 3x3 'same' conv, seen from the low-resolution
    grid: output row f*i + a (phase a) reads upsampled rows f*i+a-1 .. f*i+a+1, which are
    low-resolution rows i-1+s_a and i+s_a with s_a = 0 for a = 0 and 1 otherwise; the kernel
    rows landing on the same low-resolution row are summed. Plain adds, not an einsum: XLA
    fuses them into one pass over the kernel.

    Args:
      kernel: size 3 along `axis`.
    Returns:
      `kernel` with `axis` replaced by two axes `(factor, 2)`.
    """
    rows = [jnp.take(kernel, d, axis=axis) for d in range(3)]
    phases = []
    for a in range(factor):
        shift = 0 if a == 0 else 1
        taps: list[list[jax.Array]] = [[], []]
        for d, row in enumerate(rows):  # kernel row d sits at upsampled offset d - 1
            taps[(a + d - 1) // factor + 1 - shift].append(row)
        phases.append(jnp.stack([sum(t) if t else jnp.zeros_like(rows[0]) for t in taps], axis))
    return jnp.stack(phases, axis)


def conv3x3_of_upsampled(
    x: jax.Array, kernel: jax.Array, factor: int = 2, *, precision: Any = None
) -> jax.Array:
    """`conv3x3_same(upsample(x, factor), kernel)` without building the upsampled input.

    Every output phase (row offset a, column offset b inside a factor x factor cell) of a
    3x3 conv over a nearest-upsampled map is a 2x2 conv over the low-resolution map with
    summed taps (`_phase_taps`), so all phases are one 2x2 conv with factor^2 x the output
    channels on `x` padded by one pixel, then interleaved. Exact up to float rounding, with
    16/36 of the multiply-adds at factor 2 and no upsampled copy in memory.

    Args:
      x: `(B, h, w, C)`.
      kernel: `(3, 3, C, O)` HWIO (combined in its own dtype, then cast to x's).
      factor: the nearest-upsampling factor.
    Returns:
      `(B, factor*h, factor*w, O)`.
    """
    b, h, w, c = x.shape
    f, o = factor, kernel.shape[-1]
    # (phase_a, tap_r, phase_b, tap_s, C, O) -> (tap_r, tap_s, C, phase_a * phase_b * O).
    k2 = _phase_taps(_phase_taps(kernel, 0, f), 2, f)
    k2 = k2.transpose(1, 3, 4, 0, 2, 5).reshape(2, 2, c, f * f * o)
    y = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
        k2.astype(x.dtype),
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    ).reshape(b, h + 1, w + 1, f, f, o)
    # Phase (a, b) of low-resolution pixel (i, j) is conv position (i + s_a, j + s_b). Stacks
    # of slices, not concatenations: XLA:CPU fuses these into one pass (a concatenate of the
    # same slices measured 6x slower).
    shift = [0] + [1] * (f - 1)
    rows = [
        jnp.stack(
            [y[:, shift[a] : shift[a] + h, shift[c] : shift[c] + w, a, c] for c in range(f)],
            axis=3,
        )
        for a in range(f)
    ]  # each (B, h, w, f, O)
    return jnp.stack(rows, axis=2).reshape(b, f * h, f * w, o)


def conv_of_upsampled_concat(
    conv: nnx.Conv,
    parts: Sequence[tuple[jax.Array, int]],
    *,
    extra: jax.Array | None = None,
) -> jax.Array:
    """`conv(concat([upsample(x, f) for x, f in parts]))` for a 3x3 'same' stride-1 `nnx.Conv`.

    A conv over a channel concatenation is the sum of convs over the pieces with the matching
    slices of the kernel's input channels. Upsampled pieces (f > 1) are convolved on their
    low-resolution grid (`conv3x3_of_upsampled`); consecutive full-resolution pieces (f = 1)
    are concatenated and convolved once. Same function as the Keras graph's UpSampling2D +
    Concatenate + Conv2D, without the upsampled copies and with fewer multiply-adds. The
    compute dtype follows the conv's `dtype` as in `nnx.Conv`.

    Args:
      conv: 3x3, stride 1, 'SAME', in_features = the pieces' channels in order.
      parts: `(x, f)` pairs, x `(B, H/f, W/f, C_k)`, in concatenation order. They may cover
        only the first input channels of the kernel when `extra` holds the rest.
      extra: `(B, H, W, conv.out_features)`, the (bias-free) contribution of the remaining
        input channels, computed elsewhere (`stacked_conv3x3`), added before the bias.
    Returns:
      `(B, H, W, conv.out_features)`.
    """
    kernel = conv.kernel[...]
    bias = conv.bias[...] if conv.bias is not None else None
    # nnx.Conv's own rule for the compute dtype (inputs, kernel, bias promoted together); the
    # upsampled pieces' taps are summed from the stored (float32) kernel before the cast.
    *inputs, cast_kernel, bias = conv.promote_dtype(
        (*(x for x, _ in parts), kernel, bias), dtype=conv.dtype
    )
    # Group consecutive full-resolution pieces: [(xs, factor, first channel)].
    groups: list[tuple[list[jax.Array], int, int]] = []
    channel = 0
    for x, (_, f) in zip(inputs, parts, strict=True):
        if f == 1 and groups and groups[-1][1] == 1:
            groups[-1][0].append(x)
        else:
            groups.append(([x], f, channel))
        channel += x.shape[-1]
    y = None
    for xs, f, first in groups:
        x = xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=-1)
        channels = slice(first, first + x.shape[-1])
        if f == 1:
            part = conv_same(x, cast_kernel[:, :, channels], precision=conv.precision)
        else:
            part = conv3x3_of_upsampled(x, kernel[:, :, channels], f, precision=conv.precision)
        y = part if y is None else y + part
    if extra is not None:
        y = y + extra.astype(y.dtype)
    if bias is not None:
        y = y + bias
    return y


def stacked_conv3x3(x: jax.Array, targets: Sequence[tuple[nnx.Conv, int]]) -> list[jax.Array]:
    """One input convolved by slices of several 3x3 'same' convs, as one wider conv.

    UNet++ feeds each skip X[i, k] to every later node of its row, so each of those nodes'
    first convs convolves X[i, k] with its own slice of input channels. Stacking those slices
    along the output axis does the same multiply-adds as one conv with a wider output, which
    XLA:CPU runs about 20% faster than the separate narrow convs (ours, 112x112 and 56x56
    rows, batch 8). The results are bias-free parts for `conv_of_upsampled_concat(extra=)`.

    Args:
      x: `(B, H, W, C)`.
      targets: `(conv, first)` pairs: `x` is input channels `first : first + C` of `conv`;
        every conv must share the compute dtype and precision of the first.
    Returns:
      per target, `(B, H, W, conv.out_features)`, in the order of `targets`.
    """
    c = x.shape[-1]
    lead = targets[0][0]
    kernel = jnp.concatenate([k.kernel[...][:, :, first : first + c] for k, first in targets], -1)
    x, kernel = lead.promote_dtype((x, kernel), dtype=lead.dtype)
    y = conv_same(x, kernel, precision=lead.precision)
    splits = np.cumsum([k.out_features for k, _ in targets])[:-1].tolist()
    return jnp.split(y, splits, axis=-1)


class DecoderBlock(nnx.Module):
    """Upsample x2 (nearest) -> concat skips -> 2 x ConvBnRelu: one U-Net/UNet++/DLA node.

    Call: `x (B, h, w, C)`, skips each `(B, 2h, 2w, C_k)` -> `(B, 2h, 2w, out_features)`.
    Concatenation order is [upsampled, *skips], as in the Keras graphs. The first conv runs
    on the low-resolution grid (`conv_of_upsampled_concat`): the same function as upsampling,
    concatenating and convolving, with fewer multiply-adds and no upsampled copy.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.conv1 = ConvBnRelu(in_features, out_features, rngs=rngs, dtype=dtype)
        self.conv2 = ConvBnRelu(out_features, out_features, rngs=rngs, dtype=dtype)

    def __call__(
        self,
        x: jax.Array,
        skips: Sequence[jax.Array] = (),
        *,
        skip_term: jax.Array | None = None,
    ) -> jax.Array:
        """`skip_term`: the skips' part of the first conv, computed by the caller
        (`stacked_conv3x3`) instead of passing `skips`."""
        y = conv_of_upsampled_concat(
            self.conv1.conv, [(x, 2), *((s, 1) for s in skips)], extra=skip_term
        )
        return self.conv2(nnx.relu(self.conv1.bn(y)))


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
