r"""UNet++ with a Inception-v3 (ImageNet) encoder, encoder fine-tuned; paper settings.

    python scripts/train.py --config configs/unetpp_incv3.py --workdir runs/unetpp_incv3 \
        --config.model.encoder_weights=weights/inceptionv3 --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unetpp_incv3.py --workdir runs/unetpp_incv3`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unetpp", "incv3", frozen=False)
