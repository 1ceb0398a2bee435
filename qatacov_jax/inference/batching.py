"""X-rays of any size -> model-size batches, and model-size maps -> each X-ray's size.

The NumPy half of prediction, shared by the JAX `inference.Predictor` and the ONNX Runtime
`export.onnx_runtime.OnnxPredictor`, so an exported model sees exactly the pixels the
trained run saw and its maps come back the same way. Imports neither JAX nor ONNX Runtime.

    batches = model_batches(images, {"infection": (224, 224)})  # name -> (B, 224, 224) uint8
    probs = engine(batches)                                       # name -> (B, 224, 224, 1)
    maps = maps_per_image(images, probs)                          # per image, name -> (H, W)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from qatacov_jax.data.resize import resize_image, resize_map


def grid_max_key(name: str) -> str:
    """Key of a model's model-grid maximum probability in `predict_batch` outputs."""
    return f"{name}_grid_max"


class BatchPredictor(Protocol):
    """What `scripts/infer.py` and the web app call: a JAX `inference.Predictor` or an
    `export.onnx_runtime.OnnxPredictor`.

    Attributes:
      names: the models' roles ("infection", optionally "lung"), in output order.
      batch_size: images per call the predictor is built for (callers chunk by it).
    """

    names: tuple[str, ...]
    batch_size: int

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(H_i, W_i) float [0, 1] images -> per image, name -> (H_i, W_i) probabilities
        and `grid_max_key(name)` -> the maximum on the model's grid."""
        ...


def model_batches(
    images: Sequence[np.ndarray], sizes: Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """(H_i, W_i) float [0, 1] images -> name -> (B, h, w) uint8 at each model's input size.

    Quantised to 8 bits and resized exactly as the training data were (the TFDS builders
    store uint8 images), whatever the file's bit depth.
    """
    return {k: np.stack([resize_image(img, hw) for img in images]) for k, hw in sizes.items()}


def maps_per_image(
    images: Sequence[np.ndarray], probs: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """name -> (B, h, w, 1) probabilities on the model grid -> per image, name -> (H_i, W_i)
    maps at the image's resolution, plus `grid_max_key(name)` -> () float32.

    The detection decision ("COVID-19 if any pixel >= threshold") is taken on the grid
    maximum, as `scripts/evaluate.py` and paper 1 take it: the maximum of the map resized to
    the image can differ (interpolation), flipping a borderline case.
    """
    out = []
    for i, img in enumerate(images):
        maps = {k: np.clip(resize_map(p[i, ..., 0], img.shape), 0.0, 1.0) for k, p in probs.items()}
        maps.update({grid_max_key(k): np.float32(p[i].max()) for k, p in probs.items()})
        out.append(maps)
    return out
