r"""Quickstart: U-Net DenseNet-121 on the synthetic CXR set, 64x64, a few minutes on a CPU.

    python scripts/train.py --config configs/quickstart.py --workdir runs/quickstart

No downloads: the synthetic set is generated on first use (into `config.data.data_dir`,
TFDS's default directory when None). A paper model (not a toy net) at a small input size;
the learning test (tests/test_training_learning.py) runs this config and checks the held-out
pixel F1.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.variant("unet", "densenet121")
    config.data.dataset = "synthetic_cxr"
    config.data.image_size = 64
    config.model.preprocessing = "unit"  # random init: no ImageNet statistics to match
    config.batch_size = 8
    config.num_epochs = 3  # 192 steps; held-out pixel F1 ~0.7 (0.59, 0.70, 0.71 measured)
    config.optim.lr = 3e-3  # random init learns far faster with a larger step than 1e-4
    # A few hundred steps are too few for the 0.99-momentum BatchNorm averages to catch
    # up with the weights; recalibrating them on 16 training batches before each
    # evaluation makes inference-mode results reflect what the weights learned.
    config.bn_recalibration_batches = 16
    config.data.synthetic.image_size = 64  # stored at the input size: no resizing
    config.data.synthetic.num_train = 480
    config.log_every_steps = 10
    config.checkpoint_every_steps = 0  # only at the end of each epoch
    return config
