"""The paper's segmentation models in Flax NNX (NHWC, one-logit-per-pixel output).

Public API:
  create_encoder(name, *, rngs, dtype=None)            -> encoder module
  create_model(arch, encoder, *, frozen=False, rngs, dtype=None) -> SegmentationModel (logits)
  create_classifier(encoder, *, frozen=False, rngs, dtype=None) -> EncoderClassifier (logits)
  ENCODERS, ARCHS                                      -> registries (name -> constructor)
  CLASSIFIER_ARCH                                      -> `config.model.arch` of classifiers
  TRAINABLE                                            -> the one "trainable" filter (nnx.Param)
  FrozenParam                                          -> frozen encoder weights (not a Param)
  count_params(model) -> ParamCount(trainable, non_trainable)
"""

from qatacov_jax.models.classifier import EncoderClassifier
from qatacov_jax.models.layers import TRAINABLE, FrozenParam, freeze
from qatacov_jax.models.registry import (
    ARCHS,
    CLASSIFIER_ARCH,
    ENCODER_ARCHITECTURES,
    ENCODER_SPECS,
    ENCODERS,
    EncoderSpec,
    ParamCount,
    count_params,
    create_classifier,
    create_encoder,
    create_model,
    encoder_preprocessing,
)
from qatacov_jax.models.segmentation import SegmentationModel

__all__ = [
    "ARCHS",
    "CLASSIFIER_ARCH",
    "ENCODERS",
    "ENCODER_ARCHITECTURES",
    "ENCODER_SPECS",
    "EncoderClassifier",
    "EncoderSpec",
    "TRAINABLE",
    "FrozenParam",
    "ParamCount",
    "SegmentationModel",
    "count_params",
    "create_classifier",
    "create_encoder",
    "create_model",
    "encoder_preprocessing",
    "freeze",
]
