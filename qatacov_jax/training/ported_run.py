"""A run directory from ported weights: a whole smp model trained elsewhere becomes a run
directory that evaluation, inference, the web app and export load like one trained here.

Layout (the `training.rundir` layout without training logs):

    config.json          the paper-2 config of the model (family smp, arch, encoder, classes)
    preprocessing.json   the input preprocessing (the encoder's ImageNet normalisation)
    checkpoints/best/    the model state, as `CheckpointStore.save_best` writes it
    ported.json          where the weights came from (file, SHA-256, tensor counts)

Written into a hidden temporary directory beside `out_dir` and renamed into place at the
end, so an error leaves nothing half-written; an existing `out_dir` is replaced only with
`overwrite=True`, and only after the new one is complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.runtime import files
from qatacov_jax.runtime.files import OutputExistsError
from qatacov_jax.runtime.locking import run_dir_lock
from qatacov_jax.training.checkpoint import BEST
from qatacov_jax.training.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    PREPROCESSING_FILE,
    config_to_dict,
)

PORTED_FILE = "ported.json"


def write_ported_run(
    out_dir: str | Path,
    config: ml_collections.ConfigDict,
    model_state: Mapping[str, Any],
    preprocessing: Preprocessing,
    source: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Writes a run directory holding `model_state` as its best checkpoint.

    Args:
      out_dir: the run directory to create.
      config: the model's configuration (`config.model` must build `model_state`'s model).
      model_state: the model's pure state dict (`nnx.State.to_pure_dict()` layout).
      preprocessing: the input preprocessing the weights expect.
      source: provenance written to `ported.json`.
      overwrite: replace an existing `out_dir` (after the new one is complete).

    Returns:
      `out_dir` (absolute).

    Raises:
      OutputExistsError: `out_dir` exists and `overwrite` is False.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Locked beside out_dir (replaced as a whole), as weights.port does.
    with run_dir_lock(out_dir, purpose="port_weights", beside=True):
        _check_replaceable(out_dir, overwrite)
        _write_run(out_dir, config, model_state, preprocessing, source)
    return out_dir


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """An existing non-empty `out_dir` is replaced only with `overwrite`, and only if it is an
    earlier ported run of ours (it holds ported.json): `--out .` is never wiped."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise OutputExistsError(
            f"{out_dir} already exists; choose another --out or pass --overwrite to replace it."
        )
    if not (out_dir / PORTED_FILE).is_file():
        raise OutputExistsError(
            f"{out_dir} is not an earlier ported run (no {PORTED_FILE} in it); refusing to "
            "replace it even with --overwrite. Choose another --out."
        )


def _write_run(
    out_dir: Path,
    config: ml_collections.ConfigDict,
    model_state: Mapping[str, Any],
    preprocessing: Preprocessing,
    source: Mapping[str, Any],
) -> None:
    """Writes the run into a temporary sibling and renames it over `out_dir`."""

    def fill(tmp: Path) -> None:
        files.write_json(tmp / CONFIG_FILE, config_to_dict(config), sort_keys=True)
        files.write_json(tmp / PREPROCESSING_FILE, preprocessing.to_dict(), sort_keys=True)
        files.write_json(tmp / PORTED_FILE, dict(source), sort_keys=True)
        with ocp.CheckpointManager(tmp / CHECKPOINT_DIR / BEST) as manager:
            manager.save(
                0,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave(dict(model_state)),
                    meta=ocp.args.JsonSave({"step": 0, "metrics": {}, "ported": True}),
                ),
            )
            manager.wait_until_finished()

    files.replace_dir(out_dir, fill)
