r"""UNet++ with a DenseNet-121 (ImageNet) encoder, encoder fine-tuned; paper settings.

    python scripts/train.py --config configs/unetpp_densenet121.py --workdir runs/unetpp_densenet121 \
        --config.model.encoder_weights=weights/densenet121 --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unetpp_densenet121.py --workdir runs/unetpp_densenet121`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unetpp", "densenet121", frozen=False)
