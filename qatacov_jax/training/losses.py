"""The hybrid segmentation loss of Degerli et al.: focal + dice, summed (paper eqs. 5 and 7).

With q = sigmoid(z) the predicted probability and p in {0, 1} the ground truth of a pixel:

    F(p, q) = -alpha (1 - q)^gamma p log q - (1 - alpha) q^gamma (1 - p) log(1 - q)   (eq. 5)
    D(p, q) = 1 - 2 sum(p q) / (sum(p) + sum(q))                                    (eq. 7)
    loss    = F + D

Reductions. The paper writes the sums of eq. 7 over (h, w) and says nothing about batches.
Its models are the Keras `segmentation_models` ones (docs/original_models.md), whose predefined
`binary_focal_dice_loss` is exactly "focal(alpha=0.25, gamma=2) + dice, summed"; that loss
averages the focal term over every pixel of the batch and takes the dice sums over the whole
batch (`per_image=False`) with a smoothing constant 1e-5 in numerator and denominator. We
follow it by default (`dice_reduction="batch"`) because it behaves well on the many
all-background control images: a per-image dice is ~1 for *any* non-empty prediction on an
empty mask, whereas the batch-wide sums let those images count only through their false
positives. `dice_reduction="image"` gives eq. 7 per image, averaged over the batch.

Everything is computed from logits: log q = log_sigmoid(z) and log(1 - q) = log_sigmoid(-z)
are exact and finite for any z, so no clipping is needed (Keras clips q to [1e-7, 1 - 1e-7],
which only differs for |z| > ~16).

`categorical_crossentropy` is the loss of the activation-map baseline (paper 1 trains the
encoders as 2-class softmax classifiers with categorical cross-entropy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1e-5
DICE_REDUCTIONS = ("batch", "image")


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    *,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Binary focal loss (eq. 5) averaged over all pixels.

    Args:
      logits: (B, H, W, 1) pre-sigmoid predictions z (any float dtype; computed in float32).
      targets: (B, H, W, 1) ground truth p in {0, 1} (soft values in [0, 1] also work).
      alpha: weight of the positive class.
      gamma: focusing exponent (0 gives the alpha-balanced cross-entropy, eq. 4).
      weights: optional (B,) per-example weights (0 drops padding examples).

    Returns:
      Scalar float32.
    """
    z = logits.astype(jnp.float32)
    p = targets.astype(jnp.float32)
    q = jax.nn.sigmoid(z)
    log_q = jax.nn.log_sigmoid(z)
    log_1mq = jax.nn.log_sigmoid(-z)
    per_pixel = (
        -alpha * (1.0 - q) ** gamma * p * log_q - (1.0 - alpha) * q**gamma * (1.0 - p) * log_1mq
    )
    per_example = jnp.mean(per_pixel, axis=tuple(range(1, per_pixel.ndim)))
    return _weighted_mean(per_example, weights)


def dice_loss(
    logits: jax.Array,
    targets: jax.Array,
    *,
    reduction: str = "batch",
    smooth: float = DICE_SMOOTH,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Soft dice loss (eq. 7) on sigmoid probabilities, smoothed so empty masks are defined.

    D = 1 - (2 sum(p q) + smooth) / (sum(p) + sum(q) + smooth); an empty mask with an
    empty prediction gives 0.

    Args:
      logits: (B, H, W, 1) pre-sigmoid predictions.
      targets: (B, H, W, 1) ground truth in {0, 1}.
      reduction: "batch" (sums over the whole batch, as segmentation_models) or "image"
        (eq. 7 per image, then the mean over images).
      smooth: added to numerator and denominator.
      weights: optional (B,) per-example weights; with "batch" they multiply each example's
        sums (0 removes padding), with "image" they weight the mean.

    Returns:
      Scalar float32.
    """
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(
            f"Unknown dice reduction {reduction!r}; choose one of {DICE_REDUCTIONS} "
            "(config.loss.dice_reduction)."
        )
    q = jax.nn.sigmoid(logits.astype(jnp.float32))
    p = targets.astype(jnp.float32)
    axes = tuple(range(1, q.ndim))
    inter = jnp.sum(p * q, axis=axes)  # (B,)
    total = jnp.sum(p, axis=axes) + jnp.sum(q, axis=axes)  # (B,)
    if reduction == "image":
        per_example = 1.0 - (2.0 * inter + smooth) / (total + smooth)
        return _weighted_mean(per_example, weights)
    if weights is not None:
        inter, total = inter * weights, total * weights
    return 1.0 - (2.0 * jnp.sum(inter) + smooth) / (jnp.sum(total) + smooth)


def hybrid_loss(
    logits: jax.Array,
    targets: jax.Array,
    *,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    dice_reduction: str = "batch",
    smooth: float = DICE_SMOOTH,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Focal + dice, summed (the paper's hybrid loss).

    Args:
      logits: (B, H, W, 1) pre-sigmoid predictions (bf16 allowed; the loss is float32).
      targets: (B, H, W, 1) ground truth in {0, 1}.
      weights: optional (B,) per-example weights (e.g. the eval batch's `valid` mask).

    Returns:
      (loss, {"focal": ..., "dice": ...}), all float32 scalars.
    """
    f = focal_loss(logits, targets, alpha=alpha, gamma=gamma, weights=weights)
    d = dice_loss(logits, targets, reduction=dice_reduction, smooth=smooth, weights=weights)
    return f + d, {"focal": f, "dice": d}


def categorical_crossentropy(
    logits: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Categorical cross-entropy of a softmax classifier (the activation-map baseline's loss).

    Keras' `categorical_crossentropy` on one-hot targets: -log softmax(z)[label], averaged
    over the batch; computed from logits with `log_softmax`, so it is finite for any z.

    Args:
      logits: (B, C) pre-softmax scores (any float dtype; computed in float32).
      labels: (B,) int class indices (1 = COVID-19).
      weights: optional (B,) per-example weights (0 drops padding examples).

    Returns:
      (loss, {}): a float32 scalar, and no parts (the same shape as `hybrid_loss`'s result).
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, labels.astype(jnp.int32).reshape(-1, 1), axis=-1)
    return _weighted_mean(-picked[:, 0], weights), {}


def pixel_crossentropy(
    logits: jax.Array, masks: jax.Array, *, weights: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-pixel cross-entropy of a segmentation model (paper 2's loss), averaged over pixels.

    With 2 channels (background, foreground) it is PyTorch's `nn.CrossEntropyLoss` on the
    class map `mask`: -log softmax(z)[mask]; with 1 channel the binary cross-entropy of
    sigmoid(z) (the same function of the logit difference). Computed from logits.

    Args:
      logits: (B, H, W, 1 or 2) (any float dtype; computed in float32).
      masks: (B, H, W, 1) ground truth in {0, 1}.
      weights: optional (B,) per-example weights (0 drops padding examples).

    Returns:
      (loss, {"crossentropy": loss}): float32 scalars.
    """
    z = logits.astype(jnp.float32)
    if z.shape[-1] == 2:
        z = z[..., 1:2] - z[..., 0:1]  # log-softmax of 2 classes = log-sigmoid of the gap
    elif z.shape[-1] != 1:
        raise ValueError(f"pixel_crossentropy takes 1 or 2 channels, got {z.shape[-1]}.")
    p = masks.astype(jnp.float32)
    per_pixel = -(p * jax.nn.log_sigmoid(z) + (1.0 - p) * jax.nn.log_sigmoid(-z))
    loss = _weighted_mean(jnp.mean(per_pixel, axis=(1, 2, 3)), weights)
    return loss, {"crossentropy": loss}
