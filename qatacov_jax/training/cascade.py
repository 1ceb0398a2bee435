"""Paper 2's cascaded scheme in training: `config.model.cascade` (configs/paper2/base.py).

    config.model.cascade.scheme       "parallel" (default: the plain X-ray) or "cascaded"
    config.model.cascade.lung_run     a trained lung run directory (its checkpoints/best)
    config.model.cascade.threshold    lung probability from which a pixel is lung (0.5)
    config.model.cascade.lung_model / lung_image_size / lung_preprocessing
                                      filled from `lung_run` when training starts

`resolve` fills the last three from the lung run, so the run's config.json describes the
whole cascade and a trained cascaded run loads (inference, evaluation, the web app, export)
without the lung run: its checkpoint holds the frozen lung weights too. `build` makes the
`models.cascade.CascadedModel`.

The lung model should not have seen the infection run's test images: with paper 2's
protocol, a lung model trained on the lung set's Train / Val folders (protocol `official`,
or one `paper2` fold) never reads a Test image, and the two runs' splits.json show it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models.cascade import CascadedModel
from qatacov_jax.training import rundir

SCHEMES = ("parallel", "cascaded")


def scheme(config: ml_collections.ConfigDict) -> str:
    """`config.model.cascade.scheme` (no cascade block = "parallel"), checked."""
    block = config.model.get("cascade")
    name = (block.get("scheme") if block is not None else None) or "parallel"
    if name not in SCHEMES:
        raise rundir.ConfigValueError(
            f"config.model.cascade.scheme={name!r} is invalid: it must be one of {list(SCHEMES)}."
        )
    return name


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the cascade's lung model recorded from `lung_run` (a copy; `config`
    itself when the scheme is parallel).

    Raises:
      ConfigValueError: a cascaded config without a lung run (nor a recorded lung model),
        or a lung run that is not a segmentation run directory.
    """
    if scheme(config) == "parallel":
        return config
    block = config.model.cascade
    run = block.get("lung_run")
    if not run:
        if block.get("lung_model"):
            return config  # a trained cascaded run's config: everything is recorded
        raise rundir.ConfigValueError(
            "config.model.cascade.scheme='cascaded' needs the lung model to apply first: "
            "set --config.model.cascade.lung_run=<a lung run directory> (e.g. trained with "
            "configs/paper2/lung_fpn_densenet121.py)."
        )
    lung_dir = Path(run).expanduser()
    try:
        lung_config = rundir.read_config(lung_dir)
        lung_prep = rundir.read_preprocessing(lung_dir)
    except (FileNotFoundError, ValueError) as e:
        raise rundir.ConfigValueError(f"config.model.cascade.lung_run={run!r}: {e}") from None
    if lung_config.data.get("target") != "lung":
        raise rundir.ConfigValueError(
            f"config.model.cascade.lung_run={run!r} segments "
            f"{lung_config.data.get('target')!r}, not lungs."
        )
    out = ml_collections.ConfigDict(config.to_dict())
    lung_model = lung_config.model.to_dict()
    lung_model["encoder_weights"] = None  # the lung weights come from its checkpoint
    out.model.cascade.lung_model = lung_model
    out.model.cascade.lung_image_size = _side(lung_config.data.image_size)
    out.model.cascade.lung_preprocessing = lung_prep.to_dict()
    return out


def _side(size: Any) -> int:
    sides = list(size) if isinstance(size, list | tuple) else [size, size]
    if len(set(sides)) != 1:
        raise rundir.ConfigValueError(f"the cascade's lung model needs square inputs, got {size}.")
    return int(sides[0])


def build(
    config: ml_collections.ConfigDict,
    infection: nnx.Module,
    preprocessing: Preprocessing,
    *,
    load_weights: bool,
) -> CascadedModel:
    """Wraps the infection model of `config` (built by `factory.build_model`) with the lung
    model of its resolved cascade block: the lung run's best checkpoint (`load_weights`),
    else a randomly initialised lung model for a checkpoint to fill.

    Args:
      infection: the infection model; `preprocessing` its input preprocessing.
    """
    block = config.model.cascade
    if not block.get("lung_model"):  # not resolved yet (a trained run's config always is)
        block = resolve(config).model.cascade
    if load_weights and block.get("lung_run"):
        lung, _, _ = rundir.load_model(Path(block.lung_run).expanduser())
    else:
        from qatacov_jax.training.factory import build_model

        lung_cfg = ml_collections.ConfigDict({"model": _as_dict(block.lung_model)})
        lung, _ = build_model(lung_cfg, seed=0, load_weights=False)
    return CascadedModel(
        lung,
        infection,
        input_preprocessing=preprocessing,
        lung_preprocessing=Preprocessing.from_dict(_as_dict(block.lung_preprocessing)),
        lung_size=int(block.lung_image_size),
        threshold=float(block.get("threshold", 0.5)),
    )


def _as_dict(value: Any) -> dict[str, Any]:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value)
