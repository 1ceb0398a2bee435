"""Building blocks of the segmentation_models.pytorch (smp) family, in PyTorch's conventions.

The smp family mirrors smp 0.6's PyTorch modules graph for graph *and name for name*: every
module attribute carries the name of the PyTorch submodule it stands for (`Seq` numbers its
children "0", "1", ... as `nn.Sequential` / `nn.ModuleList` do), so a PyTorch `state_dict`
key such as `decoder.blocks.0.conv1.1.running_mean` is, word for word, the path of our
variable (`weights.smp_port` maps the last word: weight -> kernel/scale, running_mean ->
mean, running_var -> var). See docs/original_models.md#paper-2-models-smp.

PyTorch conventions kept here: explicit symmetric padding (`padding=p` of `nn.Conv2d`),
BatchNorm epsilon 1e-5 and momentum 0.1 (Flax's 0.9: Flax weights the *old* average),
max pooling padded with -inf, average pooling that excludes padding when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# PyTorch's `momentum=0.1` updates running = 0.9 * running + 0.1 * batch: Flax's 0.9.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPSILON = 1e-5


def _host_init(draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]) -> Any:
    """An initializer drawing its values with NumPy on the host from the (concrete) key.

    Eager JAX random initialisation compiles one XLA kernel per distinct shape, which took
    over a minute for a DenseNet-161 model on a loaded 2-core machine; NumPy draws the same
    distributions in well under a second. Under tracing (`nnx.eval_shape`, where only shapes
    matter) the key is abstract and zeros of the right shape are returned.
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        if isinstance(key, jax.core.Tracer):
            return jnp.zeros(shape, dtype)
        seed = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel().tolist()
        return jnp.asarray(draw(np.random.default_rng(seed), shape), dtype)

    return init


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of an HWIO kernel (PyTorch's: in/out channels x receptive field)."""
    field = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * field, shape[-1] * field


# torchvision / smp initialise convs with Kaiming (He) schemes and heads with Xavier; the
# values only matter for training from scratch (ported weights replace them).
kaiming_uniform = _host_init(  # smp's decoders: kaiming_uniform_(fan_in, relu)
    lambda g, s: g.uniform(-1, 1, s) * np.sqrt(6.0 / _fans(s)[0])
)
kaiming_normal_fan_out = _host_init(  # torchvision's ResNet
    lambda g, s: g.standard_normal(s) * np.sqrt(2.0 / _fans(s)[1])
)
xavier_uniform = _host_init(  # smp's heads
    lambda g, s: g.uniform(-1, 1, s) * np.sqrt(6.0 / sum(_fans(s)))
)
zeros = _host_init(lambda g, s: np.zeros(s, np.float32))
ones = _host_init(lambda g, s: np.ones(s, np.float32))


class ShapeOnlyRngs:
    """Stands in for `nnx.Rngs` when a model is built only for its shapes (`nnx.eval_shape`):
    one fixed key for every layer. (With `nnx.Rngs`, each key draw updates a counter
    variable, and under tracing that update costs time growing with the graph built so far:
    25 s instead of 8 for UNet++ DenseNet-161.)"""

    def __init__(self) -> None:
        self.key = jax.random.key(0)

    def params(self) -> jax.Array:
        return self.key

    __call__ = params


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int],
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    bias: bool = False,
    dtype: Any = None,
    kernel_init: Any = kaiming_uniform,
) -> nnx.Conv:
    """`nn.Conv2d(in, out, kernel_size, stride, padding, bias=bias)` in NHWC (kernel HWIO)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return nnx.Conv(
        in_features,
        out_features,
        (kh, kw),
        strides=stride,
        padding=((ph, ph), (pw, pw)),
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        bias_init=zeros,
        rngs=rngs,
    )


def batch_norm(
    features: int, *, rngs: nnx.Rngs, epsilon: float = TORCH_BN_EPSILON, dtype: Any = None
) -> nnx.BatchNorm:
    """`nn.BatchNorm2d(features, eps=epsilon)` (momentum 0.1 in PyTorch's sense)."""
    return nnx.BatchNorm(
        features,
        momentum=TORCH_BN_MOMENTUM,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=ones,
        bias_init=zeros,
        rngs=rngs,
    )


def group_norm(features: int, groups: int, *, rngs: nnx.Rngs, dtype: Any = None) -> nnx.GroupNorm:
    """`nn.GroupNorm(groups, features)` (epsilon 1e-5; exact two-pass variance)."""
    return nnx.GroupNorm(
        features,
        num_groups=groups,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=ones,
        bias_init=zeros,
        rngs=rngs,
    )


class Seq(nnx.Module):
    """`nn.Sequential` / `nn.ModuleList`: children are attributes "0", "1", ... (so their
    variables have PyTorch's key paths); calling runs them in order."""

    def __init__(self, *children: Any):
        for i, child in enumerate(children):
            setattr(self, str(i), child)
        self.size = len(children)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Any:
        return getattr(self, str(i))

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.size):
            x = self[i](x)
        return x


