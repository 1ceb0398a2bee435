"""Run directories: the configuration guard, orbax checkpoints, and loading a trained model.

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
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from qatacov_jax.preprocessing import Preprocessing

CONFIG_FILE = "config.json"
PREPROCESSING_FILE = "preprocessing.json"
CHECKPOINT_DIR = "checkpoints"

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


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
        tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write from process 0 only (a reader never sees half a file)."""
    if jax.process_index() != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # NaN (an undefined rate, e.g. precision with no positive prediction) becomes null:
    # strict JSON readers reject NaN.
    text = json.dumps(_nan_to_none(_to_json_compatible(obj)), indent=2, sort_keys=True)
    tmp.write_text(text)
    tmp.replace(path)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic | np.ndarray | jax.Array):
        return np.asarray(o).tolist()
    if isinstance(o, bytes):
        return {"__bytes__": o.hex()}
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Cannot write {type(o).__name__} to JSON")


def _to_json_compatible(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def _from_json_compatible(obj: Any) -> Any:
    """Undoes the bytes encoding of `_json_default` (grain states may hold bytes)."""
    if isinstance(obj, dict):
        if set(obj) == {"__bytes__"}:
            return bytes.fromhex(obj["__bytes__"])
        return {k: _from_json_compatible(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json_compatible(v) for v in obj]
    return obj


def _abstract(tree: Any, sharding: jax.sharding.Sharding | None) -> Any:
    def leaf(x: Any) -> Any:
        s = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree.map(leaf, tree)


class CheckpointStore:
    """Periodic (`latest/`) and best-on-validation (`best/`) orbax checkpoints of a run.

    Saved trees are pure dicts (`nnx.State.to_pure_dict()`), so a checkpoint does not
    depend on Python class names and can be restored into any model of the same structure.
    """

    def __init__(self, workdir: str | Path, *, keep: int = 2, best_metric: str = "pixel_f1"):
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            self.directory / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True),
        )
        self.best = ocp.CheckpointManager(
            self.directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: float(m[best_metric]),
                best_mode="max",
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_latest(
        self, step: int, state: Mapping[str, nnx.State], data_state: Any, meta: Mapping[str, Any]
    ) -> None:
        """Saves model + optimizer state, the data iterator position and loop bookkeeping."""
        # Orbax's multi-host save uses process-wide barrier names, so two managers saving
        # at once (latest + best at an epoch end) collide across processes ("barrier ...
        # already ongoing"). Each save stays asynchronous to training, but the two
        # managers take turns.
        self.best.wait_until_finished()
        pure = {k: v.to_pure_dict() for k, v in state.items()}
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(pure),
                data=ocp.args.JsonSave(_to_json_compatible({"iterator": data_state})),
                meta=ocp.args.JsonSave(_to_json_compatible(dict(meta))),
            ),
        )

    def restore_latest(
        self, state: Mapping[str, nnx.State], sharding: jax.sharding.Sharding
    ) -> tuple[int, dict[str, nnx.State], Any, dict[str, Any]]:
        """Restores the latest checkpoint into (copies of) `state`'s structure.

        Returns:
          (step, state, data iterator state, meta).
        """
        step = self.latest.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint under {self.directory / 'latest'}.")
        target = {k: _abstract(v.to_pure_dict(), sharding) for k, v in state.items()}
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        new_state = {}
        for k, v in state.items():
            s = jax.tree.map(lambda x: x, v)  # a structural copy to fill
            nnx.replace_by_pure_dict(s, restored.state[k])
            new_state[k] = s
        data_state = _from_json_compatible(restored.data["iterator"])
        return step, new_state, data_state, dict(restored.meta)

    def save_best(self, step: int, model_state: nnx.State, metrics: Mapping[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.latest.wait_until_finished()  # see save_latest: the managers take turns
        self.best.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(model_state.to_pure_dict()),
                meta=ocp.args.JsonSave({"step": step, "metrics": metrics}),
            ),
            metrics=metrics,
        )

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


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
    from qatacov_jax.train import build_model

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
    model = build_model(config, seed=0, load_weights=False)[0]
    state = nnx.state(model)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = _abstract(state.to_pure_dict(), device)
    with ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        step = m.latest_step() if which == "latest" else (m.best_step() or m.latest_step())
        if step is None:
            raise FileNotFoundError(f"No checkpoint found under {ckpt_dir}.")
        item = "state" if which == "latest" else "model"
        # `latest/` also holds the optimizer state: a partial restore reads only the model.
        item_target = _pure_target(item, target)
        restore = ocp.args.PyTreeRestore(
            item=item_target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item_target),
            partial_restore=True,
        )
        restored = m.restore(step, args=ocp.args.Composite(**{item: restore}))
    pure = restored[item]["model"] if which == "latest" else restored[item]
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    model.eval()
    return model, config, preprocessing


def _pure_target(item: str, model_target: Any) -> Any:
    # `latest/` holds {"model": ..., "opt": ...}; `best/` the model state alone.
    return {"model": model_target} if item == "state" else model_target
