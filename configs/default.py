r"""Paper defaults (Degerli et al.): U-Net DenseNet-121, 224x224, batch 32, 50 epochs, Adam 1e-4.

    python scripts/train.py --config configs/default.py --workdir runs/unet_densenet121 \
        --config.data.manual_dir=/data/QaTa-COV19 --config.data.control_dirs='("/data/rsna",)'

Every field can be overridden on the command line, e.g. `--config.optim.lr=3e-4`,
`--config.fold=2`, `--config.model.dtype=bfloat16`, `--config.batch_size=64`.

Config file naming (one file per paper configuration, each ~15 lines importing this one):
`<decoder>_<encoder>[_frozen].py` with decoder `unet` | `unetpp` (UNet++) | `dla` (DLA,
"UNet+") | `fpn`, encoder `densenet121` | `chexnet` | `incv3` (Inception-v3) | `resnet50`,
and `_frozen` for a frozen encoder (segmentation_models semantics: encoder BatchNorm
scale/offset stay trainable). `lung_*` configs segment lungs (COVID-QU-Ex, 256x256).
`quickstart.py` trains a small model on the synthetic set in minutes on a CPU.
`classifier_<encoder>.py` are the activation-map baseline (paper 1: the encoders as 2-class
COVID-19 classifiers, `classifier_variant`); `classifier_quickstart.py` is its small one.
"""

from __future__ import annotations

import ml_collections

# Config-file encoder names -> model registry names.
ENCODER_NAMES = {
    "densenet121": "densenet121",
    "chexnet": "chexnet",
    "incv3": "inceptionv3",
    "resnet50": "resnet50",
}


def get_config() -> ml_collections.ConfigDict:
    from qatacov_jax import data

    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.arch = "unet"  # unet | unetpp | dla | fpn
    config.model.encoder = "densenet121"  # densenet121 | chexnet | inceptionv3 | resnet50
    config.model.frozen = False
    # Directory written by scripts/port_weights.py (ImageNet / CheXNet encoder weights);
    # None = random initialisation. Its manifest fixes the input preprocessing.
    config.model.encoder_weights = ml_collections.config_dict.placeholder(str)
    # Preprocessing mode when there are no encoder weights (None = the encoder's standard).
    config.model.preprocessing = ml_collections.config_dict.placeholder(str)
    config.model.dtype = "float32"  # compute dtype; "bfloat16" keeps fp32 params and loss

    config.data = data.default_config()
    config.data.dataset = "qatacov19/v1"
    config.data.image_size = 224
    # Paper 1 trains 50 epochs with no validation set and evaluates the final model: no
    # split picks checkpoints/best in a CV round (> 0 carves a validation split from the
    # training folds; docs/method.md#model-selection).
    config.data.validation_fraction = 0.0

    # Hybrid loss: focal (alpha, gamma) + dice, summed (qatacov_jax/training/losses.py).
    config.loss = ml_collections.ConfigDict()
    config.loss.alpha = 0.25
    config.loss.gamma = 2.0
    config.loss.dice_reduction = "batch"  # "batch" (segmentation_models) or "image" (eq. 7)
    config.loss.smooth = 1e-5

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adam"
    config.optim.lr = 1e-4
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-7  # Keras' Adam epsilon (the authors' framework)
    config.optim.weight_decay = 0.0  # adamw only
    config.optim.grad_clip_norm = ml_collections.config_dict.placeholder(float)
    config.optim.schedule = "constant"  # constant | cosine
    config.optim.decay_steps = ml_collections.config_dict.placeholder(int)

    config.batch_size = 32  # global, over all devices and hosts
    config.num_epochs = 50
    # Cap on steps per epoch (None = one pass over the balanced training set).
    config.steps_per_epoch = ml_collections.config_dict.placeholder(int)
    config.fold = 0  # CV round in [0, data.num_folds); None = the dataset's own splits
    # Split of the final evaluation in results.json: the held-out fold in CV ("eval").
    config.eval_split = "eval"
    # Metric that picks checkpoints/best on the selection split (validation, never test).
    config.best_metric = "pixel_f1"
    config.seed = 0
    # Before each evaluation, replace BatchNorm running averages by the mean statistics of
    # this many training batches under the current weights ("precise BN"; 0 = off, as the
    # paper). Only short runs need it: the 0.99-momentum averages lag the weights for the
    # first few hundred steps.
    config.bn_recalibration_batches = 0

    config.log_every_steps = 50
    config.checkpoint_every_steps = 500  # plus one at the end of every epoch
    config.keep_checkpoints = 2
    config.num_devices = ml_collections.config_dict.placeholder(int)  # None = all

    # Multi-host: set initialize=True on every host (or QATACOV_DISTRIBUTED=1); leave the
    # rest None where the cluster is auto-detected (SLURM, TPU, Kubernetes).
    config.distributed = ml_collections.ConfigDict()
    config.distributed.initialize = False
    config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
    config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
    config.distributed.process_id = ml_collections.config_dict.placeholder(int)
    return config


def variant(arch: str, encoder: str, frozen: bool = False) -> ml_collections.ConfigDict:
    """The default config with another decoder/encoder (config-file names, see above)."""
    if encoder not in ENCODER_NAMES:
        raise ValueError(f"Unknown encoder {encoder!r}; valid: {sorted(ENCODER_NAMES)}.")
    config = get_config()
    config.model.arch = arch
    config.model.encoder = ENCODER_NAMES[encoder]
    config.model.frozen = frozen
    return config


def classifier_variant(encoder: str, frozen: bool = False) -> ml_collections.ConfigDict:
    """The activation-map baseline of paper 1 ("Infection vs activation maps"): the encoder
    + global average pooling + a 2-class softmax head, categorical cross-entropy, Adam 1e-5,
    10 epochs; data, folds, balancing and batch size as the segmentation runs."""
    config = variant("classifier", encoder, frozen)
    config.loss = ml_collections.ConfigDict({"name": "categorical_crossentropy"})
    config.optim.lr = 1e-5
    config.num_epochs = 10
    # A classifier predicts no pixels: checkpoints/best is picked on image-level detection.
    config.best_metric = "detection_f1"
    return config
