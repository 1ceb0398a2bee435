"""Device mesh and shardings for data parallelism (one `data` axis; no pmap).

The whole project runs one code path on 1 CPU, N GPUs or several hosts: the model and
optimizer state are replicated, the batch is split along its leading axis over the mesh's
`data` axis, and `jax.jit` inserts the gradient all-reduce. Each process only ever holds
its own slice of the batch (`shard_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all of them by default).

    Raises:
      ValueError: if more devices are asked for than exist.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"Asked for {num_devices} devices but {len(devices)} are available "
            f"({devices[0].platform}). On CPU, simulate more with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts."
        )
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the full array (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Returns the per-process batch size, or raises a clear error if it does not divide."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {n} devices of the "
            f"mesh; set config.batch_size to a multiple of {n}."
        )
    return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's slice of a batch into global arrays sharded over `data`.

    Args:
      batch: name -> NumPy array of shape (B_local, ...), B_local = global batch / processes.

    Returns:
      name -> jax.Array of shape (B_global, ...) sharded along axis 0 over the mesh.
    """
    sharding = data_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (e.g. `nnx.state(model)`) fully replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))
