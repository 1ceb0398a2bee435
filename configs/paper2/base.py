r"""Paper 2 (Tahir et al., COVID-QU-Ex): the one paper-2 path of this project. smp models, a
2-class softmax with cross-entropy, 256x256 inputs, and paper 2's protocol: the shipped Test
folder (the doctor-verified 20%) tests every fold, five folds over Train + Val validate.

    python scripts/cross_validate.py --config configs/paper2/infection_unetpp_densenet121.py \
        --workdir runs/p2_inf_unetpp_dn121 --config.data.manual_dir="/data/COVID-QU-Ex" \
        --config.model.encoder_weights=weights/smp_densenet121

(`scripts/train.py` with `--config.fold=k` trains one round.) File names:
`<task>_<arch>_<encoder>.py`, task `infection` (the infection set's masks) | `lung` (the lung
set's), arch `unet` | `unetpp` | `fpn` (smp's Unet, UnetPlusPlus, FPN), encoder `resnet18` |
`resnet50` | `densenet121` | `densenet161` | `inceptionv4` (torchvision / pretrainedmodels
graphs as smp builds them). `infection_fpn_densenet161_cascaded.py` is the cascaded scheme
paper 2 compares with the parallel one (`cascaded_variant`).

What paper 2 says and what these configs do where it says nothing (docs/method.md#protocols):
- "PyTorch" is all the text says of the framework; that the authors built their U-Net,
  U-Net++ and FPN with segmentation_models.pytorch (smp) is our inference from the names,
  encoders and the softmax head it lists, so the models are smp 0.6's graphs.
- FPN: "upsampled to the same size, concatenated, convolved with a 3x3 convolutional
  filter": `decoder_merge_policy="cat"` (smp's concatenating FPN) follows the text's
  concatenation; the head stays smp's 1x1 conv (the 3x3 convs are those of each level's
  segmentation block before the merge). smp's default (`add`) is `--config.model.
  decoder_merge_policy=add`.
- Optimiser: the text names Adam and loses its numbers in our copy: learning rate 1e-4,
  batch 32, 50 epochs are paper 1's (the same group's); epsilon is PyTorch's Adam default.
- Augmentation: paper 2 mentions none, so none (`augment="none"`, no class balancing).
Our focal + dice loss stays available: `--config.loss.name=focal_dice`.
See docs/original_models.md#paper-2-models-smp.
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
    # FPN only: the pyramid levels concatenated, as paper 2's text describes (smp's "cat").
    config.model.decoder_merge_policy = (
        "cat" if arch == "fpn" else ml_collections.config_dict.placeholder(str)
    )
    config.model.cascade = cascade_block()
    config.loss.name = "cross_entropy"  # or "focal_dice" (paper 1's hybrid loss)
    config.optim.eps = 1e-8  # PyTorch's Adam default (paper 2 trained with PyTorch)
    config.data.dataset = f"covid_qu_ex/{task}"
    config.data.target = task
    config.data.image_size = 256
    # Paper 2 mentions no augmentation and no class balancing: trained on the images as they
    # are (said explicitly: with balance=False, augment="copies" augments nothing either).
    config.data.balance = False
    config.data.augment = "none"
    # Paper 2's protocol (data.protocols): Test = the shipped Test folder for every round;
    # 5 folds over Train + Val, the round's held-out fold (20% of the training data) picks
    # the checkpoint. `eval_split` 'test' is the one final evaluation of each round.
    config.data.protocol = "paper2"
    config.data.validation_fraction = 0.0  # the held-out fold is the validation set
    config.fold = 0
    config.eval_split = "test"
    return config


def cascade_block() -> ml_collections.ConfigDict:
    """`config.model.cascade` (`training.cascade`): scheme `parallel` (paper 2's choice: the
    infection model reads the plain X-ray) or `cascaded` (it reads the X-ray masked by the
    lung model of the run directory `lung_run`); `lung_model`, `lung_image_size` and
    `lung_preprocessing` are filled from that run when training starts, so a trained
    cascaded run loads without the lung run."""
    return ml_collections.ConfigDict(
        {
            "scheme": "parallel",
            "lung_run": ml_collections.config_dict.placeholder(str),
            "threshold": 0.5,
            "lung_model": ml_collections.config_dict.placeholder(dict),
            "lung_image_size": ml_collections.config_dict.placeholder(int),
            "lung_preprocessing": ml_collections.config_dict.placeholder(dict),
        }
    )


def cascaded_variant(task: str, arch: str, encoder: str) -> ml_collections.ConfigDict:
    """`variant` in paper 2's cascaded scheme: the lung model of `config.model.cascade.
    lung_run` segments the lungs first and the infection model reads the X-ray with
    everything outside them set to black."""
    config = variant(task, arch, encoder)
    config.model.cascade.scheme = "cascaded"  # set --config.model.cascade.lung_run=...
    return config
