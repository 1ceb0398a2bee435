"""Feature dictionaries shared by the TFDS builders, and the bad-data policy.

What is stored: every image is grayscale uint8 PNG (bright = dense), resized to the
builder's storage resolution (the *square* side `stored_size`, default 256: the paper's 224
and COVID-QU-Ex's 256 model inputs are both reached by downscaling or identity, and the
pipeline's resize is then a cheap 256 -> 224 step instead of a full-resolution decode).
Masks are uint8 {0, 255} (viewable as PNG; the pipeline binarises with `> 127`), resized
with nearest neighbour after binarising the source mask with `> 0`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from qatacov_jax.data.imageio import ImageReadError, read_xray
from qatacov_jax.data.resize import resize_image, resize_mask

BAD_DATA_POLICIES = ("fail", "skip")


class DataError(ValueError):
    """A dataset file is unusable; the message names the file and what to do."""


def image_feature() -> tfds.features.Image:
    return tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png")


def cxr_features(
    label_names: list[str], *, infection: bool, lung: bool
) -> tfds.features.FeaturesDict:
    """image (H, W, 1) uint8, mask / lung_mask (H, W, 1) uint8 {0,255}, label, filename."""
    feats: dict[str, object] = {"image": image_feature()}
    if infection:
        feats["mask"] = image_feature()
    if lung:
        feats["lung_mask"] = image_feature()
    feats["label"] = tfds.features.ClassLabel(names=label_names)
    feats["filename"] = tfds.features.Text()
    return tfds.features.FeaturesDict(feats)


class BadDataLog:
    """Applies the bad-data policy while a builder generates examples.

    Policy `fail` (the default): the first unusable file stops the build with a `DataError`
    naming the file and the fix; TFDS writes into a temporary directory and only renames it
    into place when every split is complete, so nothing half-built is ever left behind and
    an existing prepared dataset is untouched. Policy `skip`: the file is left out, a warning
    names it, and the count is logged at the end of the split (so a user can see how much
    was dropped).
    """

    def __init__(self, policy: str, split: str) -> None:
        if policy not in BAD_DATA_POLICIES:
            raise ValueError(
                f"bad_data policy must be one of {BAD_DATA_POLICIES}, got {policy!r} "
                "(config.data.bad_data)."
            )
        self.policy = policy
        self.split = split
        self.skipped: list[str] = []

    def bad(self, path: str | Path, reason: str) -> None:
        message = f"{path}: {reason}"
        if self.policy == "fail":
            raise DataError(
                f"{message}. Fix or remove this file, or set config.data.bad_data='skip' "
                "to leave unusable files out (they are counted and logged)."
            )
        self.skipped.append(str(path))
        logging.warning("Skipping %s", message)

    def report(self) -> None:
        if self.skipped:
            logging.warning(
                "Split %r: skipped %d unusable file(s) (bad_data='skip'); first: %s",
                self.split,
                len(self.skipped),
                self.skipped[0],
            )


def read_example(
    image_path: Path,
    masks: dict[str, Path | None],
    size: int,
    bad: BadDataLog,
) -> dict[str, np.ndarray] | None:
    """Reads an image and its masks, checks them, and resizes them for storage.

    Args:
      image_path: the CXR (PNG/JPEG/DICOM; `read_xray`).
      masks: feature name -> mask file, or None for an all-zero mask (controls).
      size: storage side.
      bad: the bad-data policy; an unreadable file or a mask whose size differs from its
        image is reported there (so `None` is returned only under policy `skip`).

    Returns:
      {'image': (size, size, 1) uint8, <mask name>: (size, size, 1) uint8 {0,255}} or None.
    """
    try:
        image = read_xray(image_path)
    except ImageReadError as e:
        bad.bad(e.path, e.reason)
        return None
    out = {"image": resize_image(image, size)[..., None]}
    for name, mask_path in masks.items():
        if mask_path is None:
            out[name] = np.zeros((size, size, 1), np.uint8)
            continue
        try:
            mask = read_xray(mask_path)
        except ImageReadError as e:
            bad.bad(e.path, e.reason)
            return None
        if mask.shape != image.shape:
            bad.bad(
                mask_path,
                f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}; a mask must match its image",
            )
            return None
        out[name] = resize_mask(mask, size)[..., None]
    return out
