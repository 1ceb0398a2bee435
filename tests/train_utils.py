"""The test suite's tiny model and tiny training configs.

The tiny model (`qatacov_jax.models.tiny`, registered as `tiny`) stands in for a real model
wherever a test exercises the machinery around a model (training steps and loop,
evaluation, inference, export, the web app) rather than the model itself. `tiny_config`
selects it (`model.arch = model.encoder = "tiny"`), so training builds it and run
directories load as it from their config, in this process or a subprocess alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_collections
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qatacov_jax import models  # noqa: E402
from qatacov_jax.data.preprocessing import Preprocessing  # noqa: E402
from qatacov_jax.models.tiny import NAME as TINY  # noqa: E402
from qatacov_jax.models.tiny import TinySegmenter  # noqa: E402


def tiny_model(seed: int = 0, *, frozen: bool = False, dtype=None) -> TinySegmenter:
    """The tiny model initialised from `seed`, in training mode (as `create_model`'s), as
    `training.factory.build_model` builds it from `tiny_config` with `seed`."""
    return models.create_model(TINY, TINY, frozen=frozen, rngs=nnx.Rngs(seed), dtype=dtype)


def tiny_config(data_dir: str, *, num_devices: int | None = 1) -> ml_collections.ConfigDict:
    """A 32x32 synthetic run of the tiny model: 48 training images (balanced to more),
    batch 8, 2 epochs."""
    from configs import default

    config = default.get_config()
    config.data.dataset = "synthetic_cxr"
    config.data.data_dir = data_dir
    config.data.image_size = 32
    config.data.synthetic.image_size = 32
    config.data.synthetic.num_train = 48
    config.data.synthetic.num_test = 8
    config.data.num_threads = 1
    config.model.arch = TINY
    config.model.encoder = TINY
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


def write_tiny_export_runs(base: Path, *, preprocessing: str = "torch") -> dict[str, Path]:
    """An infection run (32x32) and a lung run of another input size (64x64) under `base`:
    what the export tests export together (one graph, two inputs of different sizes)."""
    return {
        "infection": write_tiny_run(
            base / "infection", image_size=32, seed=1, preprocessing=preprocessing
        ),
        "lung": write_tiny_run(base / "lung", image_size=64, seed=2, preprocessing=preprocessing),
    }
