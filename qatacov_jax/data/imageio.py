"""Reading chest X-rays from PNG (8/16-bit), JPEG and DICOM into one canonical form.

Every reader returns a 2-D float32 array in [0, 1] where *bright = dense* (bone white), the
convention of the training data. DICOM needs care: MONOCHROME1 images store the opposite
polarity and are inverted, and the modality and VOI LUT / window of the file are applied so
that the picture looks as a radiologist's viewer would show it. 16-bit PNGs need care too:
radiographs are often 10/12/14-bit data stored unscaled in 16-bit samples, which divided by
65535 come out nearly black; the PNG's significant-bits chunk (`sBIT`) or, without it, the
actual value range gives the true bit depth (`sixteen_bit_scale`; docs/reliability.md#16-bit-png).
`read_xray_with_info` also says what was done, for reports.
"""

from __future__ import annotations

import struct
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
    return read_xray_with_info(path)[0]


def read_xray_with_info(path: str | Path) -> tuple[np.ndarray, str]:
    """`read_xray` plus one line saying how intensities were mapped to [0, 1] (for reports,
    e.g. "16-bit PNG, sBIT 12: values / 4095")."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    if is_dicom(path):
        return _read_dicom(path), "DICOM: modality LUT, VOI window, min-max"
    return _read_pil(path)


def png_significant_bits(path: str | Path) -> int | None:
    """The largest significant-bit count of a PNG's `sBIT` chunk (colour channels and grey;
    alpha ignored), or None when the file has none or is not a PNG."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    bits = f.read(length)
                    colour_type = _png_colour_type(path)
                    channels = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(colour_type, len(bits))
                    return max(bits[:channels]) if bits else None
                if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                    return None
                f.seek(length + 4, 1)  # data + CRC
    except OSError:
        return None


def _png_colour_type(path: str | Path) -> int:
    with open(path, "rb") as f:
        f.seek(8 + 8 + 9)  # signature, IHDR length/type, width, height, bit depth
        return f.read(1)[0]


def sixteen_bit_scale(raw: np.ndarray, sbit: int | None) -> tuple[float, str]:
    """The divisor that maps 16-bit samples to [0, 1], and what it was based on.

    With `sBIT` = b < 16: samples below 2**b are data stored unscaled (divide by 2**b - 1);
    larger ones were scaled to 16 bits as the PNG standard asks (divide by 65535). Without
    `sBIT`: the smallest of 10, 12, 14, 16 bits that holds the maximum value, so a 12-bit
    radiograph is not divided by 65535 and shown nearly black.
    """
    top = int(raw.max()) if raw.size else 0
    if sbit is not None and 8 <= sbit < 16:
        if top < 2**sbit:
            return float(2**sbit - 1), f"16-bit PNG, sBIT {sbit}: values / {2**sbit - 1}"
        return 65535.0, f"16-bit PNG, sBIT {sbit} (samples scaled to 16 bits): values / 65535"
    if top <= 255:
        bits = 8
    else:
        bits = next(b for b in (10, 12, 14, 16) if top < 2**b)
    if bits == 16:
        return 65535.0, "16-bit PNG: values / 65535"
    return (
        float(2**bits - 1),
        f"16-bit PNG without sBIT, maximum {top}: read as {bits}-bit data, values / {2**bits - 1}",
    )


def _read_pil(path: Path) -> tuple[np.ndarray, str]:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                # "I" is the 32-bit container Pillow may use for 16-bit greyscale PNGs.
                raw = np.asarray(img, dtype=np.float64)
                if mode == "I" and img.format != "PNG" and raw.max(initial=0) <= 255:
                    scale, note = 255.0, f"{img.format} 32-bit integer, 8-bit range: values / 255"
                else:
                    sbit = png_significant_bits(path) if img.format == "PNG" else None
                    scale, note = sixteen_bit_scale(raw, sbit)
                arr = (raw / scale).astype(np.float32)
            elif mode == "F":
                raw = np.asarray(img, dtype=np.float32)
                arr, note = _minmax(raw), "floating-point image: min-max"
            elif mode == "L":
                arr, note = np.asarray(img, dtype=np.float32) / 255.0, "8-bit: values / 255"
            else:
                # RGB, RGBA, P, LA, CMYK, 1...: luminance (ITU-R 601), 8-bit.
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
                note = f"{mode} converted to 8-bit luminance: values / 255"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(path, f"unexpected image shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32), note


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
