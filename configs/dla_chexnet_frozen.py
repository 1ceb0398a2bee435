r"""DLA (UNet+) with a CheXNet (DenseNet-121 trained on ChestX-ray14) encoder, frozen encoder (BatchNorm scale/offset trainable); paper settings.

    python scripts/train.py --config configs/dla_chexnet_frozen.py --workdir runs/dla_chexnet_frozen \
        --config.model.encoder_weights=weights/chexnet --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/dla_chexnet_frozen.py --workdir runs/dla_chexnet_frozen`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("dla", "chexnet", frozen=True)
