"""Training: the data-parallel jitted step, per-epoch evaluation and `train_and_evaluate`.

One code path for 1 CPU, N GPUs and several hosts: the model and optimizer state are split
once into a graph definition (static) and a state pytree, replicated over the mesh; every
batch is sharded over the mesh's `data` axis. `jax.jit` compiles a pure
`train_step(state, batch)` with those shardings, so XLA inserts the gradient all-reduce and
BatchNorm batch statistics span the *global* batch (the maths is that of one big device).
The state buffers are donated: the update happens in place, without a second copy of the
model + Adam moments in device memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax import checkpoint as ckpt
from qatacov_jax import losses, optim, sharding
from qatacov_jax.metrics import ConfusionCounts
from qatacov_jax.preprocessing import Preprocessing

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteLossError(FloatingPointError):
    """Training diverged (NaN/Inf loss or gradient)."""


# ----------------------------------------------------------------------------- model


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    name = config.model.get("dtype", "float32") or "float32"
    if name not in DTYPES:
        raise ValueError(f"Unknown config.model.dtype {name!r}; choose one of {sorted(DTYPES)}.")
    return DTYPES[name]


def build_model(
    config: ml_collections.ConfigDict, *, seed: int, load_weights: bool = True
) -> tuple[nnx.Module, Preprocessing]:
    """The segmentation model of `config.model`, and the preprocessing its weights expect.

    With `config.model.encoder_weights` (a directory written by `qatacov_jax.weights.port`)
    the encoder is filled from it (unless `load_weights=False`, used when a checkpoint will
    replace all weights anyway) and the preprocessing comes from its manifest; without, the
    encoder is randomly initialised and `config.model.preprocessing` (or the encoder's
    standard mode) applies.
    """
    from qatacov_jax import models

    m = config.model
    weights_dir = Path(m.encoder_weights) if m.get("encoder_weights") else None
    if weights_dir is not None and not weights_dir.exists():
        raise FileNotFoundError(
            f"config.model.encoder_weights={weights_dir} does not exist. Port weights first "
            "(scripts/port_weights.py) or set --config.model.encoder_weights=None for "
            "random initialisation."
        )
    if weights_dir is not None:
        from qatacov_jax.weights import load_encoder_weights, weights_preprocessing

        # Checked before any model is built: the manifest must be for this architecture.
        preprocessing = weights_preprocessing(m.encoder, weights_dir)
    elif m.get("preprocessing"):
        preprocessing = Preprocessing.from_mode(m.preprocessing)
    else:
        preprocessing = Preprocessing.for_encoder(m.encoder)

    rngs = nnx.Rngs(seed)
    dtype = compute_dtype(config)
    encoder = models.create_encoder(m.encoder, rngs=rngs, dtype=dtype)
    if weights_dir is not None and load_weights:
        preprocessing = load_encoder_weights(encoder, weights_dir)
    model = models.create_model(m.arch, encoder, frozen=bool(m.frozen), rngs=rngs, dtype=dtype)
    return model, preprocessing


def count_trainable(model: nnx.Module) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts (the Keras convention of Table 8)."""
    from qatacov_jax.models import count_params

    c = count_params(model)
    return int(c.trainable), int(c.non_trainable)


