r"""DLA (UNet+) with a CheXNet (DenseNet-121 trained on ChestX-ray14) encoder, encoder fine-tuned; paper settings.

    python scripts/train.py --config configs/dla_chexnet.py --workdir runs/dla_chexnet \
        --config.model.encoder_weights=weights/chexnet --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/dla_chexnet.py --workdir runs/dla_chexnet`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("dla", "chexnet", frozen=False)
