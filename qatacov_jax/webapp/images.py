"""Uploaded bytes in, PNGs for the browser out.

Uploads are decoded by the project's one X-ray reader (`data.imageio.read_xray`: 8/16-bit
PNG, JPEG, BMP/TIFF, DICOM with its LUTs and polarity), from a private temporary file whose
name we choose: the client's file name is never part of a path.

The probability map goes to the browser losslessly enough to re-threshold there: 16-bit
fixed point split over the red (high byte) and green (low byte) channels of an 8-bit RGB PNG,
which every browser decodes to exact bytes in a canvas (a 16-bit PNG would be cut to 8 bits).
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from qatacov_jax.data import imageio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class UploadError(ValueError):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes) -> tuple[np.ndarray, str]:
    """Bytes of an uploaded X-ray -> ((H, W) float32 in [0, 1] (bright = dense), how its
    intensities were mapped to [0, 1]: report.json's "intensity", e.g. "sBIT 12: values / 4095").

    Raises:
      UploadError: empty, not an image, corrupt, or a DICOM layout we cannot read (415).
    """
    if not data:
        raise UploadError("the uploaded file is empty")
    dicom = len(data) > 132 and data[128:132] == b"DICM"
    with tempfile.TemporaryDirectory(prefix="qatacov_upload_") as tmp:
        path = Path(tmp) / ("upload.dcm" if dicom else "upload")
        path.write_bytes(data)
        try:
            img, note = imageio.read_xray_with_info(path)
        except imageio.ImageReadError as e:
            if dicom:
                raise UploadError(f"unsupported DICOM: {e.reason}", 415) from None
            raise UploadError(
                f"not a readable chest X-ray image (PNG, JPEG, BMP, TIFF or DICOM): {e.reason}"
            ) from None
        except Exception as e:  # noqa: BLE001 - e.g. Pillow's DecompressionBombError
            raise UploadError(f"cannot decode the upload ({type(e).__name__}: {e})") from None
    if min(img.shape) < 8:
        raise UploadError(f"image of {img.shape[1]}x{img.shape[0]} pixels is too small")
    return img, note


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3|4) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    # Fast zlib level: these PNGs are sent once, and encoding dominated the request time.
    Image.fromarray(np.asarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W) float [0, 1] -> uint8 (what the TFDS builders store)."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_probability(prob: np.ndarray) -> bytes:
    """(H, W) probabilities -> RGB PNG with round(p * 65535) in red (high) + green (low)."""
    q = np.round(np.clip(np.asarray(prob, np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)
    rgb = np.zeros((*q.shape, 3), np.uint8)
    rgb[..., 0] = q >> 8
    rgb[..., 1] = q & 0xFF
    return png_bytes(rgb)


def decode_probability(png: bytes) -> np.ndarray:
    """Inverse of `encode_probability` (to within 1/65535)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)
    return ((rgb[..., 0] * 256.0 + rgb[..., 1]) / 65535.0).astype(np.float32)


def decode_mask(data_url_or_png: str | bytes, shape: tuple[int, int]) -> np.ndarray:
    """A mask PNG (bytes or `data:image/png;base64,` URL) -> (H, W) bool.

    Foreground is any pixel that is both visible (alpha > 0, for the RGBA a canvas exports)
    and not black. Raises UploadError when it is not a PNG of exactly `shape`.
    """
    raw = data_url_or_png
    if isinstance(raw, str):
        prefix = "data:image/png;base64,"
        if not raw.startswith(prefix):
            raise UploadError("mask must be a PNG data URL (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(raw[len(prefix) :], validate=True)
        except ValueError:
            raise UploadError("mask data URL is not valid base64") from None
    if not raw.startswith(PNG_MAGIC):
        raise UploadError("mask is not a PNG")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                arr = np.asarray(im.convert("RGBA"))
                fg = (arr[..., 3] > 0) & (arr[..., :3].max(-1) > 0)
            else:
                fg = np.asarray(im.convert("L")) > 0
    except Exception as e:  # noqa: BLE001 - any decoder error is the client's bad mask
        raise UploadError(f"mask PNG cannot be decoded ({type(e).__name__}: {e})") from None
    if fg.shape != tuple(shape):
        raise UploadError(
            f"mask is {fg.shape[1]}x{fg.shape[0]} pixels but the X-ray is "
            f"{shape[1]}x{shape[0]}; reload the image"
        )
    return fg
