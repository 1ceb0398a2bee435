"""Orbax checkpoints of a run: `checkpoints/latest/` (resume) and `checkpoints/best/`.

Saved trees are pure dicts (`nnx.State.to_pure_dict()`), so a checkpoint does not depend on
Python class names and can be restored into any model of the same structure. The run
directory around them is described in `training.rundir`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from qatacov_jax.runtime.files import from_json_ready, json_ready
from qatacov_jax.runtime.sharding import replicate
from qatacov_jax.runtime.storage import is_full, storage_errno

# The folder names' one home is `run_files` (light); re-exported here.
from qatacov_jax.training.run_files import BEST as BEST
from qatacov_jax.training.run_files import CHECKPOINT_DIR as CHECKPOINT_DIR
from qatacov_jax.training.run_files import CORRUPT as CORRUPT
from qatacov_jax.training.run_files import LATEST as LATEST


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
        self.latest_dir = self.directory / LATEST
        self.best_dir = self.directory / BEST
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            self.latest_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True),
        )
        self.best = ocp.CheckpointManager(
            self.best_dir,
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
                data=ocp.args.JsonSave(json_ready({"iterator": data_state})),
                meta=ocp.args.JsonSave(json_ready(dict(meta))),
            ),
        )

    def restore_latest(
        self, state: Mapping[str, nnx.State], sharding: jax.sharding.Sharding
    ) -> tuple[int, dict[str, nnx.State], Any, dict[str, Any]]:
        """Restores the newest *readable* checkpoint into (copies of) `state`'s structure.

        A checkpoint that cannot be read (truncated files: a full disk or a crash while the
        file system was flushing) is moved to `checkpoints/corrupt/` (never deleted) and the
        previous one is used, with a warning naming both.

        Returns:
          (step, state, data iterator state, meta).
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"No checkpoint under {self.latest_dir}.")
        target = {k: _abstract(v.to_pure_dict(), sharding) for k, v in state.items()}
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        skipped: list[str] = []
        for step in steps:
            try:
                restored = self.latest.restore(step, args=args)
                break
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
                if storage_errno(e) is not None and not is_full(storage_errno(e)):
                    raise  # unreadable directory, not a damaged checkpoint
                moved = self._quarantine(step)
                skipped.append(f"step {step} ({type(e).__name__}; moved to {moved})")
        else:
            raise FileNotFoundError(
                f"No readable checkpoint under {self.latest_dir}: "
                + "; ".join(skipped)
                + ". Start a new --workdir, or restore the files."
            )
        if skipped:
            logging.warning(
                "The newest checkpoint(s) could not be read: %s. Resuming from the previous "
                "complete one, step %d.",
                "; ".join(skipped),
                step,
            )
        new_state = {}
        for k, v in state.items():
            s = jax.tree.map(lambda x: x, v)  # a structural copy to fill
            nnx.replace_by_pure_dict(s, restored.state[k])
            new_state[k] = s
        data_state = from_json_ready(restored.data["iterator"])
        return step, new_state, data_state, dict(restored.meta)

    def _quarantine(self, step: int) -> Path:
        """Moves `latest/<step>` out of the manager's sight (so the step can be saved again)
        to `corrupt/latest-<step>[-k]`; nothing is deleted."""
        corrupt = self.directory / CORRUPT
        corrupt.mkdir(parents=True, exist_ok=True)
        dest = corrupt / f"latest-{step}"
        k = 1
        while dest.exists():
            dest, k = corrupt / f"latest-{step}-{k}", k + 1
        (self.latest_dir / str(step)).rename(dest)
        self.latest.reload()
        return dest

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

    def restore_best(self, like: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
        """`best/` as a model state of `like`'s structure, replicated over `mesh`."""
        pure = restore_model(self.best_dir, BEST, jax.device_get(like.to_pure_dict()))
        # Host arrays, replicated below exactly as the initial state is (multi-process too).
        pure = jax.device_get(pure)
        restored = jax.tree.map(lambda x: x, like)
        nnx.replace_by_pure_dict(restored, pure)
        return replicate(restored, mesh)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def complete_steps(directory: Path) -> list[int]:
    """Steps of the complete checkpoints in a manager's directory, ascending. Orbax writes a
    step into `<step>.orbax-checkpoint-tmp*` and renames it to `<step>` when complete."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def remove_partial(directory: Path) -> list[Path]:
    """Removes the temporary (incomplete) checkpoint folders under `checkpoints/*/`, which
    a failed save leaves behind; returns them. Complete steps are never touched."""
    removed = []
    for p in sorted(directory.glob("*/*.orbax-checkpoint-tmp*")):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def restore_model(ckpt_dir: Path, which: str, model_target: Any) -> Any:
    """The model's pure-dict state from `checkpoints/<which>/` (latest step, or best).

    Args:
      ckpt_dir: `<run>/checkpoints/best` or `<run>/checkpoints/latest`.
      which: "best" or "latest".
      model_target: a pure dict of arrays of the model's structure (shapes and dtypes).

    Returns:
      The restored pure dict, on the default device.
    """
    # A local device: in a multi-process run the first global device may be another host's.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = _abstract(model_target, device)
    with ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        step = m.latest_step() if which == LATEST else (m.best_step() or m.latest_step())
        if step is None:
            raise FileNotFoundError(f"No checkpoint found under {ckpt_dir}.")
        # `latest/` holds {"model": ..., "opt": ...} under "state": a partial restore reads
        # only the model; `best/` holds the model state alone under "model".
        item = "state" if which == LATEST else "model"
        item_target = {"model": target} if item == "state" else target
        restore = ocp.args.PyTreeRestore(
            item=item_target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item_target),
            partial_restore=True,
        )
        restored = m.restore(step, args=ocp.args.Composite(**{item: restore}))
    return restored[item]["model"] if which == LATEST else restored[item]
