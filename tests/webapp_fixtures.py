"""Shared by the web app tests: tiny run directories and X-ray files.

The run directories are genuine (config, preprocessing, a 'best' checkpoint written by the
project's `CheckpointStore`) but hold the untrained tiny model (`qatacov_jax.models.tiny`,
selected by their config), so loading and compiling take a second.
BatchNorm statistics and the head are randomised so the probabilities spread over [0, 1]
and masks, decisions and thresholds have something to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from train_utils import write_tiny_run  # noqa: F401  (re-exported for the web app tests)


def xray(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) uint8 'chest X-ray': a bright body with two darker lungs and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.asarray([h, w])[:, None, None]
    img = 170 + 40 * np.sin(6 * xx + seed) * np.cos(5 * yy)
    for cx in (0.3, 0.7):
        img -= 90 * np.exp(-(((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    img += rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_xray(path: Path, image: np.ndarray | int = 48, w: int = 40, seed: int = 0) -> Path:
    """Writes `image` ((H, W) uint8), or `xray(image, w, seed)` when `image` is a height."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image if isinstance(image, np.ndarray) else xray(image, w, seed)
    Image.fromarray(arr).save(path)
    return path
