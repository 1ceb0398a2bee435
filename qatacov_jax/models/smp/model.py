"""The smp family's model: encoder -> decoder -> segmentation head (-> activation), and its
registry (`create_smp_model`, `SMP_ARCHS`, `SMP_ENCODERS`).

Mirrors smp 0.6's `SegmentationModel`: Unet/UnetPlusPlus end in a 3x3 conv head, FPN in a 1x1
conv followed by bilinear x4 upsampling (align_corners=True). `classes` output channels;
`activation` as smp's (None = logits, the form training and inference use here);
`decoder_merge_policy` as smp's FPN argument (`add`, the default, or `cat`).
See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qatacov_jax.models.layers import check_image_batch
from qatacov_jax.models.smp.decoders import FPNDecoder, UnetDecoder, UnetPlusPlusDecoder
from qatacov_jax.models.smp.densenet import DENSENETS, DenseNetEncoder
from qatacov_jax.models.smp.inceptionv4 import InceptionV4Encoder
from qatacov_jax.models.smp.layers import (
    Seq,
    ShapeOnlyRngs,
    conv,
    upsample_bilinear,
    xavier_uniform,
)
from qatacov_jax.models.smp.resnet import RESNETS, ResNetEncoder

FAMILY = "smp"

# Our arch name -> (smp class name, decoder, head kernel, head upsampling).
SMP_ARCHS: dict[str, tuple[str, Callable[..., nnx.Module], int, int]] = {
    "unet": ("Unet", UnetDecoder, 3, 1),
    "unetpp": ("UnetPlusPlus", UnetPlusPlusDecoder, 3, 1),
    "fpn": ("FPN", FPNDecoder, 1, 4),
}
# Encoder name (smp's) -> constructor (name, *, rngs, dtype).
SMP_ENCODERS: dict[str, Callable[..., nnx.Module]] = {
    **dict.fromkeys(RESNETS, ResNetEncoder),
    **dict.fromkeys(DENSENETS, DenseNetEncoder),
    "inceptionv4": InceptionV4Encoder,
}
# The input preprocessing each encoder's ImageNet weights expect (smp's `preprocessing_fn`):
# torchvision's mean/std on [0, 1] RGB, and Inception-v4's (x - 0.5) / 0.5, which is the
# `tf` mode (x / 127.5 - 1 on 0..255). Modes: `data.preprocessing`.
SMP_PREPROCESSING: dict[str, str] = {
    **dict.fromkeys(RESNETS, "torch"),
    **dict.fromkeys(DENSENETS, "torch"),
    "inceptionv4": "tf",
}
# smp's `activation` names (applied on the channel axis, last here).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "softmax2d": lambda x: jax.nn.softmax(x, axis=-1),
    "logsoftmax": lambda x: jax.nn.log_softmax(x, axis=-1),
    "tanh": jnp.tanh,
}


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"Unknown smp {what} {name!r}; valid names: {sorted(table)}.")
    return table[name]


class Identity(nnx.Module):
    """`nn.Identity` standing in a `Seq` (keeps PyTorch's child numbering)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class BilinearUp(nnx.Module):
    """`nn.Upsample(scale_factor, mode="bilinear", align_corners=True)`."""

    def __init__(self, factor: int):
        self.factor = factor

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_bilinear(x, self.factor)


class SmpSegmentationModel(nnx.Module):
    """An smp model: `encoder`, `decoder`, `segmentation_head` (PyTorch's attribute names).

    Call: `(B, H, W, 3)` float (preprocessed for the encoder; H, W multiples of 32) ->
    `(B, H, W, classes)` float32: logits, or `activation` of them if one was given.

    Attributes:
      arch, encoder_name: registry names; family: "smp".
      classes, activation, decoder_merge_policy: as smp's arguments (the merge policy is
        FPN's; None = smp's default, `add`).
      compute_dtype: dtype activations are computed in (parameters stay float32).
    """

    def __init__(
        self,
        arch: str,
        encoder_name: str,
        *,
        classes: int = 1,
        activation: str | None = None,
        decoder_merge_policy: str | None = None,
        rngs: nnx.Rngs,
        dtype: Any = None,
    ):
        _, decoder_cls, kernel, upsampling = _lookup(SMP_ARCHS, arch, "architecture")
        decoder_kw = _decoder_kwargs(arch, decoder_merge_policy)
        encoder_cls = _lookup(SMP_ENCODERS, encoder_name, "encoder")
        if activation is not None:
            _lookup(ACTIVATIONS, activation, "activation")
        if int(classes) < 1:
            raise ValueError(f"classes must be >= 1, got {classes}.")
        self.encoder = encoder_cls(encoder_name, rngs=rngs, dtype=dtype)
        self.decoder = decoder_cls(self.encoder.out_channels, rngs=rngs, dtype=dtype, **decoder_kw)
        self.segmentation_head = Seq(
            conv(
                self.decoder.out_channels,
                int(classes),
                kernel,
                padding=kernel // 2,
                bias=True,
                rngs=rngs,
                dtype=dtype,
                kernel_init=xavier_uniform,
            ),  # fmt: skip
            BilinearUp(upsampling) if upsampling > 1 else Identity(),
        )
        self.arch, self.encoder_name, self.family = arch, encoder_name, FAMILY
        self.classes, self.activation = int(classes), activation
        self.decoder_merge_policy = decoder_kw.get("merge_policy")
        self.compute_dtype = None if dtype is None else jnp.dtype(dtype).name

    def __call__(self, x: jax.Array) -> jax.Array:
        check_image_batch(x, f"smp {self.arch} {self.encoder_name} model")
        if self.compute_dtype is not None:
            x = x.astype(self.compute_dtype)
        y = self.segmentation_head(self.decoder(self.encoder(x))).astype(jnp.float32)
        return y if self.activation is None else ACTIVATIONS[self.activation](y)


def _decoder_kwargs(arch: str, merge_policy: str | None) -> dict[str, Any]:
    """The decoder's keyword arguments: FPN's `merge_policy` (default `add`, smp's)."""
    if arch == "fpn":
        return {"merge_policy": merge_policy or "add"}
    if merge_policy is not None:
        raise ValueError(
            f"decoder_merge_policy is an FPN setting; smp {SMP_ARCHS[arch][0]} has none "
            f"(got {merge_policy!r}). Leave it None."
        )
    return {}


def create_smp_model(
    arch: str,
    encoder: str,
    *,
    classes: int = 1,
    activation: str | None = None,
    decoder_merge_policy: str | None = None,
    rngs: nnx.Rngs,
    dtype: Any = None,
) -> SmpSegmentationModel:
    """`smp.<Unet|UnetPlusPlus|FPN>(encoder, encoder_weights=None, classes, activation[,
    decoder_merge_policy])`.

    Args:
      arch: `unet`, `unetpp` or `fpn` (`SMP_ARCHS`).
      encoder: `resnet18`, `resnet50`, `densenet121`, `densenet161` or `inceptionv4`.
      classes: output channels (paper 2: 2, with a softmax over them).
      activation: smp's activation name or None (logits).
      decoder_merge_policy: FPN only: `add` (sum the pyramid levels; smp's default, None)
        or `cat` (concatenate them, as paper 2's text describes).
    """
    return SmpSegmentationModel(
        arch,
        encoder,
        classes=classes,
        activation=activation,
        decoder_merge_policy=decoder_merge_policy,
        rngs=rngs,
        dtype=dtype,
    )


def abstract_smp_model(
    arch: str,
    encoder: str,
    *,
    classes: int = 1,
    activation: str | None = None,
    decoder_merge_policy: str | None = None,
    dtype: Any = None,
) -> SmpSegmentationModel:
    """The model `create_smp_model` builds, with shapes only (no memory, no compute): what
    parameter counts and weight porting need."""
    return nnx.eval_shape(
        lambda: SmpSegmentationModel(
            arch,
            encoder,
            classes=classes,
            activation=activation,
            decoder_merge_policy=decoder_merge_policy,
            rngs=ShapeOnlyRngs(),
            dtype=dtype,
        )  # fmt: skip
    )
