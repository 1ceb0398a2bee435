r"""UNet++ with a DenseNet-121 (ImageNet) encoder, frozen encoder (BatchNorm scale/offset trainable); paper settings.

    python scripts/train.py --config configs/unetpp_densenet121_frozen.py --workdir runs/unetpp_densenet121_frozen \
        --config.model.encoder_weights=weights/densenet121 --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unetpp_densenet121_frozen.py --workdir runs/unetpp_densenet121_frozen`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unetpp", "densenet121", frozen=True)