# ------------------------------------------------------------------------------ steps


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The hashable part of `config.loss` (a static argument of the jitted steps)."""

    alpha: float = losses.FOCAL_ALPHA
    gamma: float = losses.FOCAL_GAMMA
    dice_reduction: str = "batch"
    smooth: float = losses.DICE_SMOOTH

    @classmethod
    def from_config(cls, loss_cfg: ml_collections.ConfigDict | None) -> LossSpec:
        if loss_cfg is None:
            return cls()
        return cls(
            alpha=float(loss_cfg.get("alpha", losses.FOCAL_ALPHA)),
            gamma=float(loss_cfg.get("gamma", losses.FOCAL_GAMMA)),
            dice_reduction=str(loss_cfg.get("dice_reduction", "batch")),
            smooth=float(loss_cfg.get("smooth", losses.DICE_SMOOTH)),
        )

    def __call__(self, logits: jax.Array, masks: jax.Array, weights: jax.Array | None = None):
        return losses.hybrid_loss(
            logits,
            masks,
            alpha=self.alpha,
            gamma=self.gamma,
            dice_reduction=self.dice_reduction,
            smooth=self.smooth,
            weights=weights,
        )


def _train_step(
    model_def: nnx.GraphDef,
    opt_def: nnx.GraphDef,
    loss: LossSpec,
    state: dict[str, nnx.State],
    batch: Mapping[str, jax.Array],
) -> tuple[dict[str, nnx.State], dict[str, jax.Array]]:
    """One optimisation step on a global batch (pure; jitted by `make_train_step`).

    Args:
      state: {"model": model state, "opt": optimizer state}.
      batch: `image` (B, H, W, 3) float32 preprocessed, `mask` (B, H, W, 1) {0, 1}.

    Returns:
      (new state, metrics): `loss`, `focal`, `dice`, `grad_norm` float32 scalars.
    """
    from qatacov_jax.models import TRAINABLE

    model = nnx.merge(model_def, state["model"])
    opt = nnx.merge(opt_def, state["opt"])

    def loss_fn(model: nnx.Module) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model(batch["image"])
        return loss(logits, batch["mask"])

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE), has_aux=True)
    (value, parts), grads = grad_fn(model)
    opt.update(model, grads)
    metrics = {"loss": value, **parts, "grad_norm": _global_norm(grads)}
    return {"model": nnx.state(model), "opt": nnx.state(opt)}, metrics


def _global_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


@functools.lru_cache(maxsize=16)
def make_train_step(
    model_def: nnx.GraphDef, opt_def: nnx.GraphDef, loss: LossSpec, mesh: Mesh
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


def _eval_step(
    model_def: nnx.GraphDef, loss: LossSpec, model_state: nnx.State, batch: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """Sufficient statistics of the validation metrics for one global batch.

    Returns sums over the batch's valid rows: `loss_sum` (batch loss x valid rows),
    `n`, pixel and detection confusion counts at 0.5 ("any pixel >= 0.5" = COVID-19).
    """
    model = nnx.merge(model_def, model_state)
    logits = model(batch["image"])
    valid = batch["valid"].astype(jnp.float32)
    value, _ = loss(logits, batch["mask"], valid)
    n = jnp.sum(valid)
    probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    b = probs.shape[0]
    pred = probs.reshape(b, -1) >= 0.5
    truth = batch["mask"].reshape(b, -1) > 0.5
    v = batch["valid"].reshape(b, 1)
    out = {"loss_sum": value * n, "n": n}
    for k, (p, t) in {"pixel": (pred, truth), "sample": (pred.any(1, keepdims=True), None)}.items():
        if t is None:
            t = (batch["label"] == 1).reshape(b, 1)
        out[f"{k}_tp"] = jnp.sum(p & t & v)
        out[f"{k}_fp"] = jnp.sum(p & ~t & v)
        out[f"{k}_tn"] = jnp.sum(~p & ~t & v)
        out[f"{k}_fn"] = jnp.sum(~p & t & v)
    return out


@functools.lru_cache(maxsize=16)
def make_eval_step(model_def: nnx.GraphDef, loss: LossSpec, mesh: Mesh) -> Callable[..., Any]:
    """`eval_step(model_state, batch) -> statistics`, jitted over `mesh` (no donation)."""
    rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
    return jax.jit(
        functools.partial(_eval_step, model_def, loss),
        in_shardings=(rep, dat),
        out_shardings=rep,
    )


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


def evaluate(
    eval_step: Callable[..., Any], model_state: nnx.State, batches: Iterator[Mapping[str, Any]]
) -> dict[str, float]:
    """Validation metrics over one pass: loss, pixel F1/precision/sensitivity/specificity,
    detection sensitivity/specificity/accuracy. Counts are summed on the host in int64."""
    totals: dict[str, Any] = {}
    for batch in batches:
        stats = eval_step(model_state, {k: batch[k] for k in ("image", "mask", "label", "valid")})
        for k, v in stats.items():
            totals[k] = totals[k] + v if k in totals else v
    if not totals:
        raise ValueError("The validation split is empty; check config.data and config.fold.")
    totals = {k: np.asarray(jax.device_get(v), np.float64) for k, v in totals.items()}
    n = float(totals["n"])
    pixel = ConfusionCounts(*(int(totals[f"pixel_{k}"]) for k in ("tp", "fp", "tn", "fn")))
    sample = ConfusionCounts(*(int(totals[f"sample_{k}"]) for k in ("tp", "fp", "tn", "fn")))
    pm, sm = pixel.metrics(), sample.metrics()
    return {
        "loss": float(totals["loss_sum"]) / max(n, 1.0),
        "num_examples": int(n),
        "pixel_f1": pm["f1"],
        "pixel_precision": pm["precision"],
        "pixel_sensitivity": pm["sensitivity"],
        "pixel_specificity": pm["specificity"],
        "pixel_iou": pm["iou"],
        "detection_sensitivity": sm["sensitivity"],
        "detection_specificity": sm["specificity"],
        "detection_accuracy": sm["accuracy"],
        **{f"pixel_{k}": v for k, v in pixel.to_dict().items()},
        **{f"detection_{k}": v for k, v in sample.to_dict().items()},
    }


# ------------------------------------------------------------------------------ loop


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
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # pragma: no cover - private API moved; assume not initialised
        return False


def _check_finite(metrics: Mapping[str, float], step: int, store: ckpt.CheckpointStore) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        last = store.latest_step()
        where = (
            f"the last good checkpoint (step {last}) is kept in {store.directory / 'latest'} "
            "and a restart resumes from it"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"Non-finite training metrics {bad} by step {step}; stopping without saving this "
            f"state ({where}). Lower config.optim.lr, set config.optim.grad_clip_norm, use "
            "config.model.dtype='float32', or check the data for corrupt masks."
        )


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in stacked])) for k in stacked[0]}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    step_callback: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates it.

    Every epoch ends with an evaluation on the held-out split (`config.eval_split`) of fold
    `config.fold`, a best-on-`config.best_metric` checkpoint and a periodic checkpoint.

    Args:
      config: the full config (see configs/default.py).
      workdir: the run directory (layout in `qatacov_jax.checkpoint`).
      step_callback: called with the 1-based step number after each step (tests use it to
        interrupt a run; profilers can use it too).

    Returns:
      The contents of `workdir/results.json`.
    """
    from qatacov_jax import data

    maybe_initialize_distributed(config)
    workdir = Path(workdir).absolute()
    ckpt.check_or_write_config(workdir, config)

    mesh = sharding.make_mesh(config.get("num_devices"))
    global_batch = int(config.batch_size)
    sharding.check_batch_size(global_batch, mesh)
    fold = None if config.fold is None else int(config.fold)

    model, preprocessing = build_model(config, seed=int(config.seed))
    ckpt.write_json(workdir / ckpt.PREPROCESSING_FILE, preprocessing.to_dict())
    trainable, non_trainable = count_trainable(model)
    model.train()
    opt = optim.make_optimizer(model, config.optim)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(opt)
    recal_batches = int(config.get("bn_recalibration_batches") or 0)
    stats_step = (
        make_batch_stats_step(zero_momentum_graphdef(model), mesh) if recal_batches else None
    )
    model.eval()
    eval_def = nnx.graphdef(model)
    loss = LossSpec.from_config(config.get("loss"))
    train_step = make_train_step(model_def, opt_def, loss, mesh)
    eval_step = make_eval_step(eval_def, loss, mesh)
    state = sharding.replicate({"model": model_state, "opt": opt_state}, mesh)
    del model, opt, model_state, opt_state

    n_train = data.num_examples(config.data, fold=fold, split="train")
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"The training split has {n_train} examples, fewer than config.batch_size="
            f"{global_batch}; lower the batch size."
        )
    if config.get("steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(config.steps_per_epoch))
    total_steps = int(config.num_epochs) * steps_per_epoch

    store = ckpt.CheckpointStore(
        workdir, keep=int(config.get("keep_checkpoints", 2)), best_metric=config.best_metric
    )
    train_iter = data.train_iterator(
        config.data,
        fold=fold,
        global_batch_size=global_batch,
        preprocessing=preprocessing,
        mesh=mesh,
        seed=int(config.seed),
    )
    meta: dict[str, Any] = {"epoch": 0, "best": None, "history": [], "train_time_s": 0.0}
    start_step = 0
    if store.latest_step() is not None:
        start_step, state, data_state, meta = store.restore_latest(state, sharding.replicated(mesh))
        train_iter.set_state(data_state)
        logging.info("Resumed %s from step %d (epoch %d).", workdir, start_step, meta["epoch"])

    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0, asynchronous=False
    )
    if start_step == 0:
        writer.write_hparams(_flat_hparams(config))
    progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=writer, every_secs=30.0
    )
    log_every = max(1, int(config.get("log_every_steps", 50)))
    ckpt_every = int(config.get("checkpoint_every_steps") or 0)

    def recalibrate() -> None:
        # A separate, seeded stream of training batches: the main iterator's position (and
        # so exact resume) is unaffected.
        batches = data.train_iterator(
            config.data,
            fold=fold,
            global_batch_size=global_batch,
            preprocessing=preprocessing,
            mesh=mesh,
            seed=int(config.seed) + 1,
        )
        state["model"] = recalibrate_batch_norm(stats_step, state["model"], batches, recal_batches)
        batches.close()

    def do_eval() -> dict[str, float]:
        batches = data.eval_iterator(
            config.data,
            fold=fold,
            split=config.eval_split,
            global_batch_size=global_batch,
            preprocessing=preprocessing,
            mesh=mesh,
        )
        return evaluate(eval_step, state["model"], batches)

    history: list[dict[str, jax.Array]] = []
    t0 = time.perf_counter()
    train_time_before = float(meta["train_time_s"])
    logging.info(
        "Training %s/%s (frozen=%s): %d trainable / %d non-trainable parameters, %d steps of "
        "%d on %d devices, %d processes.",
        config.model.arch,
        config.model.encoder,
        config.model.frozen,
        trainable,
        non_trainable,
        total_steps,
        global_batch,
        mesh.devices.size,
        jax.process_count(),
    )
    last_train: dict[str, float] = {}
    try:
        for step in range(start_step + 1, total_steps + 1):
            batch = next(train_iter)
            state, step_metrics = train_step(
                state, {"image": batch["image"], "mask": batch["mask"]}
            )
            history.append(step_metrics)
            progress(step)
            end_of_epoch = step % steps_per_epoch == 0
            periodic = ckpt_every > 0 and step % ckpt_every == 0
            if step % log_every == 0 or end_of_epoch or periodic or step == total_steps:
                last_train = _mean_metrics(history)
                history = []
                # Checked before anything is saved, so a checkpoint never holds a NaN state.
                _check_finite(last_train, step, store)
                writer.write_scalars(step, {f"train/{k}": v for k, v in last_train.items()})
            if end_of_epoch:
                epoch = step // steps_per_epoch
                if recal_batches:
                    recalibrate()
                val = do_eval()
                writer.write_scalars(step, {f"val/{k}": v for k, v in val.items()})
                meta["epoch"] = epoch
                meta["history"].append({"epoch": epoch, "step": step, "train": last_train, **val})
                score = val[config.best_metric]
                if math.isfinite(score) and (meta["best"] is None or score > meta["best"]["score"]):
                    meta["best"] = {"epoch": epoch, "step": step, "score": score, "metrics": val}
                    store.save_best(step, state["model"], _finite_only(val))
            if end_of_epoch or periodic or step == total_steps:
                meta["train_time_s"] = train_time_before + time.perf_counter() - t0
                store.save_latest(step, state, train_iter.get_state(), meta)
            if step_callback is not None:
                step_callback(step)
        store.wait()
    finally:
        writer.flush()
        store.close()

    results = _results(config, meta, trainable, non_trainable, total_steps, steps_per_epoch)
    results["preprocessing"] = preprocessing.to_dict()
    ckpt.write_json(workdir / "results.json", results)
    return results


def _finite_only(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat = ckpt._flatten(ckpt.config_to_dict(config))
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def _results(
    config: ml_collections.ConfigDict,
    meta: Mapping[str, Any],
    trainable: int,
    non_trainable: int,
    total_steps: int,
    steps_per_epoch: int,
) -> dict[str, Any]:
    final = meta["history"][-1] if meta["history"] else None
    return {
        "final": final,
        "best": meta["best"],
        "best_metric": config.best_metric,
        "history": meta["history"],
        "fold": config.fold,
        "eval_split": config.eval_split,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": meta["epoch"],
        "train_time_s": meta["train_time_s"],
        "params": {"trainable": trainable, "non_trainable": non_trainable},
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "config": ckpt.config_to_dict(config),
    }
