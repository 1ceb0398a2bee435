"""Run directories: their layout, the configuration guard, and loading a trained model.

Layout of a run directory (`--workdir`):

    config.json           the configuration the run was started with (never rewritten)
    preprocessing.json    the input preprocessing the model was trained with
    splits.json           the ids of its training, validation and test images, their
                          classes, the dataset version and a checksum (`training.splits`)
    checkpoints/latest/   periodic checkpoints for resuming: model + optimizer state, the
                          data iterator's position and the loop's bookkeeping (a few kept)
    checkpoints/best/     the model state with the best validation metric so far (one kept)
    results.json          final held-out metrics + the effective configuration
    tensorboard event files (clu metric writers)

Resuming: starting a run in a directory that already holds checkpoints continues from the
latest one. A directory that belongs to a *different* configuration is refused (see
`check_or_write_config`); fields that may legitimately change between a run and its
resumption (`RESUMABLE_FIELDS`: more epochs, logging/checkpoint cadence, device count,
data location, multi-host settings) are ignored in that comparison.

Nothing is written before the configuration is known to be usable (`validate_config`, then
the data and the model in `training.loop`), so a refused start never leaves a `config.json`
that would make the corrected command be refused in turn (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx, traverse_util

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.runtime import files
from qatacov_jax.training import checkpoint
from qatacov_jax.training.factory import build_model

# The names' one home is `run_files` (light); re-exported here, where runs are read.
from qatacov_jax.training.run_files import CHECKPOINT_CHOICES as CHECKPOINT_CHOICES
from qatacov_jax.training.run_files import CHECKPOINT_DIR as CHECKPOINT_DIR
from qatacov_jax.training.run_files import CONFIG_FILE as CONFIG_FILE
from qatacov_jax.training.run_files import PREPROCESSING_FILE as PREPROCESSING_FILE
from qatacov_jax.training.run_files import RESULTS_FILE as RESULTS_FILE

# Dotted config paths (prefixes) that may differ between a run and its resumption: none of
# them changes what a training step computes. `num_epochs` may grow to extend a run;
# `num_devices` may change because the global batch (and so the maths) stays the same.
RESUMABLE_FIELDS = (
    "num_epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "num_devices",
    "distributed",
    "data.data_dir",
    # Where the raw download lies (a moved or re-mounted copy of the same data).
    "data.manual_dir",
    "data.num_workers",
    "data.prefetch",
    "data.worker_buffer_size",
    # Where the cascade's lung run lies: its model is recorded (model.cascade.lung_model)
    # and its weights are in the run's checkpoints from the first one on.
    "model.cascade.lung_run",
)


# Fields added to the configs after runs were made, with the value that means what their
# absence meant: a stored config without the field equals one holding this value, so runs
# started before the field existed still resume.
LATER_DEFAULTS = {"data.protocol": "folds"}


class RunDirMismatchError(ValueError):
    """The workdir holds a run of a different configuration."""


class ConfigValueError(ValueError):
    """A config value that cannot make a sensible run; the message names `config.<field>`."""


def _bad(field: str, value: Any, want: str) -> ConfigValueError:
    return ConfigValueError(
        f"config.{field}={value!r} is invalid: {want} (set it with --config.{field}=...)"
    )


def _int_at_least(config: ml_collections.ConfigDict, field: str, low: int) -> None:
    value = config
    for part in field.split("."):
        value = value.get(part) if value is not None else None
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(field, value, f"it must be an integer >= {low}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the values a training run needs, before anything is written.

    Raises:
      ConfigValueError: the first bad value, named as `config.<field>` with what is allowed.
    """
    lr = config.optim.get("lr")
    if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise _bad("optim.lr", lr, "the learning rate must be a finite number > 0")
    clip = config.optim.get("grad_clip_norm")
    if clip is not None and not clip > 0:
        raise _bad("optim.grad_clip_norm", clip, "it must be > 0, or None for no clipping")
    for field, low in (
        ("num_epochs", 1),
        ("batch_size", 1),
        ("steps_per_epoch", 1),
        ("log_every_steps", 1),
        ("checkpoint_every_steps", 0),
        ("keep_checkpoints", 1),
        ("num_devices", 1),
        ("bn_recalibration_batches", 0),
        ("data.num_folds", 2),
    ):
        _int_at_least(config, field, low)
    if config.get("num_epochs") is None:
        raise _bad("num_epochs", None, "it must be an integer >= 1")
    size = config.data.get("image_size")
    sides = list(size) if isinstance(size, list | tuple) else [size]
    if not sides or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 32 and s % 32 == 0 for s in sides
    ):
        # Every encoder halves the resolution five times and the decoders concatenate the
        # skips, so sides that are not multiples of 32 do not line up.
        raise _bad("data.image_size", size, "each side must be a multiple of 32 (>= 32)")
    fold = config.get("fold")
    if fold is not None:
        k = int(config.data.get("num_folds") or 0)
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < k:
            raise _bad("fold", fold, f"it must be in [0, data.num_folds={k}), or None")
    manual = config.data.get("manual_dir")
    if manual and not Path(manual).expanduser().is_dir():
        raise _bad("data.manual_dir", manual, "no such directory; point it at the download")


