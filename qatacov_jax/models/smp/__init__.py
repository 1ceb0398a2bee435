"""The second model family: segmentation_models.pytorch 0.6's Unet, UnetPlusPlus and FPN on
ResNet-18/50, DenseNet-121/161 and Inception-v4, graph for graph and name for name (paper 2,
COVID-QU-Ex). Build one with `models.create_model(arch, encoder, family="smp", classes=2)`.
See docs/original_models.md#paper-2-models-smp.
"""

from qatacov_jax.models.smp.model import (
    ACTIVATIONS,
    FAMILY,
    SMP_ARCHS,
    SMP_ENCODERS,
    SMP_PREPROCESSING,
    SmpSegmentationModel,
    abstract_smp_model,
    create_smp_model,
)

__all__ = [
    "ACTIVATIONS",
    "FAMILY",
    "SMP_ARCHS",
    "SMP_ENCODERS",
    "SMP_PREPROCESSING",
    "SmpSegmentationModel",
    "abstract_smp_model",
    "create_smp_model",
]
