r"""Lung segmentation with paper 1's model family: Keras-graph FPN DenseNet-121, focal + dice,
on COVID-QU-Ex's lung masks as shipped (Train / Val / Test), 256x256.

    python scripts/train.py --config configs/lung_fpn_densenet121.py --workdir runs/lung_fpn \
        --config.model.encoder_weights=weights/densenet121 \
        --config.data.manual_dir="/data/COVID-QU-Ex"

Not paper 2's experiment: that is configs/paper2/ (smp models, cross-entropy, paper 2's
protocol). This one is for the severity pipeline built on paper 1's stack: a lung model
with the same encoders, ported Keras / CheXNet weights and hybrid loss as the paper-1
infection models, trained once on the shipped splits (protocol `official`: Val picks the
checkpoint, Test is read once). Every image has a lung mask, so the target is `lung` and
detection metrics in the logs are not meaningful for this task (pixel F1 = DSC is).
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
    config.data.protocol = "official"
    config.fold = None
    return config
