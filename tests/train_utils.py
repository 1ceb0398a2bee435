"""Shared pieces of the training tests: a tiny segmentation model and tiny configs.

The tiny model keeps the contract of the real ones (an `encoder` submodule whose weights
`qatacov_jax.models.freeze` turns into `FrozenParam` except BatchNorm scale/offset,
BatchNorm everywhere, logits `(B, H, W, 1)`), so the training machinery is exercised exactly
as with U-Net DenseNet-121 but compiles in a second instead of a minute on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import ml_collections
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qatacov_jax import models  # noqa: E402
from qatacov_jax.preprocessing import Preprocessing  # noqa: E402


class TinyEncoder(nnx.Module):
    """Two strided conv-BN-ReLU stages: (B, H, W, 3) -> [(B, H/2, W/2, 8), (B, H/4, W/4, 16)]."""

    def __init__(self, *, rngs: nnx.Rngs, dtype=None):
        self.conv1 = nnx.Conv(3, 8, (3, 3), strides=2, use_bias=False, rngs=rngs, dtype=dtype)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, rngs=rngs, dtype=dtype)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, use_bias=False, rngs=rngs, dtype=dtype)
        self.bn2 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs, dtype=dtype)
        self.out_channels = (8, 16)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        f1 = nnx.relu(self.bn1(self.conv1(x)))
        f2 = nnx.relu(self.bn2(self.conv2(f1)))
        return [f1, f2]


class TinySegmenter(nnx.Module):
    """Encoder + one upsampling decoder block with a skip + 3x3 logit head."""

    def __init__(self, *, frozen: bool = False, rngs: nnx.Rngs, dtype=None):
        self.encoder = TinyEncoder(rngs=rngs, dtype=dtype)
        if frozen:
            models.freeze(self.encoder)
        self.dec_conv = nnx.Conv(24, 8, (3, 3), use_bias=False, rngs=rngs, dtype=dtype)
        self.dec_bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs, dtype=dtype)
        self.head = nnx.Conv(8, 1, (3, 3), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        f1, f2 = self.encoder(x)
        up = jax.image.resize(f2, f1.shape[:-1] + (f2.shape[-1],), "nearest")
        y = nnx.relu(self.dec_bn(self.dec_conv(jax.numpy.concatenate([up, f1], -1))))
        y = jax.image.resize(y, x.shape[:-1] + (y.shape[-1],), "bilinear")
        return self.head(y).astype(jax.numpy.float32)


def build_tiny_model(config: ml_collections.ConfigDict, *, seed: int, load_weights: bool = True):
    """Drop-in for `qatacov_jax.train.build_model` (tests monkeypatch it in)."""
    model = TinySegmenter(frozen=bool(config.model.frozen), rngs=nnx.Rngs(seed))
    return model, Preprocessing.from_mode("unit")


def tiny_config(data_dir: str, *, num_devices: int | None = 1) -> ml_collections.ConfigDict:
    """A 32x32 synthetic run: 48 training images (balanced to more), batch 8, 2 epochs."""
    from configs import default

    config = default.get_config()
    config.data.dataset = "synthetic_cxr"
    config.data.data_dir = data_dir
    config.data.image_size = 32
    config.data.synthetic.image_size = 32
    config.data.synthetic.num_train = 48
    config.data.synthetic.num_test = 8
    config.data.num_threads = 1
    config.model.preprocessing = "unit"
    config.batch_size = 8
    config.num_epochs = 2
    config.steps_per_epoch = 4
    config.optim.lr = 1e-2
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.bn_recalibration_batches = 2  # exercised in every loop test, resume included
    config.num_devices = num_devices
    return config