def config_fold(config: ml_collections.ConfigDict) -> int | None:
    """The run's cross-validation fold (`config.fold`, an int), or None for a run on the
    dataset's fixed splits."""
    fold = config.get("fold")
    return None if fold is None else int(fold)


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """JSON-normalised plain dict of a config (tuples -> lists, etc.)."""
    return json.loads(config.to_json_best_effort())


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(d), sep=".")


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`{"model.arch": "unet", ...}`: the config as dotted keys (TensorBoard hparams)."""
    return _flatten(config_to_dict(config))


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`flat_config` with every value a TensorBoard hparam can hold (others as strings)."""
    flat = flat_config(config)
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def _resumable(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two config dicts, ignoring `RESUMABLE_FIELDS`."""
    a, b = _flatten(stored), _flatten(current)
    for key, value in LATER_DEFAULTS.items():
        for flat in (a, b):
            flat.setdefault(key, value)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _resumable(key):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            diffs.append(f"{key}: {va!r} (stored) != {vb!r} (now)")
    return diffs


def check_or_write_config(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json` into a fresh run dir, or checks a resumed run's config matches.

    Raises:
      RunDirMismatchError: the directory holds a run of a different configuration.
    """
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    current = config_to_dict(config)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RunDirMismatchError(
                f"{path} is not valid JSON ({e}); this directory does not look like a run "
                "directory of this project. Choose another --workdir."
            ) from None
        diffs = config_differences(stored, current)
        if diffs:
            raise RunDirMismatchError(
                f"--workdir {workdir} holds a run of a different configuration; refusing to mix "
                "them. Differences:\n  " + "\n  ".join(diffs) + "\nUse a new --workdir, or "
                f"override the fields back to the stored values (see {path})."
            )
        return
    write_json(path, current)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (`runtime.files.write_json`, keys sorted) from process 0 only."""
    if jax.process_index() == 0:
        files.write_json(path, obj, sort_keys=True)


def read_config(run_dir: str | Path) -> ml_collections.ConfigDict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a training run directory (expected the "
            "--workdir of scripts/train.py, or one fold_k/ of a cross-validation run)."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def read_preprocessing(run_dir: str | Path) -> Preprocessing:
    path = Path(run_dir) / PREPROCESSING_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; was {run_dir} written by scripts/train.py?")
    return Preprocessing.from_dict(json.loads(path.read_text()))


def load_model(
    run_dir: str | Path, *, which: str = "best"
) -> tuple[nnx.Module, ml_collections.ConfigDict, Preprocessing]:
    """The trained model of a run directory, ready for inference.

    Args:
      run_dir: a `--workdir` of scripts/train.py (or `fold_k/` of a CV run).
      which: "best" (best validation metric) or "latest" (last periodic checkpoint).

    Returns:
      (model in eval mode with parameters on the default device, config, preprocessing).
    """
    if which not in CHECKPOINT_CHOICES:
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}.")
    run_dir = Path(run_dir).absolute()
    config = read_config(run_dir)
    preprocessing = read_preprocessing(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR / which
    if not ckpt_dir.exists():
        raise FileNotFoundError(
            f"No '{which}' checkpoints under {ckpt_dir}; the run may not have finished an epoch."
        )
    # Random init is cheap next to reading weights and spares a second abstract code path;
    # `load_weights=False` skips the pretrained encoder file, which the checkpoint replaces.
    # The smp family restores into a shapes-only model (its random init would be wasted).
    extra = {"abstract": True} if config.model.get("family") == "smp" else {}
    model = build_model(config, seed=0, load_weights=False, **extra)[0]
    state = nnx.state(model)
    pure = checkpoint.restore_model(ckpt_dir, which, state.to_pure_dict())
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    model.eval()
    return model, config, preprocessing
