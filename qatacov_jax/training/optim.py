"""Optimizer: the paper's Adam, applied only to trainable variables.

Freezing is decided by the model (frozen encoder weights are `FrozenParam`, not
`nnx.Param`; BatchNorm scale/offset stay `nnx.Param` as in segmentation_models 1.x), so the
optimizer needs a single filter, `TRAINABLE`, for both the gradient and the update: frozen
weights get neither gradients nor Adam moments (which also saves their memory).
"""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from qatacov_jax.models import TRAINABLE


def make_tx(optim_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Builds the optax transformation from `config.optim`.

    Fields: `name` ("adam" or "adamw"), `lr`, `b1`, `b2`, `eps` (the paper configs use Keras'
    Adam epsilon 1e-7, the authors' framework; optax's default is 1e-8), `weight_decay` (adamw
    only), `grad_clip_norm` (None or a global-norm bound), `schedule` ("constant" or
    "cosine", with `decay_steps` filled in by the trainer).
    """
    name = optim_cfg.get("name", "adam")
    lr = float(optim_cfg.lr)
    if lr <= 0:
        raise ValueError(f"config.optim.lr must be positive, got {lr}.")
    schedule = optim_cfg.get("schedule", "constant")
    if schedule == "constant":
        learning_rate: optax.ScalarOrSchedule = lr
    elif schedule == "cosine":
        decay_steps = optim_cfg.get("decay_steps")
        if not decay_steps:
            raise ValueError("config.optim.schedule='cosine' needs config.optim.decay_steps > 0.")
        learning_rate = optax.cosine_decay_schedule(lr, int(decay_steps))
    else:
        raise ValueError(
            f"Unknown config.optim.schedule {schedule!r}; choose 'constant' or 'cosine'."
        )
    kwargs = dict(b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps))
    if name == "adam":
        tx = optax.adam(learning_rate, **kwargs)
    elif name == "adamw":
        tx = optax.adamw(learning_rate, weight_decay=float(optim_cfg.weight_decay), **kwargs)
    else:
        raise ValueError(f"Unknown config.optim.name {name!r}; choose 'adam' or 'adamw'.")
    clip = optim_cfg.get("grad_clip_norm")
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
    return tx


def make_optimizer(
    model: nnx.Module, optim_cfg: ml_collections.ConfigDict, wrt: nnx.filterlib.Filter = None
) -> nnx.Optimizer:
    """`nnx.Optimizer` over the trainable variables of `model` (frozen ones excluded)."""
    return nnx.Optimizer(model, make_tx(optim_cfg), wrt=wrt if wrt is not None else TRAINABLE)
