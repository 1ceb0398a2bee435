r"""Infection segmentation with paper 1's model family on COVID-QU-Ex: Keras-graph FPN
DenseNet-121, focal + dice, the shipped Train / Val / Test (protocol `official`), 256x256.

    python scripts/train.py --config configs/fpn_densenet121.py --workdir runs/fpn_densenet121 \
        --config.model.encoder_weights=weights/densenet121 \
        --config.data.manual_dir="/data/COVID-QU-Ex"

Not paper 2's experiment: that is configs/paper2/ (smp models, cross-entropy, paper 2's
protocol). This one applies paper 1's recipe (its Keras model family, hybrid loss, COVID-19
oversampling with augmented copies) to paper 2's infection set, as the infection partner of
configs/lung_fpn_densenet121.py; Val picks the checkpoint and Test is read once.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.variant("fpn", "densenet121")
    config.data.dataset = "covid_qu_ex/infection"
    config.data.target = "infection"
    config.data.image_size = 256
    config.data.protocol = "official"
    config.fold = None
    return config
