"""Reading chest X-rays from PNG (8/16-bit), JPEG and DICOM into one canonical form.

Every reader returns a 2-D float32 array in [0, 1] where *bright = dense* (bone white), the
convention of the training data. DICOM needs care: MONOCHROME1 images store the opposite
polarity and are inverted, and the modality and VOI LUT / window of the file are applied so
that the picture looks as a radiologist's viewer would show it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


class ImageReadError(ValueError):
    """A file could not be read as a chest X-ray; the message names the file and the cause."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_dicom(path: str | Path) -> bool:
    """DICOM by suffix, or by the 'DICM' magic at byte 128 (RSNA files have no suffix rule)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_xray(path: str | Path) -> np.ndarray:
    """Reads a chest X-ray.

    Args:
      path: a PNG (8- or 16-bit, grey or colour), JPEG, BMP/TIFF or DICOM file.

    Returns:
      (H, W) float32 in [0, 1], bright = dense. Colour images are converted to luminance.

    Raises:
      ImageReadError: the file is missing, empty, not an image, or has an unsupported layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    if is_dicom(path):
        return _read_dicom(path)
    return _read_pil(path)


def _read_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            elif mode == "I":
                # 32-bit int container: Pillow uses it for 16-bit greyscale PNGs.
                raw = np.asarray(img, dtype=np.float64)
                top = 65535.0 if raw.max() > 255 else 255.0
                arr = (raw / top).astype(np.float32)
            elif mode == "F":
                raw = np.asarray(img, dtype=np.float32)
                arr = _minmax(raw)
            elif mode == "L":
                arr = np.asarray(img, dtype=np.float32) / 255.0
            else:
                # RGB, RGBA, P, LA, CMYK, 1...: luminance (ITU-R 601), 8-bit.
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(path, f"unexpected image shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _read_dicom(path: Path) -> np.ndarray:

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises several unrelated types for bad files
        raise ImageReadError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise ImageReadError(
            path,
            f"cannot decode DICOM pixel data ({type(e).__name__}: {e}); compressed transfer "
            "syntaxes need e.g. `pip install pylibjpeg pylibjpeg-libjpeg`",
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        pixels = pixels.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        return _minmax(pixels)
    if pixels.ndim != 2:
        raise ImageReadError(
            path,
            f"multi-frame or unsupported DICOM pixel layout {pixels.shape}; expected one frame",
        )
    values = apply_modality_lut(pixels, ds)
    values = apply_voi_lut(values, ds)  # window centre/width or VOI LUT sequence, if any
    arr = _minmax(np.asarray(values, np.float32))
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr  # MONOCHROME1: low values are bright
    return arr
