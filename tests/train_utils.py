"""The test suite's one tiny segmentation model, and tiny training configs.

`TinySegmenter` is the stand-in for a real model wherever a test exercises the machinery
around a model (training steps and loop, evaluation, inference) rather than the model itself.
It keeps the contract of the real ones (an `encoder` submodule whose weights
`qatacov_jax.models.freeze` turns into `FrozenParam` except BatchNorm scale/offset,
BatchNorm everywhere, `(B, H, W, 3)` -> float32 logits `(B, H, W, 1)` for H, W multiples of
4), so that machinery is exercised exactly as with U-Net DenseNet-121 but compiles in a
second instead of a minute on CPU. `use_tiny_model` makes training and run-directory
loading build it from a config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qatacov_jax import models  # noqa: E402
from qatacov_jax.data.preprocessing import Preprocessing  # noqa: E402
from qatacov_jax.training import factory  # noqa: E402


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


def tiny_model(seed: int = 0, *, frozen: bool = False, dtype=None) -> TinySegmenter:
    """A `TinySegmenter` initialised from `seed`, in training mode (as `create_model`'s)."""
    return TinySegmenter(frozen=frozen, rngs=nnx.Rngs(seed), dtype=dtype)


def build_tiny_model(config: ml_collections.ConfigDict, *, seed: int, load_weights: bool = True):
    """Drop-in for `qatacov_jax.training.factory.build_model` (see `use_tiny_model`)."""
    return tiny_model(seed, frozen=bool(config.model.frozen)), Preprocessing.from_mode("unit")


def use_tiny_model(setattr_: Callable[[Any, str, Any], None] = setattr) -> list[str]:
    """Makes every `qatacov_jax` module that builds models from a config build the tiny one.

    `factory.build_model` is imported by name into its users (the training loop, run
    directory loading, ...), so each of them is patched. Pass `monkeypatch.setattr` (or a
    `pytest.MonkeyPatch.context()`'s) so the change is undone after the test; the default,
    plain `setattr`, is for subprocess scripts. Returns the patched modules' names.
    """
    import importlib
    import pkgutil

    import qatacov_jax.training

    for info in pkgutil.iter_modules(qatacov_jax.training.__path__, "qatacov_jax.training."):
        importlib.import_module(info.name)  # a user imported later would get the real one
    real = factory.build_model
    users = sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith("qatacov_jax") and getattr(module, "build_model", None) is real
    )
    assert {"qatacov_jax.training.loop", "qatacov_jax.training.rundir"} <= set(users), users
    for name in users:
        setattr_(sys.modules[name], "build_model", build_tiny_model)
    return users


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


def write_tiny_run(
    path: Path, *, image_size: int = 32, seed: int = 1, preprocessing: str = "unit"
) -> Path:
    """An untrained tiny run directory: config, preprocessing, a 'best' checkpoint.

    BatchNorm statistics and the head are randomised so that folding has something to fold
    and the probabilities spread over [0, 1] (decisions and masks are then worth comparing).
    """
    import jax.numpy as jnp
    import numpy as np

    from qatacov_jax.runtime import files
    from qatacov_jax.training import rundir
    from qatacov_jax.training.checkpoint import CheckpointStore

    config = tiny_config(str(path.parent / "tfds"))
    config.data.image_size = image_size
    path.mkdir(parents=True)
    rundir.check_or_write_config(path, config)
    files.write_json(
        path / rundir.PREPROCESSING_FILE, Preprocessing.from_mode(preprocessing).to_dict()
    )
    model = tiny_model(seed)
    rng = np.random.default_rng(seed)
    for _, m in model.iter_modules():
        if isinstance(m, nnx.BatchNorm):
            c = m.mean.get_value().shape
            m.mean.set_value(jnp.asarray(rng.normal(0, 0.2, c), jnp.float32))
            m.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32))
    model.head.kernel.set_value(model.head.kernel.get_value() * 8.0)
    store = CheckpointStore(path)
    store.save_best(1, nnx.state(model), {"pixel_f1": 0.5})
    store.wait()
    store.close()
    return path
