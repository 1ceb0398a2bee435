r"""Activation-map baseline: ResNet-50 as a 2-class COVID-19 classifier (paper 1).

    python scripts/train.py --config configs/classifier_resnet50.py --workdir runs/cls_resnet50 \
        --config.model.encoder_weights=weights/resnet50 --config.data.manual_dir=/data

GAP + 2-neuron softmax head, categorical cross-entropy, Adam 1e-5, 10 epochs; folds and
class balancing as the segmentation runs. Its Grad-CAM maps are compared with the infection
maps by scripts/compare_localization.py.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.classifier_variant("resnet50")
