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

`make_loss` picks a run's loss from its config: a `LossSpec` (segmentation: focal + dice or
pixel cross-entropy) or a `ClassificationLoss`; either also names the batch key it compares
the logits with and how logits become probabilities (what the jitted steps need).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from qatacov_jax.models import CLASSIFIER_ARCH, foreground_probability

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1e-5
DICE_REDUCTIONS = ("batch", "image")


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def foreground_logit(logits: jax.Array) -> jax.Array:
    """(B, H, W, 2) logits -> (B, H, W, 1) foreground logit, in the input's dtype; any other
    channel count is returned as it is.

    With 2 channels (background, foreground) it is the gap z1 - z0: softmax channel 1 is
    sigmoid(z1 - z0) and the log-softmax of 2 classes the log-sigmoid of the gap, so the
    2-class losses are the 1-channel ones of the gap.
    """
    if logits.shape[-1] == 2:
        return logits[..., 1:2] - logits[..., 0:1]
    return logits


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
    z = foreground_logit(logits.astype(jnp.float32))
    if z.shape[-1] != 1:
        raise ValueError(f"pixel_crossentropy takes 1 or 2 channels, got {logits.shape[-1]}.")
    p = masks.astype(jnp.float32)
    per_pixel = -(p * jax.nn.log_sigmoid(z) + (1.0 - p) * jax.nn.log_sigmoid(-z))
    loss = _weighted_mean(jnp.mean(per_pixel, axis=(1, 2, 3)), weights)
    return loss, {"crossentropy": loss}


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The hashable part of `config.loss` (a static argument of the jitted steps): the
    segmentation models' focal + dice loss on per-pixel logits (B, H, W, 1)."""

    target: ClassVar[str] = "mask"  # the batch key the loss compares the logits with

    # "focal_dice" (paper 1's hybrid loss) or "cross_entropy" (paper 2's). Either takes
    # 1-channel (sigmoid) or 2-channel (softmax) logits: with 2 channels the focal + dice
    # loss reads the logit difference z1 - z0, whose sigmoid is softmax channel 1.
    name: str = "focal_dice"
    alpha: float = FOCAL_ALPHA
    gamma: float = FOCAL_GAMMA
    dice_reduction: str = "batch"
    smooth: float = DICE_SMOOTH

    @classmethod
    def from_config(cls, loss_cfg: ml_collections.ConfigDict | None) -> LossSpec:
        if loss_cfg is None:
            return cls()
        name = str(loss_cfg.get("name") or "focal_dice")
        if name not in SEGMENTATION_LOSSES:
            raise ValueError(
                f"config.loss.name={name!r}: segmentation models train with one of "
                f"{list(SEGMENTATION_LOSSES)}."
            )
        return cls(
            name=name,
            alpha=float(loss_cfg.get("alpha", FOCAL_ALPHA)),
            gamma=float(loss_cfg.get("gamma", FOCAL_GAMMA)),
            dice_reduction=str(loss_cfg.get("dice_reduction", "batch")),
            smooth=float(loss_cfg.get("smooth", DICE_SMOOTH)),
        )

    def __call__(self, logits: jax.Array, masks: jax.Array, weights: jax.Array | None = None):
        if self.name == "cross_entropy":
            return pixel_crossentropy(logits, masks, weights=weights)
        return hybrid_loss(
            foreground_logit(logits),
            masks,
            alpha=self.alpha,
            gamma=self.gamma,
            dice_reduction=self.dice_reduction,
            smooth=self.smooth,
            weights=weights,
        )

    @staticmethod
    def probabilities(logits: jax.Array) -> jax.Array:
        """(B, H, W, 1 or 2) logits -> (B, H, W, 1) per-pixel foreground probabilities
        (sigmoid, or softmax channel 1), float32."""
        return foreground_probability(logits)


@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
    """Categorical cross-entropy on (B, 2) softmax logits against the image `label`
    (the paper's COVID-19 classifiers; no options, so `config.loss` only names it)."""

    target: ClassVar[str] = "label"

    def __call__(self, logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None):
        return categorical_crossentropy(logits, labels, weights=weights)

    @staticmethod
    def probabilities(logits: jax.Array) -> jax.Array:
        """(B, 2) logits -> (B,) COVID-19 probability (softmax, class 1), float32."""
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]


Loss = LossSpec | ClassificationLoss
SEGMENTATION_LOSSES = ("focal_dice", "cross_entropy")


def make_loss(config: ml_collections.ConfigDict) -> Loss:
    """The loss of a run: categorical cross-entropy for `model.arch == "classifier"`, else the
    segmentation loss of `config.loss`.

    Raises:
      ValueError: a classifier config whose `loss.name` is not categorical cross-entropy.
    """
    if config.model.get("arch") != CLASSIFIER_ARCH:
        return LossSpec.from_config(config.get("loss"))
    name = (config.get("loss") or {}).get("name", "categorical_crossentropy")
    if name != "categorical_crossentropy":
        raise ValueError(
            f"config.loss.name={name!r}: classifiers train with 'categorical_crossentropy' "
            "(paper 1's activation-map baseline)."
        )
    return ClassificationLoss()
