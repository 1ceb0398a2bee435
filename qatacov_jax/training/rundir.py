"""Run directories: their layout, the configuration guard, and loading a trained model.

Layout of a run directory (`--workdir`):

    config.json           the configuration the run was started with (never rewritten)
    preprocessing.json    the input preprocessing the model was trained with
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
"""

from __future__ import annotations

import json
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

CONFIG_FILE = "config.json"
PREPROCESSING_FILE = "preprocessing.json"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = checkpoint.CHECKPOINT_DIR

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
    "data.num_workers",
    "data.prefetch",
    "data.worker_buffer_size",
)


class RunDirMismatchError(ValueError):
    """The workdir holds a run of a different configuration."""


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """JSON-normalised plain dict of a config (tuples -> lists, etc.)."""
    return json.loads(config.to_json_best_effort())


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(d), sep=".")


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`{"model.arch": "unet", ...}`: the config as dotted keys (TensorBoard hparams)."""
    return _flatten(config_to_dict(config))


def _resumable(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two config dicts, ignoring `RESUMABLE_FIELDS`."""
    a, b = _flatten(stored), _flatten(current)
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
    if which not in ("best", "latest"):
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
