"""Infection maps: the network's probability map painted onto the chest X-ray.

Degerli et al. (section "Infection map generation"): the prediction is coloured with the jet
colour map, its *hue and saturation* are combined with the *value* (brightness) of the CXR in
HSV space, and the result converted back to RGB. The anatomy stays readable (brightness is
the X-ray's) while the colour says how likely infection is: dark blue (low) -> cyan -> green
-> yellow -> red (high).

Display floor: the paper leaves pixels with zero probability as the plain CXR. A sigmoid
output is never exactly zero, so we use a display floor instead: pixels with p < floor
(default 0.1, `DEFAULT_DISPLAY_FLOOR`) show the CXR *exactly* (bit-identical), everything
else is coloured. 0.1 keeps the colour to where the network sees something while still
showing a blue margin of low-confidence pixels around a predicted lesion; pass 0 to colour
everything or the decision threshold (0.5) to colour only the binary mask.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

DEFAULT_DISPLAY_FLOOR = 0.1

# matplotlib's jet, resampled from its default 256-entry table to 65,536 entries: the table
# would otherwise quantise probabilities to steps of 1/256; at 2**16 the colours are the
# piecewise-linear jet to within 1e-4 (tested against the published breakpoints).
_JET = matplotlib.colormaps["jet"].resampled(2**16)


def _unit_value_colours() -> np.ndarray:
    """(2**16, 3) float32: each jet entry's hue and saturation at HSV value 1, in RGB.

    HSV -> RGB is linear in the value V (every channel is V times a function of hue and
    saturation), so a pixel's colour is its X-ray value times this table's row: one gather
    and one multiply per pixel instead of two colour-space conversions (50x less time on a
    1024x1024 map). `jet` would look rows up with the same index (matplotlib's rule).
    """
    hsv = rgb_to_hsv(np.asarray(_JET(np.arange(_JET.N)))[:, :3])
    hsv[:, 2] = 1.0
    return hsv_to_rgb(hsv).astype(np.float32)


_UNIT_COLOURS = _unit_value_colours()


def jet(p: np.ndarray) -> np.ndarray:
    """Jet colours of probabilities.

    Args:
      p: (...) float in [0, 1] (values outside are clipped).

    Returns:
      (..., 3) float32 RGB in [0, 1].
    """
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    return np.asarray(_JET(p))[..., :3].astype(np.float32)


def _as_rgb_uint8(cxr: np.ndarray) -> np.ndarray:
    cxr = np.asarray(cxr)
    if cxr.dtype != np.uint8:
        if not np.issubdtype(cxr.dtype, np.floating):
            raise ValueError(f"CXR must be uint8 or float in [0, 1], got dtype {cxr.dtype}.")
        cxr = np.round(np.clip(cxr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if cxr.ndim == 3 and cxr.shape[-1] == 1:
        cxr = cxr[..., 0]
    if cxr.ndim == 2:
        return np.repeat(cxr[..., None], 3, axis=-1)
    if cxr.ndim == 3 and cxr.shape[-1] == 3:
        return cxr
    raise ValueError(f"CXR must be (H, W), (H, W, 1) or (H, W, 3), got shape {cxr.shape}.")


def infection_map(
    cxr: np.ndarray, prob: np.ndarray, *, floor: float = DEFAULT_DISPLAY_FLOOR
) -> np.ndarray:
    """Paints a probability map onto a CXR (hue/saturation from jet, value from the CXR).

    Args:
      cxr: (H, W) or (H, W, 1|3) X-ray, uint8 or float in [0, 1].
      prob: (H, W) or (H, W, 1) infection probability in [0, 1], same H, W as `cxr`.
      floor: display floor; pixels with prob < floor are returned unchanged.

    Returns:
      (H, W, 3) uint8 RGB. Where prob < floor it equals the CXR (grey -> 3 equal channels).
    """
    base = _as_rgb_uint8(cxr)
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    if prob.shape != base.shape[:2]:
        raise ValueError(
            f"Probability map {prob.shape} and CXR {base.shape[:2]} differ in size; resize the "
            "map to the image first (inference.Predictor does)."
        )
    # matplotlib's lookup for floats in [0, 1]: index floor(p * N), N itself -> N - 1. N is a
    # power of two, so p * N is exact in float32 and truncation is that floor (float64 here
    # cost more than everything else together).
    n = _JET.N
    index = np.minimum((np.clip(prob, 0.0, 1.0) * np.float32(n)).astype(np.int32), n - 1)
    # The CXR's HSV value (= grey level for grey CXRs) times the colour at value 1; both
    # 0..255 scaled, rounded as np.round would. np.take: 3x faster than fancy indexing; the
    # channel maximum as two elementwise maxima: 20x faster than a reduction over a 3-axis.
    value = np.maximum(np.maximum(base[..., 0], base[..., 1]), base[..., 2]).astype(np.float32)
    coloured = np.rint(np.take(_UNIT_COLOURS, index, axis=0) * value[..., None]).astype(np.uint8)
    return np.where((prob < floor)[..., None], base, coloured)


def binary_mask_image(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W[, 1]) probability -> (H, W) uint8 mask, 255 where prob >= threshold, else 0.

    0/255 (not 0/1) so the PNG is viewable; the datasets binarise masks with `mask > 0`, so
    it reads back as the same mask.
    """
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    return np.where(prob >= threshold, 255, 0).astype(np.uint8)
