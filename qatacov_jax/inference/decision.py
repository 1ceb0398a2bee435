"""Probability maps -> the COVID-19 decision and severity of one image (no files written).

The one place that turns an image's predicted maps into its report fields, shared by
`scripts/infer.py` (`inference.files`) and the web app (`qatacov_jax.webapp`), so both
report the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatacov_jax.inference.batching import grid_max_key
from qatacov_jax.inference.infection_map import binary_mask_image
from qatacov_jax.inference.severity import DEFAULT_SCALE, SeverityScale, quantify


def image_report(
    img: np.ndarray,
    pred: dict[str, np.ndarray],
    *,
    threshold: float = 0.5,
    lung_threshold: float = 0.5,
    scale: SeverityScale = DEFAULT_SCALE,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """The report fields of one image and its binary masks.

    Args:
      img: (H, W) X-ray in [0, 1].
      pred: "infection" (and optionally "lung") -> (H, W) probabilities, and optionally
        `grid_max_key("infection")` -> the map's maximum on the model grid (the decision).

    Returns:
      (fields: height, width, covid19, max_probability and `severity.quantify`'s fields;
      (H, W) uint8 0/255 infection mask; (H, W) uint8 lung mask or None without "lung").
    """
    prob = pred["infection"]
    mask = binary_mask_image(prob, threshold)
    lung = binary_mask_image(pred["lung"], lung_threshold) if "lung" in pred else None
    # Decided on the model grid, as evaluate.py (docs/method.md#detection-rule); the resized
    # map's maximum is the fallback for a `pred` that does not carry it.
    max_p = float(pred.get(grid_max_key("infection"), prob.max()))
    fields: dict[str, Any] = {
        "height": int(img.shape[0]),
        "width": int(img.shape[1]),
        "covid19": bool(max_p >= threshold),
        "max_probability": max_p,
    }
    fields.update(quantify(mask > 0, None if lung is None else lung > 0, scale=scale))
    return fields, mask, lung
