r"""UNet++ with a ResNet-50 (classification_models, ImageNet) encoder, encoder fine-tuned; paper settings.

    python scripts/train.py --config configs/unetpp_resnet50.py --workdir runs/unetpp_resnet50 \
        --config.model.encoder_weights=weights/resnet50 --config.data.manual_dir=/data/QaTa-COV19

5-fold CV: `python scripts/cross_validate.py --config configs/unetpp_resnet50.py --workdir runs/unetpp_resnet50`.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.variant("unetpp", "resnet50", frozen=False)
