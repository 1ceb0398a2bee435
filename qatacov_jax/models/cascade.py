"""Paper 2's cascaded scheme as one model: the lungs first, then infection in the lungs only.

Paper 2 (Tahir et al.) compares two ways to chain its networks: *parallel*, where the lung
and the infection networks both read the plain X-ray (its choice, 87.08% DSC), and
*cascaded*, where "lung region was first segmented using the lung segmentation model; then
the segmented CXR was fed to the infection segmentation model" (86.84%). `CascadedModel`
is the cascaded form: a trained lung model, frozen (its weights are constants of the
infection model's training, its BatchNorm always in inference mode), masks the X-ray, and
the infection model reads the result. Being one `nnx.Module` from X-ray to infection
logits, it trains, evaluates, predicts, serves and exports like any other model.

Where the lung mask comes from: the lung model's foreground probability >= `threshold` on
the X-ray resized to the lung model's input size, resized back (bilinear) before the
threshold. "Segmented CXR": the pixels outside the lungs are set to 0 (black) in [0, 1]
pixel space, then the infection model's own preprocessing applies.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models.layers import FrozenParam
from qatacov_jax.models.output import foreground_probability


def freeze_all(module: nnx.Module) -> int:
    """Turns every `nnx.Param` of `module` (BatchNorm's included) into a `FrozenParam`, so
    no optimizer touches it. Returns how many. Mutates `module` in place."""
    frozen = 0
    for _, sub in module.iter_modules():
        for name, value in list(vars(sub).items()):
            if isinstance(value, nnx.Param):
                setattr(sub, name, FrozenParam(value.get_value()))
                frozen += 1
    return frozen


def unprocess(preprocessing: Preprocessing, x: jax.Array) -> jax.Array:
    """The inverse of `preprocessing` on RGB images: model input -> pixels in [0, 1].

    Args:
      x: (..., 3) float, `preprocessing(images)` of RGB (or grey, 3 equal channels) images.

    Returns:
      (..., 3) float32 RGB in the range the images had before preprocessing.
    """
    x = x.astype(jnp.float32)
    if preprocessing.mode == "tf":
        y = (x + 1.0) / 2.0
    else:
        std = np.asarray(preprocessing.std, np.float32)
        mean = np.asarray(preprocessing.mean, np.float32)
        y = (x * std + mean) / np.float32(preprocessing.scale)
    return y[..., ::-1] if preprocessing.channel_order == "BGR" else y


class CascadedModel(nnx.Module):
    """Lung model -> lung-masked X-ray -> infection model.

    Call: `(B, H, W, 3)` float, preprocessed for the *infection* model (the run's
    preprocessing.json) -> the infection model's logits, `(B, H, W, C)` float32.

    Attributes:
      lung: the lung segmentation model (frozen: `FrozenParam` weights, inference-mode
        BatchNorm in training too).
      infection: the infection segmentation model (trained).
      input_preprocessing: the infection model's preprocessing (inputs arrive in it).
      lung_preprocessing: the lung model's.
      lung_size: the lung model's input side (the X-ray is resized to it).
      threshold: lung probability from which a pixel is lung.
    """

    def __init__(
        self,
        lung: nnx.Module,
        infection: nnx.Module,
        *,
        input_preprocessing: Preprocessing,
        lung_preprocessing: Preprocessing,
        lung_size: int,
        threshold: float = 0.5,
    ):
        freeze_all(lung)
        self.lung = lung
        self.infection = infection
        self.input_preprocessing = input_preprocessing
        self.lung_preprocessing = lung_preprocessing
        self.lung_size = int(lung_size)
        self.threshold = float(threshold)
        self.lung.eval()

    def set_attributes(
        self, *filters: Any, raise_if_not_found: bool = True, **attributes: Any
    ) -> None:
        """`train()` / `eval()` reach the infection model only: the lung model stays in
        inference mode (it is not trained here, and its BatchNorm averages are its own)."""
        super().set_attributes(*filters, raise_if_not_found=raise_if_not_found, **attributes)
        self.lung.set_attributes(
            deterministic=True, use_running_average=True, raise_if_not_found=False
        )

    def lung_mask(self, x: jax.Array) -> jax.Array:
        """`(B, H, W, 3)` preprocessed input -> `(B, H, W, 1)` float32 lung mask in {0, 1}."""
        pixels = unprocess(self.input_preprocessing, x)
        b, h, w, _ = pixels.shape
        s = self.lung_size
        small = pixels if (h, w) == (s, s) else jax.image.resize(pixels, (b, s, s, 3), "bilinear")
        prob = foreground_probability(self.lung(self.lung_preprocessing(small)))
        if (h, w) != (s, s):
            prob = jax.image.resize(prob, (b, h, w, 1), "bilinear")
        return (prob >= self.threshold).astype(jnp.float32)

    def masked_input(self, x: jax.Array) -> jax.Array:
        """The infection model's input: the X-ray with everything outside the lungs black,
        in the infection model's preprocessing."""
        pixels = unprocess(self.input_preprocessing, x) * self.lung_mask(x)
        return self.input_preprocessing(pixels).astype(x.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.infection(self.masked_input(x))
