"""The paper's training augmentation: random shift and rotation, identical on image and mask.

Degerli et al. augment with a random shift of up to 10% of the size on both axes and a
rotation within 10 degrees, filling the uncovered border with the nearest pixel (Keras
`fill_mode='nearest'`, i.e. edge replication). One affine map is drawn per example and
applied to the image (bilinear) and the mask (nearest neighbour, so it stays binary) with
the same matrix, so a lesion and its label move together.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_affine(
    rng: np.random.Generator,
    shape: tuple[int, int],
    max_shift: float = 0.1,
    max_rotation_deg: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one shift+rotation about the image centre.

    Args:
      rng: random generator (the caller seeds it per example for determinism).
      shape: (H, W) of the image.
      max_shift: largest shift as a fraction of H (rows) and W (columns).
      max_rotation_deg: largest rotation angle, in degrees, either direction.

    Returns:
      (matrix (2, 2), offset (2,)) in `scipy.ndimage.affine_transform`'s convention:
      output pixel o reads input pixel `matrix @ o + offset`.
    """
    h, w = shape
    shift = np.array(
        [rng.uniform(-max_shift, max_shift) * h, rng.uniform(-max_shift, max_shift) * w]
    )
    theta = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
    c, s = np.cos(theta), np.sin(theta)
    # Output -> input is the inverse map: undo the shift, then rotate by -theta.
    inverse = np.array([[c, s], [-s, c]])
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - inverse @ (centre + shift)
    return inverse, offset


def apply_affine(
    image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Warps an image and its mask with the same affine map.

    Args:
      image: (H, W) float32.
      mask: (H, W) any dtype; warped with nearest neighbour so its values are preserved.
      matrix, offset: from `random_affine`.

    Returns:
      (image (H, W) float32, mask (H, W) same dtype as input).
    """
    out_image = ndimage.affine_transform(
        image, matrix, offset=offset, order=1, mode="nearest", prefilter=False
    )
    out_mask = ndimage.affine_transform(mask, matrix, offset=offset, order=0, mode="nearest")
    return out_image.astype(np.float32, copy=False), out_mask


def augment(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    max_shift: float = 0.1,
    max_rotation_deg: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random shift+rotation of an (H, W) image and its (H, W) mask (see module docstring)."""
    matrix, offset = random_affine(rng, image.shape[:2], max_shift, max_rotation_deg)
    return apply_affine(image, mask, matrix, offset)
