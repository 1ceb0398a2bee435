r"""Lung segmentation: FPN DenseNet-121 on COVID-QU-Ex lung masks, 256x256 (Tahir et al.'s best).

    python scripts/train.py --config configs/lung_fpn_densenet121.py --workdir runs/lung_fpn \
        --config.model.encoder_weights=weights/densenet121 \
        --config.data.manual_dir="/data/Lung Segmentation Data"

Predefined Train/Val/Test splits (`fold=None`); every image has a lung mask, so the target
is `lung` and detection metrics in the logs are not meaningful for this task (pixel F1 =
DSC is). The severity pipeline pairs this model with an infection model.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.variant("fpn", "densenet121")
    config.data.dataset = "covid_qu_ex/lung"
    config.data.target = "lung"
    config.data.image_size = 256
    config.data.balance = False  # lungs are segmented on every class alike
    config.fold = None
    return config
