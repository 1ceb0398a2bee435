"""Inference-time BatchNorm folding: conv -> BN becomes one conv with a bias.

In eval mode a BatchNorm after a conv is an affine map per output channel,
`y = s * (conv(x) + b - mean) + beta` with `s = gamma / sqrt(var + eps)`, so it can be
folded into the conv's kernel (`kernel * s`) and bias (`(b - mean) * s + beta`). The folded
model computes the same function (up to float rounding) with one fewer elementwise pass per
folded pair and lets conv libraries (oneDNN, cuDNN) fuse bias + ReLU into the conv.

Only conv -> BN pairs whose BN reads nothing but that conv's output are folded; they are named
per module class below (the models' attribute names follow the Keras layer names). BNs that
come *before* a conv (DenseNet and pre-activation ResNet's BN -> ReLU -> conv) cannot be folded
across the ReLU and stay as they are.

`fold_batchnorm(model)` returns a new model for inference only (its variables are renamed and
some BatchNorms are gone, so it is not a checkpoint-compatible training model).
`make_forward(model)` is the fastest exact inference form built on it: a pure
`forward(state, images)` to wrap in `jax.jit` with any shardings, and the state to pass it.

(Running the batch a few samples at a time was measured too: it paid off only while jaxlib's
YNNPACK convolutions were in use on CPU; with XLA's own convolutions, `runtime.xla_flags`,
the whole batch at once is fastest: U-Net DenseNet-121, 224, batch 8, 2-core Xeon, 51
ms/image whole vs 53 at micro-batch 4 and 69 at micro-batch 1. So there is no such option.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.densenet import DenseNet121
from qatacov_jax.models.inception import InceptionV3
from qatacov_jax.models.layers import ConvBnRelu
from qatacov_jax.models.resnet import ResNet50


class FoldedBatchNorm(nnx.Module):
    """Stands where a folded BatchNorm was: the identity (its affine map is in the conv)."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        return x


def _densenet_pairs(m: nnx.Module) -> Iterator[tuple[str, str]]:
    yield "conv1_conv", "conv1_bn"
    for name in vars(m):
        if (match := re.fullmatch(r"(conv\d+_block\d+)_1_conv", name)) is not None:
            yield name, f"{match.group(1)}_1_bn"


def _inception_pairs(m: nnx.Module) -> Iterator[tuple[str, str]]:
    for name in vars(m):
        if (match := re.fullmatch(r"conv2d_(\d+)", name)) is not None:
            yield name, f"batch_normalization_{match.group(1)}"


def _resnet_pairs(m: nnx.Module) -> Iterator[tuple[str, str]]:
    # Pre-activation unit: bn1 -> relu -> conv1 -> bn2 -> relu -> conv2 -> bn3 -> relu -> conv3.
    yield "conv0", "bn0"
    for name in vars(m):
        if (match := re.fullmatch(r"(stage\d+_unit\d+)_conv([12])", name)) is not None:
            yield name, f"{match.group(1)}_bn{int(match.group(2)) + 1}"


# module class -> the (conv attribute, BN attribute) pairs where the BN reads only that conv.
FOLDABLE: dict[type, Callable[[nnx.Module], Iterator[tuple[str, str]]]] = {
    ConvBnRelu: lambda m: iter([("conv", "bn")]),
    DenseNet121: _densenet_pairs,
    InceptionV3: _inception_pairs,
    ResNet50: _resnet_pairs,
}


def fold_conv_bn(conv: nnx.Conv, bn: nnx.BatchNorm) -> nnx.Conv:
    """A conv (with bias) computing `bn(conv(x))` with `bn` in inference mode.

    The arithmetic is done in float32 whatever the compute dtype; the new conv keeps the old
    one's compute dtype, strides and padding.
    """
    scale = jax.lax.rsqrt(bn.var.get_value().astype(jnp.float32) + bn.epsilon)
    if bn.scale is not None:
        scale = scale * bn.scale.get_value()
    shift = -bn.mean.get_value() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.get_value()
    kernel = conv.kernel.get_value()
    if conv.bias is not None:
        shift = shift + conv.bias.get_value() * scale
    folded = nnx.eval_shape(
        lambda: nnx.Conv(
            conv.in_features,
            conv.out_features,
            conv.kernel_size,
            strides=conv.strides,
            padding=conv.padding,
            input_dilation=conv.input_dilation,
            kernel_dilation=conv.kernel_dilation,
            feature_group_count=conv.feature_group_count,
            use_bias=True,
            dtype=conv.dtype,
            param_dtype=jnp.float32,
            precision=conv.precision,
            rngs=nnx.Rngs(0),
        )
    )
    # The kernel is HWIO: the BN scale broadcasts over the last (output) axis.
    folded.kernel = nnx.Param((kernel * scale).astype(jnp.float32))
    folded.bias = nnx.Param(shift.astype(jnp.float32))
    return folded


def fold_batchnorm(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every foldable conv -> BN pair folded (inference only).

    The copy is put in eval mode (folding is exact only with the running statistics). The
    original model is left untouched. The copy is an `nnx.clone`: new modules and variables
    sharing the original's arrays, so folding costs one pass over the folded kernels and no
    copy of the rest (it also runs inside `jax.jit`, on traced values: a
    `SegmentationModel` called in eval mode folds itself this way, on every call).

    Returns:
      The folded copy; `model.__call__` semantics unchanged: `(B, H, W, 3) -> (B, H, W, 1)`.
    """
    folded = nnx.clone(model)
    folded.eval()
    for _, module in list(folded.iter_modules()):
        # By class, most-derived first, so a subclass (e.g. a smaller DenseNet) folds too.
        pairs = next((FOLDABLE[t] for t in type(module).__mro__ if t in FOLDABLE), None)
        if pairs is None:
            continue
        for conv_name, bn_name in list(pairs(module)):
            conv = getattr(module, conv_name, None)
            bn = getattr(module, bn_name, None)
            if not isinstance(conv, nnx.Conv) or not isinstance(bn, nnx.BatchNorm):
                continue  # already folded, or a layout this table does not describe
            setattr(module, conv_name, fold_conv_bn(conv, bn))
            setattr(module, bn_name, FoldedBatchNorm())
    return folded


def count_folded(model: nnx.Module) -> int:
    """How many BatchNorms of `model` have been folded away."""
    return sum(isinstance(m, FoldedBatchNorm) for _, m in model.iter_modules())


def make_forward(
    model: nnx.Module, *, fold: bool = True
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """Splits a segmentation model into a pure inference function and its state.

    Args:
      model: call `(B, H, W, 3) -> (B, H, W, 1)` logits.
      fold: fold BatchNorm into convs once, here (a folded copy is made; `model` is
        untouched); False runs the graph as built (`model.unfolded`), each BatchNorm its own
        op, with the running statistics (`model` is put in eval mode): the reference, and
        what benchmarks' `--no-fold` times.

    Returns:
      (forward, state): `forward(state, images (B, H, W, 3)) -> logits (B, H, W, 1)`.
    """
    if fold:
        model = fold_batchnorm(model)
    else:
        model.eval()
    graphdef, state = nnx.split(model)

    def forward(state: Any, images: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state)
        # `unfolded`: the folded copy needs no second fold, and fold=False must not fold
        # (an eval-mode SegmentationModel call folds itself).
        return m.unfolded(images) if hasattr(m, "unfolded") else m(images)

    return forward, state
