"""The fastest inference form of a segmentation model: BatchNorm folded, optional micro-batching.

`make_forward(model)` returns `(forward, state)`: a pure function `forward(state, images)` to
wrap in `jax.jit` (with any shardings) and the state to pass it. Measured with
`benchmarks/compare_keras.py` (results in benchmarks/results/):

* BatchNorm folded into the preceding convs (`qatacov_jax.bn_fold`), exact in eval mode.
* Optional micro-batching: the batch run a few samples at a time (`jax.lax.map`), the same
  result since inference BatchNorm is per-sample. It paid off (~15%) while jaxlib's YNNPACK
  convolutions were in use on CPU, whose per-image time grew with the batch; with XLA's own
  convolutions (`qatacov_jax.xla_flags`) the whole batch at once is fastest everywhere
  (U-Net DenseNet-121, 224, batch 8, 2-core Xeon: 51 ms/image whole, 53 at micro-batch 4,
  69 at micro-batch 1), so it is off by default and kept as an option for memory-bound runs.

With several devices the batch `(B, ...)` is viewed as `(D, B/D, ...)` and mapped over its
second axis, so every step still gives each device one micro-batch of its own shard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from qatacov_jax.bn_fold import fold_batchnorm


def make_forward(
    model: nnx.Module,
    *,
    fold: bool = True,
    microbatch: int | None = None,
    num_devices: int = 1,
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """Splits an (eval-mode) model into a pure inference function and its state.

    Args:
      model: a segmentation model; call `(B, H, W, 3) -> (B, H, W, 1)` logits.
      fold: fold BatchNorm into convs (a folded copy is made; `model` is untouched).
      microbatch: samples per device per step; None (default, the fastest measured on CPU
        and GPU) = the whole batch in one step.
      num_devices: devices the batch will be sharded over (the leading axis is split D ways).

    Returns:
      (forward, state): `forward(state, images (B, H, W, 3)) -> logits (B, H, W, 1)`, B a
      multiple of `num_devices * microbatch` when micro-batching.
    """
    if fold:
        model = fold_batchnorm(model)
    else:
        model.eval()
    graphdef, state = nnx.split(model)

    def forward(state: Any, images: jax.Array) -> jax.Array:
        net = nnx.merge(graphdef, state)
        b = images.shape[0]
        if microbatch is None or b <= microbatch * num_devices:
            return net(images)
        per_dev = b // num_devices
        if b % num_devices or per_dev % microbatch:
            raise ValueError(
                f"Batch {b} does not split into {num_devices} device(s) x micro-batches of "
                f"{microbatch}; use a batch size that is a multiple of {num_devices * microbatch}."
            )
        # (B, ...) -> (steps, D * microbatch, ...), each step holding `microbatch` samples of
        # every device's shard, in device order, so a step's batch stays sharded like the input.
        steps = per_dev // microbatch
        x = images.reshape(num_devices, steps, microbatch, *images.shape[1:])
        x = x.swapaxes(0, 1).reshape(steps, num_devices * microbatch, *images.shape[1:])
        y = jax.lax.map(net, x)
        y = y.reshape(steps, num_devices, microbatch, *y.shape[2:]).swapaxes(0, 1)
        return y.reshape(b, *y.shape[3:])

    return forward, state
