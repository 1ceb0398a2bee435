"""The paper's segmentation models in Flax NNX (NHWC, one-logit-per-pixel output).

Public API:
  create_encoder(name, *, rngs, dtype=None)            -> encoder module
  create_model(arch, encoder, *, family="paper1", classes=1, activation=None, frozen=False,
               rngs, dtype=None) -> SegmentationModel | SmpSegmentationModel (logits)
  create_classifier(encoder, *, frozen=False, rngs, dtype=None) -> EncoderClassifier (logits)
  ENCODERS, ARCHS                                      -> paper-1 registries (name -> constructor)
  SMP_ENCODERS, SMP_ARCHS, FAMILIES                    -> the smp family's registries (paper 2)
  MODELS, register_model(name, ModelSpec)              -> whole models outside the paper's grid,
                                                          selected by arch = encoder = name;
                                                          `tiny` (`models.tiny`) for tests
  foreground_probability(logits)                       -> (B, H, W, 1) probability of a model's
                                                          output (sigmoid, or softmax class 1)
  CLASSIFIER_ARCH                                      -> `config.model.arch` of classifiers
  TRAINABLE                                            -> the one "trainable" filter (nnx.Param)
  FrozenParam                                          -> frozen encoder weights (not a Param)
  count_params(model) -> ParamCount(trainable, non_trainable)
"""

from qatacov_jax.models.classifier import EncoderClassifier
from qatacov_jax.models.layers import TRAINABLE, FrozenParam, freeze
from qatacov_jax.models.output import foreground_probability
from qatacov_jax.models.registry import (
    ARCHS,
    CLASSIFIER_ARCH,
    ENCODER_ARCHITECTURES,
    ENCODER_SPECS,
    ENCODERS,
    FAMILIES,
    MODELS,
    PAPER1,
    SMP,
    EncoderSpec,
    ModelSpec,
    ParamCount,
    count_params,
    create_classifier,
    create_encoder,
    create_model,
    encoder_preprocessing,
    family_archs,
    family_encoders,
    register_model,
)
from qatacov_jax.models.segmentation import SegmentationModel
from qatacov_jax.models.smp import (
    SMP_ARCHS,
    SMP_ENCODERS,
    SmpSegmentationModel,
    abstract_smp_model,
    create_smp_model,
)

__all__ = [
    "ARCHS",
    "CLASSIFIER_ARCH",
    "ENCODERS",
    "ENCODER_ARCHITECTURES",
    "ENCODER_SPECS",
    "EncoderClassifier",
    "FAMILIES",
    "MODELS",
    "ModelSpec",
    "PAPER1",
    "SMP",
    "SMP_ARCHS",
    "SMP_ENCODERS",
    "SmpSegmentationModel",
    "abstract_smp_model",
    "create_smp_model",
    "family_archs",
    "family_encoders",
    "foreground_probability",
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
    "register_model",
]
