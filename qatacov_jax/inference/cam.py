"""Grad-CAM and Grad-CAM++: the activation maps of the COVID-19 classifiers, jitted on the mesh.

Paper 1 compares its infection maps with the Grad-CAM maps of classifiers built from the same
encoders (eqs. 14-15). With A^k (h, w) the k-th channel of the encoder's coarsest feature map
and S the COVID-19 class score *before* the softmax:

    Grad-CAM    w_k = mean_ij dS/dA^k_ij                        (eq. 14: GAP of the gradients)
    Grad-CAM++  w_k = sum_ij alpha^k_ij relu(dS/dA^k_ij),
                alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3),  g = dS/dA^k_ij
    map         relu(sum_k w_k A^k)                             (eq. 15)

Grad-CAM++ (Chattopadhay et al. 2018) differentiates Y = exp(S); for a network whose score is
linear in A (our heads: global average pooling + Dense) the second and third derivatives of Y
are exp(S) g^2 and exp(S) g^3 exactly. exp(S) then cancels in alpha and leaves a positive
per-image factor on every w_k, which the per-image normalisation below removes; we drop it,
because exp of a large logit overflows float32.

Each map is upsampled (bilinear) to the input size and normalised to [0, 1] per image
(min-max; a constant map becomes 0), so it can be thresholded and scored like the
segmentation model's infection probabilities.

`make_cam_fn` follows `predictor.make_predict_fn`: the classifier is split once, its state
replicated, and one pure function (forward, one backward to the feature map, all methods) is
jitted over a batch sharded on the mesh's `data` axis; no Python loop per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models.folding import fold_batchnorm
from qatacov_jax.runtime.sharding import data_sharding, replicate

COVID_CLASS = 1  # class index of COVID-19 (the datasets' `label`)


class CamModel(Protocol):
    """What Grad-CAM needs of a classifier (`models.EncoderClassifier` has it)."""

    def features(self, x: jax.Array) -> jax.Array: ...  # (B, H, W, 3) -> (B, h, w, C)

    def classify(self, features: jax.Array) -> jax.Array: ...  # (B, h, w, C) -> (B, K)


def gradcam_weights(activations: jax.Array, gradients: jax.Array) -> jax.Array:
    """Grad-CAM channel weights: the global average of the gradients (eq. 14).

    Args:
      activations: (B, h, w, C) feature map A (unused; the signature of all weightings).
      gradients: (B, h, w, C) dS/dA.

    Returns:
      (B, C) float32.
    """
    del activations
    return jnp.mean(gradients.astype(jnp.float32), axis=(1, 2))


def gradcampp_weights(activations: jax.Array, gradients: jax.Array) -> jax.Array:
    """Grad-CAM++ channel weights (module docstring; exp(S) dropped, it cancels).

    Args:
      activations: (B, h, w, C) feature map A.
      gradients: (B, h, w, C) g = dS/dA.

    Returns:
      (B, C) float32: sum_ij alpha_ij relu(g_ij).
    """
    a = activations.astype(jnp.float32)
    g = gradients.astype(jnp.float32)
    g2 = g * g
    denom = 2.0 * g2 + jnp.sum(a, axis=(1, 2), keepdims=True) * g2 * g
    # alpha only matters where relu(g) > 0; elsewhere (g <= 0, where the denominator can be 0
    # or negative) it is set to 0 so no division by zero reaches the result.
    alpha = jnp.where(g > 0, g2 / jnp.where(g > 0, denom, 1.0), 0.0)
    return jnp.sum(alpha * jax.nn.relu(g), axis=(1, 2))


WEIGHTINGS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "gradcam": gradcam_weights,
    "gradcampp": gradcampp_weights,
}
METHODS = tuple(WEIGHTINGS)


def weighted_map(activations: jax.Array, weights: jax.Array, size: tuple[int, int]) -> jax.Array:
    """relu(sum_k w_k A^k), bilinearly upsampled to `size` and min-max normalised per image.

    Args:
      activations: (B, h, w, C).
      weights: (B, C).
      size: (H, W) of the input images.

    Returns:
      (B, H, W) float32 in [0, 1] (all 0 where the map is constant).
    """
    cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", activations.astype(jnp.float32), weights))
    cam = jax.image.resize(cam, (cam.shape[0], *size), method="bilinear")
    lo = jnp.min(cam, axis=(1, 2), keepdims=True)
    span = jnp.max(cam, axis=(1, 2), keepdims=True) - lo
    return jnp.where(span > 0, (cam - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def class_activation_maps(
    model: CamModel,
    images: jax.Array,
    *,
    methods: Sequence[str] = METHODS,
    class_index: int = COVID_CLASS,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """The activation maps of one class for a batch (pure; call it inside `jax.jit`).

    One forward pass to the coarsest feature map, one backward pass from the class score to
    it; every method reuses both. The score of image i depends only on image i (the head is
    pooling + Dense; BatchNorm is in inference mode), so the gradient of the batch's summed
    score is every image's own gradient.

    Args:
      model: a classifier in eval mode with `features` and `classify` (`CamModel`).
      images: (B, H, W, 3) preprocessed inputs.
      methods: names in `WEIGHTINGS`.
      class_index: the class whose score is explained (1 = COVID-19).

    Returns:
      ({method: (B, H, W) float32 maps in [0, 1]}, (B, K) float32 logits).
    """
    unknown = [m for m in methods if m not in WEIGHTINGS]
    if unknown:
        raise ValueError(f"Unknown CAM method(s) {unknown}; choose from {METHODS}.")
    activations = model.features(images)

    def score(feats: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = model.classify(feats)
        return jnp.sum(logits[:, class_index]), logits

    gradients, logits = jax.grad(score, has_aux=True)(activations)
    size = (int(images.shape[1]), int(images.shape[2]))
    maps = {
        m: weighted_map(activations, WEIGHTINGS[m](activations, gradients), size) for m in methods
    }
    return maps, logits


def make_cam_fn(
    model: nnx.Module,
    mesh: Mesh,
    *,
    methods: Sequence[str] = METHODS,
    preprocessing: Preprocessing | None = None,
    class_index: int = COVID_CLASS,
    fold: bool = True,
) -> Callable[[Any], tuple[dict[str, jax.Array], jax.Array]]:
    """A jitted function from a batch of images to activation maps, on all devices.

    Args:
      model: a trained classifier (`models.EncoderClassifier`); it is put in eval mode.
      mesh: the batch is split over its `data` axis, the classifier state replicated.
      methods: names in `WEIGHTINGS`.
      preprocessing: if given, inputs are images in [0, 1] (1 or 3 channels) and this is
        applied inside the jitted function; None: inputs are already preprocessed.
      class_index: the class explained (1 = COVID-19).
      fold: fold BatchNorm into the encoder's convs first (`models.folding`; the same
        function, faster).

    Returns:
      cams(images) -> ({method: (B, H, W) maps in [0, 1]}, (B, K) logits), `jax.Array`s
      sharded over `data`. `images` is (B, H, W, C), NumPy or a sharded `jax.Array`; rows are
      padded to a multiple of the device count and the padding dropped from the result.
    """
    model.eval()
    graphdef, state = nnx.split(fold_batchnorm(model) if fold else model)
    state = replicate(state, mesh)
    sharding = data_sharding(mesh)
    n_dev = mesh.devices.size
    methods = tuple(methods)

    def compute(state: nnx.State, images: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        if preprocessing is not None:
            images = preprocessing(images.astype(jnp.float32))
        return class_activation_maps(
            nnx.merge(graphdef, state), images, methods=methods, class_index=class_index
        )

    jitted = jax.jit(compute, out_shardings=sharding)

    def cams(images: Any) -> tuple[dict[str, jax.Array], jax.Array]:
        b = int(images.shape[0])
        if not (isinstance(images, jax.Array) and b % n_dev == 0):
            x = np.asarray(images)
            rows = -(-b // n_dev) * n_dev
            # Padding repeats the first image (a plausible input); its rows are dropped below.
            x = np.concatenate([x, np.repeat(x[:1], rows - b, axis=0)]) if rows > b else x
            images = jax.device_put(x, sharding)
        maps, logits = jitted(state, images)
        if maps and next(iter(maps.values())).shape[0] != b:
            maps, logits = {k: v[:b] for k, v in maps.items()}, logits[:b]
        return maps, logits

    return cams


def covid_probability(logits: jax.Array, class_index: int = COVID_CLASS) -> jax.Array:
    """(B, K) logits -> (B,) softmax probability of `class_index`, float32."""
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, class_index]


__all__ = [
    "COVID_CLASS",
    "METHODS",
    "WEIGHTINGS",
    "CamModel",
    "class_activation_maps",
    "covid_probability",
    "gradcam_weights",
    "gradcampp_weights",
    "make_cam_fn",
    "weighted_map",
]
