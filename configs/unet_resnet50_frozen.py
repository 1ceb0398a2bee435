r"""U-Net with a ResNet-50 (classification_models, ImageNet) encoder, frozen encoder (BatchNorm scale/offset trainable); paper settings.

    python scripts/train.py --config configs/unet_resnet50_frozen.py --workdir runs/unet_resnet50_frozen \
        --config.model.encoder_weights=weights/resnet50 --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unet_resnet50_frozen.py --workdir runs/unet_resnet50_frozen`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unet", "resnet50", frozen=True)
