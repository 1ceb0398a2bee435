"""Model registry: plain dicts of encoders and decoders, and the public constructors.

Every encoder name is defined here once, with its graph and the input preprocessing its
original pretrained weights expect; the weights and training code take both from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
from flax import nnx

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models.classifier import EncoderClassifier
from qatacov_jax.models.densenet import DenseNet121
from qatacov_jax.models.fpn import FPNDecoder
from qatacov_jax.models.inception import InceptionV3
from qatacov_jax.models.layers import TRAINABLE, FrozenParam, freeze
from qatacov_jax.models.nested import NestedDecoder
from qatacov_jax.models.resnet import ResNet50
from qatacov_jax.models.segmentation import SegmentationModel
from qatacov_jax.models.smp import (
    SMP_ARCHS,
    SMP_ENCODERS,
    SMP_PREPROCESSING,
    SmpSegmentationModel,
    create_smp_model,
)
from qatacov_jax.models.tiny import TinyEncoder, TinySegmenter
from qatacov_jax.models.unet import UNetDecoder


class EncoderSpec(NamedTuple):
    """What an encoder name stands for."""

    architecture: str  # the graph; names that share it share weight files' layouts
    build: Callable[..., nnx.Module]  # (*, rngs, dtype) -> encoder module
    preprocessing: str  # `Preprocessing` mode its original pretrained weights expect


# `chexnet` is DenseNet-121 (its weights differ, not its graph). Preprocessing: see
# docs/weights.md, "Preprocessing each set of weights expects".
ENCODER_SPECS: dict[str, EncoderSpec] = {
    "densenet121": EncoderSpec("densenet121", DenseNet121, "torch"),
    "chexnet": EncoderSpec("densenet121", DenseNet121, "torch"),
    "inceptionv3": EncoderSpec("inceptionv3", InceptionV3, "tf"),
    "resnet50": EncoderSpec("resnet50", ResNet50, "bgr"),
}
# name -> encoder constructor, and name -> architecture (views of ENCODER_SPECS).
ENCODERS: dict[str, Callable[..., nnx.Module]] = {n: s.build for n, s in ENCODER_SPECS.items()}
ENCODER_ARCHITECTURES: dict[str, str] = {n: s.architecture for n, s in ENCODER_SPECS.items()}

# arch -> decoder constructor taking (encoder_channels, *, rngs, dtype).
ARCHS: dict[str, Callable[..., nnx.Module]] = {
    "unet": UNetDecoder,
    "unetpp": partial(NestedDecoder, dense_skips=True),
    "dla": partial(NestedDecoder, dense_skips=False),
    "fpn": FPNDecoder,
}
# `config.model.arch` of the activation-map baseline: the encoder as a COVID-19 classifier
# (`create_classifier`) instead of a decoder on it.
CLASSIFIER_ARCH = "classifier"

# Model families: "paper1" = the Keras segmentation_models graphs above (Degerli et al.);
# "smp" = segmentation_models.pytorch 0.6 graphs (Tahir et al., `models/smp/`).
PAPER1 = "paper1"
SMP = "smp"
FAMILIES = (PAPER1, SMP)


class ModelSpec(NamedTuple):
    """A whole paper-1-family model on an encoder of its own, outside the paper's grid."""

    encoder: EncoderSpec  # registered under the model's name too
    build: Callable[..., nnx.Module]  # (encoder, *, rngs, dtype) -> model; (B,H,W,3) -> logits


# name -> a model selected by `config.model.arch` = `config.model.encoder` = name. Kept apart
# from `ENCODER_SPECS` x `ARCHS`, every pair of which is a model of the paper. `tiny` is the
# fast model of the tests and smoke runs (`models/tiny.py`).
MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> None:
    """Makes `create_model(name, name)` (and `create_encoder(name)`) build `spec`, and so
    a config with `model.arch = model.encoder = name` (training, run directories)."""
    if name in {*ENCODER_SPECS, *ARCHS, CLASSIFIER_ARCH, *MODELS}:
        raise ValueError(f"Model name {name!r} is taken.")
    MODELS[name] = spec


register_model("tiny", ModelSpec(EncoderSpec("tiny", TinyEncoder, "unit"), TinySegmenter))


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"Unknown {what} {name!r}; valid names: {sorted(table)}.")
    return table[name]


