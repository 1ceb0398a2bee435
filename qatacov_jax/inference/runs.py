"""Trained run directories -> models ready to predict, by role ("infection", "lung").

Shared by `scripts/infer.py` (`inference.files`), the web app, export and the CLIs, so every
consumer loads a run, and sizes its inputs, the same way. Importing this module loads no JAX
(the CLIs import its errors); loading a run does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qatacov_jax.inference.batching import BatchPredictor
from qatacov_jax.runtime.storage import StorageError

log = logging.getLogger(__name__)


class CorruptRunError(ValueError):
    """A run directory's file cannot be read: truncated or invalid JSON, a damaged checkpoint.
    The message names the run and the file; the CLIs end with it and exit code 65
    (EX_DATAERR, docs/troubleshooting.md)."""


def _run_file_problem(run_dir: Path, e: BaseException) -> str:
    """Which file of a run failed to load and how, in one line."""
    if isinstance(e, json.JSONDecodeError):
        # Only config.json and preprocessing.json are JSON we read before the checkpoint.
        for name in ("config.json", "preprocessing.json"):
            try:
                json.loads((run_dir / name).read_text())
            except (OSError, ValueError):
                return f"{run_dir / name} is not valid JSON (truncated or edited?): {e}"
        return f"a checkpoint's metadata under {run_dir / 'checkpoints'} is not valid JSON ({e})"
    text = " ".join(str(e).split())[:300] or type(e).__name__
    return f"the checkpoint under {run_dir / 'checkpoints'} cannot be read ({text})"


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Orbax logs (through absl) its read-only notices on every restore and an ERROR per
    damaged metadata file before raising; the raised error is reported instead, once."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_run(run_dir: str | Path, *, which: str = "best") -> tuple[Any, Any, Any]:
    """`training.rundir.load_model` with its failures in one line: FileNotFoundError and a
    configuration's ValueError as they were, `CorruptRunError` for an unreadable file.

    Returns:
      (model in eval mode, config, preprocessing).
    """
    from qatacov_jax.training.rundir import load_model  # JAX, Flax, orbax: only when loading

    run_dir = Path(run_dir)
    try:
        with _quiet_orbax():
            return load_model(run_dir, which=which)
    except (FileNotFoundError, StorageError):
        raise
    except json.JSONDecodeError as e:
        raise CorruptRunError(_run_file_problem(run_dir, e)) from None
    except ValueError as e:
        if "checkpoint" in str(e).lower() or "tensorstore" in str(e).lower():
            raise CorruptRunError(_run_file_problem(run_dir, e)) from None
        raise
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many types for bad files
        raise CorruptRunError(_run_file_problem(run_dir, e)) from None


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
      FileNotFoundError, ValueError, CorruptRunError: a run cannot be loaded; the message
        names its role.
    """
    loaded = LoadedModels({}, {}, {}, {}, {})
    for name, run_dir in runs.items():
        run_dir = Path(run_dir)
        try:
            model, config, prep = load_run(run_dir, which=which)
            size = _input_size(config, run_dir)
        except (FileNotFoundError, ValueError) as e:
            # Not type(e)(...): a subclass's constructor may want other arguments
            # (JSONDecodeError's three).
            cls = next(
                c for c in (CorruptRunError, FileNotFoundError, ValueError) if isinstance(e, c)
            )
            raise cls(f"cannot load the {name} model from {run_dir}: {e}") from None
        loaded.models[name], loaded.configs[name] = model, config
        loaded.preprocessing[name], loaded.sizes[name] = prep, size
        loaded.runs[name] = run_dir
    return loaded


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """The model(s) a command predicts with, known before they load (which takes seconds):
    what `scripts/infer.py` checks its outputs against and records in its report.

    Attributes:
      path: the infection model's run directory, or an export directory.
      lung_path: the lung model's run directory, if a separate one.
      with_lung: whether predictions include a lung map.
      engine: "jax" (a trained run) or "onnxruntime" (`export.onnx_runtime.export_source`).
      load: batch size (None: the engine's default) -> the predictor.
      thresholds: role -> the threshold recorded with the model (an export's manifest),
        the commands' default for --threshold / --lung-threshold; empty for a run.
    """

    path: Path
    lung_path: Path | None
    with_lung: bool
    engine: str
    load: Callable[[int | None], BatchPredictor]
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)


def run_source(
    checkpoint: str | Path, lung_checkpoint: str | Path | None = None, which: str = "best"
) -> ModelSource:
    """Trained run directories as a `ModelSource`: their models behind one jitted
    `inference.Predictor` over every device (default batch: 8 per device)."""

    def load(batch_size: int | None) -> BatchPredictor:
        from qatacov_jax.inference.predictor import Predictor
        from qatacov_jax.runtime.sharding import make_mesh

        mesh = make_mesh()
        runs: dict[str, str | Path] = {"infection": checkpoint}
        if lung_checkpoint is not None:
            runs["lung"] = lung_checkpoint
        loaded = load_models(runs, which=which)
        size = batch_size or 8 * mesh.devices.size
        log.info("JAX on %d device(s), batch %d", mesh.devices.size, size)
        return Predictor(loaded.models, loaded.preprocessing, loaded.sizes, mesh, batch_size=size)

    lung = None if lung_checkpoint is None else Path(lung_checkpoint)
    return ModelSource(Path(checkpoint), lung, lung is not None, "jax", load)
