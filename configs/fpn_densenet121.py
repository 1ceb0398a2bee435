r"""FPN with a DenseNet-121 encoder for infection segmentation on COVID-QU-Ex (Tahir et al.).

    python scripts/train.py --config configs/fpn_densenet121.py --workdir runs/fpn_densenet121 \
        --config.model.encoder_weights=weights/densenet121 \
        --config.data.manual_dir="/data/Infection Segmentation Data"

256x256 input as in the COVID-QU-Ex paper, its predefined Train/Val/Test splits (`fold=None`;
validation every epoch on Val). The loss stays the hybrid focal + dice of this project
(that paper used cross-entropy: `--config.loss.gamma=0 --config.loss.alpha=0.5` gives a
balanced BCE, though still with dice added).
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.variant("fpn", "densenet121")
    config.data.dataset = "covid_qu_ex/infection"
    config.data.target = "infection"
    config.data.image_size = 256
    config.fold = None
    return config