def _encoder_spec(name: str) -> EncoderSpec:
    """The paper's encoders and those of `MODELS`."""
    specs = {**ENCODER_SPECS, **{n: m.encoder for n, m in MODELS.items()}}
    return _lookup(specs, name, "encoder")


def encoder_preprocessing(name: str, family: str = "paper1") -> Preprocessing:
    """The preprocessing the encoder's original pretrained weights were trained with."""
    if family == "smp":
        return Preprocessing.from_mode(_lookup(SMP_PREPROCESSING, name, "smp encoder"))
    return Preprocessing.from_mode(_encoder_spec(name).preprocessing)


def create_encoder(name: str, *, rngs: nnx.Rngs, dtype: Any = None) -> nnx.Module:
    """Builds an encoder with random (Keras-style) initial weights.

    Args:
      name: one of `ENCODERS` (`densenet121`, `chexnet`, `inceptionv3`, `resnet50`) or of
        `MODELS` (`tiny`: its encoder).
      rngs: NNX RNG streams for the initialisers.
      dtype: compute dtype (e.g. `jnp.bfloat16`); parameters are always float32.

    Returns:
      The encoder module. For `ENCODERS`, `encoder.out_channels` is a 5-tuple; calling it on
      `(B, H, W, 3)` returns 5 features, finest first, with strides 2, 4, 8, 16, 32.
    """
    return _encoder_spec(name).build(rngs=rngs, dtype=dtype)


def _encoder_name(encoder: nnx.Module) -> str:
    """The registry name of an encoder module's class ("" if unregistered)."""
    builds = {**ENCODERS, **{n: m.encoder.build for n, m in MODELS.items()}}
    return next((n for n, c in builds.items() if type(encoder) is c), "")


def _encoder(
    encoder: str | nnx.Module, *, frozen: bool, rngs: nnx.Rngs, dtype: Any
) -> tuple[nnx.Module, str]:
    """(encoder module, its registry name): built from a name, or the module passed in
    (named by its class; "" if unregistered); frozen in place if asked."""
    if isinstance(encoder, str):
        name = encoder
        encoder = create_encoder(encoder, rngs=rngs, dtype=dtype)
    else:
        name = _encoder_name(encoder)
    if frozen:
        freeze(encoder)
    return encoder, name


def create_model(
    arch: str,
    encoder: str | nnx.Module,
    *,
    family: str = PAPER1,
    classes: int = 1,
    activation: str | None = None,
    frozen: bool = False,
    rngs: nnx.Rngs,
    dtype: Any = None,
) -> SegmentationModel | SmpSegmentationModel | nnx.Module:
    """Builds a segmentation model of either family.

    Args:
      arch: paper1: one of `ARCHS` (`unet`, `unetpp`, `dla`, `fpn`) or of `MODELS` (`tiny`,
        whose encoder is its own); smp: one of `SMP_ARCHS` (`unet`, `unetpp`, `fpn`).
      encoder: paper1: an encoder module from `create_encoder` (e.g. after loading ported
        weights into it), or an encoder name, in which case a randomly initialised one is
        built (for an arch of `MODELS`, its own name); smp: a name of `SMP_ENCODERS`
        (`resnet18`, `resnet50`, `densenet121`, `densenet161`, `inceptionv4`).
      family: "paper1" (Keras segmentation_models graphs, Degerli et al.) or "smp"
        (segmentation_models.pytorch 0.6, Tahir et al.).
      classes: smp only: output channels (paper 2 uses 2 with a softmax); paper1 models have
        one output.
      activation: smp only: smp's activation name applied to the output; None = logits.
      frozen: paper1 only: freeze the encoder as segmentation_models 1.x does: its weights
        become `FrozenParam` (not trainable) *except* BatchNorm scale/offset, which stay
        trainable. The encoder module passed in is modified in place.
      rngs: NNX RNG streams for the initialisers.
      dtype: compute dtype (e.g. `jnp.bfloat16`); parameters are always float32.

    Returns:
      paper1: a `SegmentationModel` mapping `(B, H, W, 3)` to `(B, H, W, 1)` float32 per-pixel
      **logits** (no sigmoid). smp: an `SmpSegmentationModel` mapping `(B, H, W, 3)` to
      `(B, H, W, classes)` logits (or `activation` of them). `MODELS`: their model, with
      the paper1 output. All start in training mode; use `model.eval()` for inference.
    """
    if family == SMP:
        if frozen:
            raise ValueError(
                "frozen=True is the paper-1 (Keras segmentation_models) encoder freezing; the "
                "smp family trains its encoder (set config.model.frozen=False)."
            )
        if not isinstance(encoder, str):
            raise ValueError("family='smp' takes an encoder name; ported weights load by name.")
        return create_smp_model(
            arch, encoder, classes=classes, activation=activation, rngs=rngs, dtype=dtype
        )
    if family != PAPER1:
        raise ValueError(f"Unknown model family {family!r}; valid families: {list(FAMILIES)}.")
    if classes != 1 or activation is not None:
        raise ValueError(
            f"paper1 models have one output logit (sigmoid in the loss), got classes={classes}, "
            f"activation={activation!r}; use family='smp' for paper 2's 2-class softmax models."
        )
    if arch in MODELS:
        return _create_registered(arch, encoder, frozen=frozen, rngs=rngs, dtype=dtype)
    decoder_cls = _lookup({**ARCHS, **MODELS}, arch, "architecture")
    if (name := encoder if isinstance(encoder, str) else _encoder_name(encoder)) in MODELS:
        raise ValueError(f"Encoder {name!r} is the encoder of model {name!r} only.")
    encoder, encoder_name = _encoder(encoder, frozen=frozen, rngs=rngs, dtype=dtype)
    decoder = decoder_cls(tuple(encoder.out_channels), rngs=rngs, dtype=dtype)
    return SegmentationModel(
        encoder, decoder, rngs=rngs, dtype=dtype, arch=arch, encoder_name=encoder_name
    )


