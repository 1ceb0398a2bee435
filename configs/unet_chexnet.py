r"""U-Net with a CheXNet (DenseNet-121 trained on ChestX-ray14) encoder, encoder fine-tuned; paper settings.

    python scripts/train.py --config configs/unet_chexnet.py --workdir runs/unet_chexnet \
        --config.model.encoder_weights=weights/chexnet --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unet_chexnet.py --workdir runs/unet_chexnet`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unet", "chexnet", frozen=False)
