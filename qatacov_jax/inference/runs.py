"""Trained run directories -> models ready to predict, by role ("infection", "lung").

Shared by `scripts/infer.py` (`inference.files`), the web app, export and the CLIs, so every
consumer loads a run, and sizes its inputs, the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from qatacov_jax.training.rundir import load_model


def _input_size(config: Any, run_dir: Path) -> Any:
    size = config.get("data", {}).get("image_size")
    if size is None:
        raise ValueError(f"{run_dir}/config.json names no data.image_size; cannot size the inputs.")
    return tuple(size) if isinstance(size, list | tuple) else int(size)


@dataclasses.dataclass(frozen=True)
class LoadedModels:
    """Trained models by role ("infection", "lung"), with what running them needs.

    Attributes:
      models: name -> model in eval mode.
      configs: name -> the run's configuration.
      preprocessing: name -> the input preprocessing the model was trained with.
      sizes: name -> input size (a square's side, or (height, width)).
      runs: name -> the run directory it came from.
    """

    models: dict[str, Any]
    configs: dict[str, Any]
    preprocessing: dict[str, Any]
    sizes: dict[str, Any]
    runs: dict[str, Path]


def load_models(runs: dict[str, str | Path], *, which: str = "best") -> LoadedModels:
    """Loads each run directory's model (`training.rundir.load_model`) and its input size.

    Raises:
      FileNotFoundError, ValueError: a run cannot be loaded; the message names its role.
    """
    loaded = LoadedModels({}, {}, {}, {}, {})
    for name, run_dir in runs.items():
        run_dir = Path(run_dir)
        try:
            model, config, prep = load_model(run_dir, which=which)
            size = _input_size(config, run_dir)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"cannot load the {name} model from {run_dir}: {e}") from None
        loaded.models[name], loaded.configs[name] = model, config
        loaded.preprocessing[name], loaded.sizes[name] = prep, size
        loaded.runs[name] = run_dir
    return loaded
