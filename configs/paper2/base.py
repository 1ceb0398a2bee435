r"""Paper 2 (Tahir et al., COVID-QU-Ex) setup for the smp family: 2-class softmax output,
cross-entropy loss, 256x256 inputs, 5-fold cross-validation with a 20% validation split.

    python scripts/train.py --config configs/paper2/infection_unetpp_densenet121.py \
        --workdir runs/p2_inf_unetpp_dn121 --config.data.manual_dir="/data/COVID-QU-Ex" \
        --config.model.encoder_weights=weights/smp_densenet121

File names: `<task>_<arch>_<encoder>.py`, task `infection` (infection masks) | `lung` (lung
masks), arch `unet` | `unetpp` | `fpn` (smp's Unet, UnetPlusPlus, FPN), encoder `resnet18` |
`resnet50` | `densenet121` | `densenet161` | `inceptionv4` (torchvision / pretrainedmodels
graphs as smp builds them). Our focal + dice loss stays available:
`--config.loss.name=focal_dice`. See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

import ml_collections

from configs import default

TASKS = ("infection", "lung")
ARCHS = ("unet", "unetpp", "fpn")
ENCODERS = ("resnet18", "resnet50", "densenet121", "densenet161", "inceptionv4")


def variant(task: str, arch: str, encoder: str) -> ml_collections.ConfigDict:
    """The paper-2 config of one (task, decoder, encoder) of its grid."""
    for name, value, valid in (
        ("task", task, TASKS),
        ("arch", arch, ARCHS),
        ("encoder", encoder, ENCODERS),
    ):
        if value not in valid:
            raise ValueError(f"Unknown paper-2 {name} {value!r}; valid: {list(valid)}.")
    config = default.get_config()
    config.model.family = "smp"
    config.model.arch = arch
    config.model.encoder = encoder
    config.model.classes = 2  # background, foreground under a softmax (paper 2)
    config.model.activation = ml_collections.config_dict.placeholder(str)  # None = logits
    config.loss.name = "cross_entropy"  # or "focal_dice" (paper 1's hybrid loss)
    config.data.dataset = f"covid_qu_ex/{task}"
    config.data.target = task
    config.data.image_size = 256
    config.data.balance = False  # paper 2 trains on the dataset's own class mix
    # Paper 2's protocol: 5-fold cross-validation (80% train / 20% test per round), 20% of
    # each round's training part held out as the validation set that picks the checkpoint
    # (docs/method.md#model-selection). `scripts/cross_validate.py` runs all five rounds.
    config.fold = 0
    config.data.validation_fraction = 0.2
    return config
