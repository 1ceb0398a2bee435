"""The one resize of the project: what training data went through, inference goes through.

Datasets are stored as uint8 (`features.py`); the pipeline resizes stored uint8 images to
the model input (`pipeline.py`); inference quantises any X-ray to uint8 and resizes it with
the same function (`inference.predictor`), so a model sees the same kind of input at
inference as in training, whatever the file's bit depth. `resize_map` takes probability
maps back to an X-ray's own resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (the storage format of the datasets)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def height_width(size: int | Sequence[int]) -> tuple[int, int]:
    """The side of a square, or (height, width) -> (height, width) as ints."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """(H, W) float [0, 1] or uint8 -> (h, w) uint8, bilinear (PIL; antialiased down).

    Args:
      size: the side of a square, or (height, width).
    """
    if image.dtype != np.uint8:
        image = to_uint8(image)
    h, w = height_width(size)
    if image.shape != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return image


def resize_mask(mask: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """(H, W) any numeric mask -> (h, w) uint8 {0, 255}: `> 0`, then nearest neighbour."""
    binary = (np.asarray(mask) > 0).astype(np.uint8) * 255
    h, w = height_width(size)
    if binary.shape != (h, w):
        binary = np.asarray(Image.fromarray(binary).resize((w, h), Image.NEAREST))
    return binary


def resize_map(values: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """(H, W) float map (e.g. probabilities) -> (h, w) float32, bilinear (PIL; antialiased down).

    Unlike `resize_image` nothing is quantised: a probability map keeps its full precision.
    """
    h, w = height_width(size)
    if values.shape == (h, w):
        return values.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((w, h), Image.BILINEAR), dtype=np.float32)
