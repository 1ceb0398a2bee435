"""The jitted steps of a run: optimisation, validation statistics and precise BatchNorm.

One code path for 1 CPU, N GPUs and several hosts: the model and optimizer state are split
once into a graph definition (static) and a state pytree, replicated over the mesh; every
batch is sharded over the mesh's `data` axis. `jax.jit` compiles pure functions with those
shardings, so XLA inserts the gradient all-reduce and BatchNorm batch statistics span the
*global* batch (the maths is that of one big device). The train state is donated: the update
happens in place, without a second copy of the model + Adam moments in device memory.

Validation during training and the evaluation of a trained run (`evaluation.runner`,
`scripts/evaluate.py`) share one jitted forward + statistics step (`make_eval_step`:
`qatacov_jax.metrics.batch_statistics`, summed into a `MetricAccumulator`), run one batch
ahead of the host (`pipelined`).

The loss object (`training.losses.Loss`, picked from the config by `losses.make_loss`) also
says which batch key is the target and how logits become probabilities, so the steps serve
both tasks: a classifier is validated on the image-level *detection* counts alone (no pixel
predictions).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax.metrics import (
    DEFAULT_NUM_BINS,
    DEFAULT_THRESHOLD,
    MetricAccumulator,
    batch_statistics,
    flat_metrics,
)
from qatacov_jax.models import TRAINABLE, foreground_probability
from qatacov_jax.runtime import sharding
from qatacov_jax.training import optim
from qatacov_jax.training.losses import Loss, make_loss


def _train_step(
    model_def: nnx.GraphDef,
    opt_def: nnx.GraphDef,
    loss: Loss,
    state: dict[str, nnx.State],
    batch: Mapping[str, jax.Array],
) -> tuple[dict[str, nnx.State], dict[str, jax.Array]]:
    """One optimisation step on a global batch (pure; jitted by `make_train_step`).

    Args:
      state: {"model": model state, "opt": optimizer state}.
      batch: `image` (B, H, W, 3) float32 preprocessed and the loss's target: `mask`
        (B, H, W, 1) {0, 1} for segmentation, `label` (B,) int for a classifier.

    Returns:
      (new state, metrics): `loss`, `grad_norm` and the loss's parts (segmentation: `focal`,
      `dice`), float32 scalars.
    """
    model = nnx.merge(model_def, state["model"])
    opt = nnx.merge(opt_def, state["opt"])

    def loss_fn(model: nnx.Module) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model(batch["image"])
        return loss(logits, batch[loss.target])

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE), has_aux=True)
    (value, parts), grads = grad_fn(model)
    opt.update(model, grads)
    metrics = {"loss": value, **parts, "grad_norm": optax.global_norm(grads)}
    return {"model": nnx.state(model), "opt": nnx.state(opt)}, metrics


@functools.lru_cache(maxsize=16)
def make_train_step(
    model_def: nnx.GraphDef, opt_def: nnx.GraphDef, loss: Loss, mesh: Mesh
) -> Callable[[dict[str, nnx.State], Mapping[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]:
    """`train_step(state, batch) -> (state, metrics)`, jitted over `mesh`.

    State in and out replicated, batch split on `data`, the input state donated. Cached, so
    runs of the same model on the same mesh in one process (CV folds, tests) compile once.
    """
    rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
    return jax.jit(
        functools.partial(_train_step, model_def, opt_def, loss),
        in_shardings=(rep, dat),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )


# The batch keys an evaluation step reads (those of `data.eval_iterator`'s batches).
EVAL_KEYS = ("image", "mask", "label", "valid")


def _eval_step(
    model_def: nnx.GraphDef,
    loss: Loss | None,
    threshold: float,
    num_bins: int,
    model_state: nnx.State,
    batch: Mapping[str, jax.Array],
) -> dict[str, jax.Array]:
    """Forward pass + the sufficient statistics of the metrics for one global batch.

    Returns the `metrics.batch_statistics` of the probabilities (pixel and detection counts
    at `threshold`, `num_bins`-bin histograms for AUC; a classifier's pixel counts stay 0),
    padding rows excluded; with a `loss`, also `loss_sum` (batch loss x valid rows) and `n`
    (valid rows). Without one (evaluating a trained segmenter) the probabilities are
    `models.foreground_probability` of the logits.
    """
    model = nnx.merge(model_def, model_state)
    logits = model(batch["image"])
    if loss is None:
        probs, masks = foreground_probability(logits), batch["mask"]
    else:
        probs = loss.probabilities(logits)
        masks = batch["mask"] if loss.target == "mask" else None
    stats = batch_statistics(
        probs, masks, batch["label"], batch["valid"], threshold=threshold, num_bins=num_bins
    )
    if loss is None:
        return stats
    valid = batch["valid"].astype(jnp.float32)
    value, _ = loss(logits, batch[loss.target], valid)
    n = jnp.sum(valid)
    return {"loss_sum": value * n, "n": n, **stats}


@functools.lru_cache(maxsize=16)
def make_eval_step(
    model_def: nnx.GraphDef,
    loss: Loss | None,
    mesh: Mesh,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
) -> Callable[[nnx.State, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """`eval_step(model_state, batch) -> statistics`, jitted over `mesh` (no donation).

    `batch` holds `EVAL_KEYS`: `image` (B, H, W, 3) preprocessed, `mask` (B, H, W, 1),
    `label` (B,), `valid` (B,). Cached on the (hashable) graph definition, so the folds of
    a CV run, which share one model structure, compile once; the probabilities never leave
    the devices.
    """
    rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
    return jax.jit(
        functools.partial(_eval_step, model_def, loss, float(threshold), int(num_bins)),
        in_shardings=(rep, dat),
        out_shardings=rep,
    )


def pipelined(
    step: Callable[[Mapping[str, jax.Array]], Any], batches: Iterable[Mapping[str, jax.Array]]
) -> Iterator[tuple[Mapping[str, jax.Array], Any]]:
    """Yields `(batch, step(batch))` one batch late, so the host never stalls the devices.

    `step` dispatches asynchronously; by the time the caller reads batch i's results the
    devices already run batch i + 1, and only two batches' results are alive at a time.
    """
    pending = None
    for batch in batches:
        out = step(batch)
        if pending is not None:
            yield pending
        pending = (batch, out)
    if pending is not None:
        yield pending


def _batch_stats_step(
    model_def: nnx.GraphDef, model_state: nnx.State, images: jax.Array
) -> nnx.State:
    """BatchNorm statistics of one global batch (the model graph has momentum 0)."""
    model = nnx.merge(model_def, model_state)
    model(images)
    return nnx.state(model, nnx.BatchStat)


@functools.lru_cache(maxsize=16)
def make_batch_stats_step(model_def: nnx.GraphDef, mesh: Mesh) -> Callable[..., Any]:
    rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
    return jax.jit(
        functools.partial(_batch_stats_step, model_def),
        in_shardings=(rep, dat),
        out_shardings=rep,
    )


def zero_momentum_graphdef(model: nnx.Module) -> nnx.GraphDef:
    """The train-mode graph of `model` with every BatchNorm's momentum set to 0, so a
    forward pass leaves each layer's *batch* statistics in its running averages."""
    saved = []
    for _, m in model.iter_modules():
        if isinstance(m, nnx.BatchNorm):
            saved.append((m, m.momentum))
            m.momentum = 0.0
    model.train()
    graphdef = nnx.graphdef(model)
    for m, momentum in saved:
        m.momentum = momentum
    return graphdef


def recalibrate_batch_norm(
    stats_step: Callable[..., Any],
    model_state: nnx.State,
    batches: Iterator[Mapping[str, jax.Array]],
    num_batches: int,
) -> nnx.State:
    """Replaces BatchNorm running averages by the mean of `num_batches` batches' statistics.

    The running averages (Keras momentum 0.99) lag behind the weights for the first few
    hundred steps, so a short run evaluated in inference mode looks far worse than it is.
    Averaging exact batch statistics of the *current* weights ("precise BN") removes the
    lag; weights are untouched. Opt-in (`config.bn_recalibration_batches`); the paper
    configs leave it off.
    """
    acc = None
    for _ in range(num_batches):
        stats = stats_step(model_state, next(batches)["image"])
        acc = stats if acc is None else jax.tree.map(jnp.add, acc, stats)
    mean = jax.tree.map(lambda x: x / num_batches, acc)
    return _replace_batch_stats(model_state, mean)


def _replace_batch_stats(model_state: nnx.State, stats: nnx.State) -> nnx.State:
    flat = dict(nnx.to_flat_state(model_state))
    for path, var in nnx.to_flat_state(stats):
        flat[path] = var
    return nnx.from_flat_state(flat)


def validate(
    eval_step: Callable[..., Any], model_state: nnx.State, batches: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, float], MetricAccumulator]:
    """Validation over one pass of `batches`.

    Returns:
      (flat metrics, accumulator): `loss`, `num_examples` and every `{level}_{metric}` of
      `metrics.flat_metrics` (e.g. `pixel_f1`, `detection_sensitivity`, `pixel_tp`; no
      `pixel_*` for a classifier, which predicts no pixels); the accumulator holds the
      counts and histograms (to pool folds later).
    """
    acc = MetricAccumulator()
    loss_sum, n = 0.0, 0.0

    def step(batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        return eval_step(model_state, {k: batch[k] for k in EVAL_KEYS})

    for _, stats in pipelined(step, batches):
        stats = jax.device_get(stats)
        loss_sum += float(np.asarray(stats.pop("loss_sum"), np.float64))
        n += float(np.asarray(stats.pop("n"), np.float64))
        acc.update(stats)
    if acc.num_images == 0:
        raise ValueError("The validation split is empty; check config.data and config.fold.")
    flat = {"loss": loss_sum / max(n, 1.0), "num_examples": int(n)}
    metrics = flat_metrics(acc.summary())
    if acc.pixel.total == 0:  # a classifier: all-NaN pixel metrics would only be noise
        metrics = {k: v for k, v in metrics.items() if not k.startswith("pixel_")}
    flat.update(metrics)
    return flat, acc


@dataclasses.dataclass(frozen=True)
class RunSteps:
    """The jitted steps of a run's model on its mesh (`compile_steps`), and their loss."""

    loss: Loss
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    stats_step: Callable[..., Any] | None  # precise BatchNorm (None: off)
    recal_batches: int  # batches averaged by precise BatchNorm


def compile_steps(
    config: ml_collections.ConfigDict, mesh: Mesh, model: nnx.Module
) -> tuple[RunSteps, dict[str, nnx.State]]:
    """The jitted steps of `model` for a run of `config` over `mesh`, and the replicated
    train state {"model": model state, "opt": optimizer state} they start from.

    The train step uses `model`'s train-mode graph, the evaluation step its eval-mode graph;
    `model` is left in eval mode.
    """
    model.train()
    opt = optim.make_optimizer(model, config.optim)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(opt)
    recal_batches = int(config.get("bn_recalibration_batches") or 0)
    stats_step = (
        make_batch_stats_step(zero_momentum_graphdef(model), mesh) if recal_batches else None
    )
    model.eval()
    loss = make_loss(config)  # segmentation (masks) or classification (image labels)
    steps = RunSteps(
        loss=loss,
        train_step=make_train_step(model_def, opt_def, loss, mesh),
        eval_step=make_eval_step(nnx.graphdef(model), loss, mesh),
        stats_step=stats_step,
        recal_batches=recal_batches,
    )
    return steps, sharding.replicate({"model": model_state, "opt": opt_state}, mesh)
