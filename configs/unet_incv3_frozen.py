r"""U-Net with a Inception-v3 (ImageNet) encoder, frozen encoder (BatchNorm scale/offset trainable); paper settings.

    python scripts/train.py --config configs/unet_incv3_frozen.py --workdir runs/unet_incv3_frozen \
        --config.model.encoder_weights=weights/inceptionv3 --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unet_incv3_frozen.py --workdir runs/unet_incv3_frozen`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unet", "incv3", frozen=True)