class ReLU(nnx.Module):
    """A parameter-free child of a `Seq` (keeps PyTorch's child numbering)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(x)


class ConvBnReLU(Seq):
    """smp's `Conv2dReLU`: Sequential(conv kxk (no bias), BatchNorm2d, ReLU).

    Call: `(B, H, W, in_features) -> (B, H', W', out_features)`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        rngs: nnx.Rngs,
        stride: int = 1,
        padding: int | tuple[int, int] = 1,
        epsilon: float = TORCH_BN_EPSILON,
        dtype: Any = None,
        kernel_init: Any = kaiming_uniform,
    ):
        super().__init__(
            conv(
                in_features,
                out_features,
                kernel_size,
                stride=stride,
                padding=padding,
                rngs=rngs,
                dtype=dtype,
                kernel_init=kernel_init,
            ),  # fmt: skip
            batch_norm(out_features, epsilon=epsilon, rngs=rngs, dtype=dtype),
            ReLU(),
        )


def max_pool(x: jax.Array, size: int, stride: int, padding: int = 0) -> jax.Array:
    """`nn.MaxPool2d(size, stride, padding)` on `(B, H, W, C)`: padded cells are -inf."""
    return nnx.max_pool(
        x, (size, size), strides=(stride, stride), padding=((padding, padding), (padding, padding))
    )


def avg_pool(x: jax.Array, size: int, stride: int, padding: int = 0) -> jax.Array:
    """`nn.AvgPool2d(size, stride, padding, count_include_pad=False)` on `(B, H, W, C)`."""
    return nnx.avg_pool(
        x,
        (size, size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        count_include_pad=False,
    )


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`(n_out, n_in)` weights of 1-D linear interpolation with `align_corners=True`: output
    i samples input coordinate i * (n_in - 1) / (n_out - 1), as PyTorch computes it."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 2)
    frac = (src - lo).astype(np.float32)
    rows = np.arange(n_out)
    m[rows, lo] += 1.0 - frac
    m[rows, lo + 1] += frac
    return m


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """`F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)`.

    Two small matrix products (rows, then columns) with interpolation matrices fixed at trace
    time; computed at full float32 precision (the weights are not representable in bf16).

    Args:
      x: `(B, H, W, C)`.
    Returns:
      `(B, factor*H, factor*W, C)`, in x's dtype.
    """
    _, h, w, _ = x.shape
    mh = jnp.asarray(_align_corners_matrix(h, factor * h), x.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, factor * w), x.dtype)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)


class DropoutKey(nnx.Variable):
    """The PRNG key (raw uint32 data) of a `ChannelDropout`: part of the model state, so it is
    checkpointed and replicated like BatchNorm statistics, never trained."""


class ChannelDropout(nnx.Module):
    """`nn.Dropout2d(rate)`: zeroes whole channels of a sample with probability `rate` and
    scales the rest by 1 / (1 - rate) in training mode; the identity in eval mode.

    Its key lives in the state (`DropoutKey`) and advances at every training call, so a
    jitted step needs no extra RNG argument. Call: `(B, H, W, C) -> (B, H, W, C)`.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = float(rate)
        self.deterministic = False
        self.key = DropoutKey(jax.random.key_data(rngs()))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        key, sub = jax.random.split(jax.random.wrap_key_data(self.key[...]))
        self.key[...] = jax.random.key_data(key)
        b, _, _, c = x.shape
        keep = jax.random.bernoulli(sub, 1.0 - self.rate, (b, 1, 1, c))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
