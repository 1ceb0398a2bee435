r"""Paper 1's Group-II experiment: U-Net DenseNet-121 on QaTa-COV19 v1 COVID-19 images against
ChestX-ray14 (its official train/test lists) plus bacterial and viral pneumonia; no CV.

    python scripts/train.py --config configs/group2_unet_densenet121.py --workdir runs/group2 \
        --config.model.encoder_weights=weights/densenet121 --config.data.manual_dir=/data \
        --config.data.group2.chestxray14_dir=/data/ChestX-ray14/images \
        --config.data.group2.train_list=/data/ChestX-ray14/train_val_list.txt \
        --config.data.group2.test_list=/data/ChestX-ray14/test_list.txt \
        --config.data.group2.bacterial_dirs='("/data/pneumonia/bacteria",)' \
        --config.data.group2.viral_dirs='("/data/pneumonia/virus",)'
    python scripts/evaluate.py runs/group2 --split test

Per epoch, COVID-19 is augmented up to 10,000 images, bacterial and viral pneumonia up to
5,000 each, and ChestX-ray14 is used as it is (paper 1, Table 5; docs/datasets.md#group-ii).
The final model is evaluated (no validation set, as Group-I).
"""

from __future__ import annotations

import ml_collections

from configs import default

# Paper 1, Table 5: training images per epoch after augmentation (ChestX-ray14: none).
GROUP2_TARGETS = {"covid19": 10_000, "bacterial_pneumonia": 5_000, "viral_pneumonia": 5_000}


def get_config() -> ml_collections.ConfigDict:
    config = default.variant("unet", "densenet121", frozen=False)
    config.data.dataset = "qatacov19/group2"
    config.data.control_group = "group2"
    config.data.class_targets = ml_collections.ConfigDict(GROUP2_TARGETS)
    config.data.val_fraction = 0.0  # train on the whole official train list
    config.fold = None  # ChestX-ray14's predefined split: no cross-validation
    config.eval_split = "test"
    return config