def _create_registered(
    arch: str, encoder: str | nnx.Module, *, frozen: bool, rngs: nnx.Rngs, dtype: Any
) -> nnx.Module:
    """The `MODELS` entry `arch` on its own encoder (built here from `rngs` if a name)."""
    name = encoder if isinstance(encoder, str) else _encoder_name(encoder)
    if name != arch:
        raise ValueError(
            f"Model {arch!r} is built on its own encoder: pass {arch!r}, got {name!r}."
        )
    encoder, _ = _encoder(encoder, frozen=frozen, rngs=rngs, dtype=dtype)
    return MODELS[arch].build(encoder, rngs=rngs, dtype=dtype)


def family_archs(family: str) -> dict[str, Any]:
    """arch name -> decoder of a family (`ARCHS` or `SMP_ARCHS`)."""
    return _lookup({PAPER1: ARCHS, SMP: SMP_ARCHS}, family, "model family")


def family_encoders(family: str) -> dict[str, Any]:
    """encoder name -> constructor of a family (`ENCODERS` or `SMP_ENCODERS`)."""
    return _lookup({PAPER1: ENCODERS, SMP: SMP_ENCODERS}, family, "model family")


def create_classifier(
    encoder: str | nnx.Module,
    *,
    num_classes: int = 2,
    frozen: bool = False,
    rngs: nnx.Rngs,
    dtype: Any = None,
) -> EncoderClassifier:
    """Builds the activation-map baseline: the encoder + GAP + a `num_classes` softmax head.

    Args:
      encoder: an encoder module from `create_encoder` or an encoder name (built randomly).
      num_classes: output logits (2: control, COVID-19, as the paper).
      frozen: freeze the encoder as `create_model` does (BatchNorm scale/offset stay trainable).

    Returns:
      An `EncoderClassifier`: `(B, H, W, 3)` -> `(B, num_classes)` float32 logits, in
      training mode.
    """
    encoder, encoder_name = _encoder(encoder, frozen=frozen, rngs=rngs, dtype=dtype)
    return EncoderClassifier(
        encoder, num_classes=num_classes, rngs=rngs, dtype=dtype, encoder_name=encoder_name
    )


class ParamCount(NamedTuple):
    """Parameter count in the Keras `model.summary()` sense."""

    trainable: int
    non_trainable: int  # frozen weights + BatchNorm running statistics

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable


def _size(state: nnx.State) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state))


def count_params(model: nnx.Module) -> ParamCount:
    """Counts trainable (`TRAINABLE`) and non-trainable (`FrozenParam` + `nnx.BatchStat`)
    scalars. Works on abstract models from `nnx.eval_shape` (no memory allocated)."""
    return ParamCount(
        trainable=_size(nnx.state(model, TRAINABLE)),
        non_trainable=_size(nnx.state(model, nnx.Any(FrozenParam, nnx.BatchStat))),
    )
