"""Multi-process runs: `jax.distributed.initialize` when a config or the environment asks.

Called by `loop.train_and_evaluate` before any device is used (docs/training.md,
launch/train.sbatch).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize` when asked (config or env), before any device use.

    Asked by `config.distributed.initialize=True` (coordinator/num_processes/process_id
    from the config, or auto-detected on SLURM/TPU/GKE when left unset), or by the
    environment variable `QATACOV_DISTRIBUTED=1`. Single-process runs never touch it.
    """
    dist = config.get("distributed")
    wanted = bool(dist and dist.get("initialize")) or os.environ.get("QATACOV_DISTRIBUTED") == "1"
    if not wanted or _distributed_ready():
        return
    kwargs: dict[str, Any] = {}
    if dist is not None:
        for key in ("coordinator_address", "num_processes", "process_id"):
            if dist.get(key) is not None:
                kwargs[key] = dist.get(key)
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        # CPU collectives across processes need an explicit implementation.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def _distributed_ready() -> bool:
    # jax has no public "is jax.distributed initialised?"; the private module is imported
    # here, guarded, so a jax release that moves it only loses this check.
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # pragma: no cover - private API moved; assume not initialised
        return False
