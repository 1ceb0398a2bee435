"""Reading chest X-rays from PNG (8/16-bit), JPEG and DICOM into one canonical form.

Every reader returns a 2-D float32 array in [0, 1] where *bright = dense* (bone white), the
convention of the training data. DICOM needs care: MONOCHROME1 images store the opposite
polarity and are inverted, and the modality and VOI LUT / window of the file are applied so
that the picture looks as a radiologist's viewer would show it. The result is divided by the
range those stages can output (2**BitsStored - 1 without a window), never stretched between
the image's own minimum and maximum, so a DICOM maps as the same X-ray exported to an 8-bit
PNG (values / 255, the training data's mapping) or to a 16-bit PNG with `sBIT` does: the
two files get the same decision. 16-bit PNGs need care too:
radiographs are often 10/12/14-bit data stored unscaled in 16-bit samples, which divided by
65535 come out nearly black; the PNG's significant-bits chunk (`sBIT`) or, without it, the
actual value range gives the true bit depth (`sixteen_bit_scale`; docs/reliability.md#16-bit-png).
`read_xray_with_info` also says what was done, for reports.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from qatacov_jax.data import image_limits
from qatacov_jax.data.image_limits import ImageRefusedError, ImageTooLargeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


class ImageReadError(ValueError):
    """A file could not be read as a chest X-ray; the message names the file and the cause
    (`reason`, one line without paths: the web app shows it to whoever uploaded the file).
    `refused` is True for a readable file that is not used (over the pixel budget, not a
    radiograph, too small: `image_limits`); `too_large` for the pixel budget alone."""

    def __init__(
        self, path: str | Path, reason: str, *, refused: bool = False, too_large: bool = False
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.refused = refused
        self.too_large = too_large
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


def read_xray_with_info(
    path: str | Path, *, max_pixels: int | None = None, min_side: int | None = None
) -> tuple[np.ndarray, str]:
    """`read_xray` plus one line saying how intensities were mapped to [0, 1] (for reports,
    e.g. "16-bit PNG, sBIT 12: values / 4095").

    Args:
      max_pixels: refuse, from the header and before decoding, an image of more pixels
        (default `image_limits.max_pixels()`, the process's `--max-megapixels`).
      min_side: refuse an image with a side under this many pixels (None: no check);
        where a decision is given, `image_limits.MIN_RADIOGRAPH_SIDE`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    budget = image_limits.max_pixels() if max_pixels is None else max_pixels
    try:
        arr, note = _read_dicom(path, budget) if is_dicom(path) else _read_pil(path, budget)
        if min_side is not None:
            image_limits.check_min_side(*arr.shape, min_side)
    except ImageRefusedError as e:
        too_large = isinstance(e, ImageTooLargeError)
        raise ImageReadError(path, e.reason, refused=True, too_large=too_large) from None
    return arr, note


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


def _read_pil(path: Path, budget: int) -> tuple[np.ndarray, str]:
    try:
        with Image.open(path) as img:  # lazy: the header only
            image_limits.check_pixel_budget(img.height, img.width, budget=budget)
            img.load()
            arr, note = _pil_to_unit(img, path)
    except Image.DecompressionBombError as e:  # Pillow's own limit, met at open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        n = f" ({int(pixels.group(1)) / 1e6:.0f} million pixels)" if pixels else ""
        raise ImageTooLargeError(
            f"the image is too large to decode{n}, over the --max-megapixels limit of "
            f"{budget / 1e6:g} million"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageRefusedError):
            raise
        raise ImageReadError(path, f"not a readable image: {_pil_problem(e)}") from None
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(path, f"unexpected image shape {arr.shape}")
    np.clip(arr, 0.0, 1.0, out=arr)
    return arr, note


def _pil_to_unit(img: Image.Image, path: Path) -> tuple[np.ndarray, str]:
    """A loaded Pillow image -> ((H, W) float32 in [0, 1] (unclipped), note). The float
    copies are made in place where the arithmetic allows: a large image costs 4-12 bytes a
    pixel here, not three times that."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # "I" is the 32-bit container Pillow may use for 16-bit greyscale PNGs.
        raw = np.asarray(img, dtype=np.float64)
        if mode == "I" and img.format != "PNG" and raw.max(initial=0) <= 255:
            scale, note = 255.0, f"{img.format} 32-bit integer, 8-bit range: values / 255"
        else:
            sbit = png_significant_bits(path) if img.format == "PNG" else None
            scale, note = sixteen_bit_scale(raw, sbit)
        raw /= scale
        return raw.astype(np.float32), note
    if mode == "F":
        return _minmax(np.asarray(img, dtype=np.float32)), "floating-point image: min-max"
    if mode == "L":
        arr = np.asarray(img, dtype=np.float32)
        note = "8-bit: values / 255"
    else:
        # RGB, RGBA, P, LA, CMYK, 1...: luminance (ITU-R 601), 8-bit.
        arr = np.asarray(img.convert("L"), dtype=np.float32)
        note = f"{mode} converted to 8-bit luminance: values / 255"
    if not arr.flags.writeable:
        arr = arr.copy()
    arr /= 255.0
    return arr, note


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _pil_problem(e: Exception) -> str:
    """What a Pillow decoding error says about the file, in words (no exception class
    names or paths: the web app shows this to the person who uploaded the file)."""
    text = str(e).lower()
    if isinstance(e, UnidentifiedImageError):
        return "the file is not PNG, JPEG, BMP, TIFF or DICOM data"
    if "truncated" in text or "broken" in text or "unexpected end" in text:
        return "the image data are truncated or corrupt (an incomplete download or copy?)"
    if "decompression bomb" in text or "exceeds limit" in text:
        return "the image has too many pixels to be decoded safely"
    return "the image data are corrupt or use an encoding this reader does not support"


def _read_dicom(path: Path, budget: int) -> tuple[np.ndarray, str]:
    try:
        ds = image_limits.read_dicom_checked(path, budget)
    except ImageRefusedError:
        raise
    except Exception as e:  # pydicom raises several unrelated types for bad files
        raise ImageReadError(path, f"not a readable DICOM file: {_dicom_problem(e)}") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise ImageReadError(path, _pixel_problem(ds, e)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = _bits_stored(ds, pixels)
    if pixels.ndim == 3 and pixels.shape[-1] == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom hands colour over as RGB whatever the file's colour space (YBR_FULL,
        # YBR_FULL_422, the YBR_RCT / YBR_ICT of JPEG 2000).
        luma = pixels.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        top = float(2**bits - 1)
        note = f"DICOM {photometric} converted to luminance, {bits} bits: values / {top:g}"
        return np.clip(luma / top, 0.0, 1.0).astype(np.float32), note
    if pixels.ndim != 2:
        raise ImageReadError(
            path, f"unsupported DICOM pixel layout {pixels.shape}; expected one grey frame"
        )
    values = apply_modality_lut(pixels, ds)
    values = apply_voi_lut(values, ds)  # window centre/width or VOI LUT sequence, if any
    lo, hi, how = _dicom_output_range(ds, bits)
    arr = np.array(values, np.float64)  # a copy: `values` may be the dataset's own array
    arr -= lo
    arr /= hi - lo
    np.clip(arr, 0.0, 1.0, out=arr)
    arr = arr.astype(np.float32)
    note = f"DICOM {photometric}, {bits} bits stored, {how}"
    if photometric == "MONOCHROME1":
        np.subtract(1.0, arr, out=arr)  # MONOCHROME1: low values are bright
        note += ", inverted (MONOCHROME1)"
    return arr, note


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dicom_problem(e: Exception) -> str:
    """pydicom's message in one line, without file paths (it may quote the file it read)
    and without its advice to pass `force=True`, which no option here offers."""
    text = str(e)
    if "File Meta Information" in text or "'DICM' prefix" in text:
        return (
            "no DICOM file header (the 128-byte preamble and 'DICM'); export the image from "
            "the PACS as a DICOM file (Part 10) or as PNG"
        )
    text = text.replace(" Use force=True to force reading.", "")
    return _one_line(text.split(" '/", 1)[0].split(' "/', 1)[0]) or "unreadable data"


# Transfer syntaxes -> the decoder plugin (a dependency of the project) that reads them.
_PLUGINS = (
    ("1.2.840.10008.1.2.4.9", "openjpeg", "pylibjpeg-openjpeg", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.20", "openjpeg", "pylibjpeg-openjpeg", "High-Throughput JPEG 2000"),
    ("1.2.840.10008.1.2.4.8", "libjpeg", "pylibjpeg-libjpeg", "JPEG-LS"),
    ("1.2.840.10008.1.2.4.", "libjpeg", "pylibjpeg-libjpeg", "JPEG"),
    ("1.2.840.10008.1.2.5", "rle", "pylibjpeg-rle", "RLE"),
)


def _pixel_problem(ds: pydicom.Dataset, e: Exception) -> str:
    """Why `ds.pixel_array` failed, in one line: the plugin to install when the transfer
    syntax's decoder is missing, else the decoder's first complaint."""
    uid = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
    for prefix, module, package, name in _PLUGINS:
        if uid.startswith(prefix):
            if importlib.util.find_spec(module) is None:
                return (
                    f"cannot decode {name} compressed DICOM pixel data: the {package} "
                    "decoder is missing (`pip install -e .` installs it)"
                )
            first = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
            detail = first[0] if first else str(e)
            return _one_line(
                f"cannot decode the {name} compressed pixel data, damaged or of a variant the "
                f"decoder does not support ({_dicom_problem(Exception(detail))})"
            )
    return f"cannot decode DICOM pixel data ({_dicom_problem(e)})"


def _bits_stored(ds: pydicom.Dataset, pixels: np.ndarray) -> int:
    """BitsStored, else BitsAllocated, else the sample type's width."""
    for field in ("BitsStored", "BitsAllocated"):
        value = ds.get(field)
        if isinstance(value, int) and 1 <= value <= 32:
            return value
    return int(pixels.dtype.itemsize * 8)


def _dicom_output_range(ds: pydicom.Dataset, bits: int) -> tuple[float, float, str]:
    """(lo, hi) of the values the modality and VOI stages can output, and which stage set it.

    The ranges are those of the DICOM standard (PS3.3 C.11), which pydicom's windowing maps
    to: a VOI LUT's entries span 0..2**n - 1 (n from its descriptor); a window maps onto,
    and without one the values stay in, the modality output range: the stored range
    (0..2**bits - 1, or signed) through the rescale slope/intercept, or a modality LUT's
    0..2**n - 1.
    """
    voi = ds.get("VOILUTSequence")
    if voi and None not in (voi[0].get("LUTDescriptor"), voi[0].get("LUTData")):
        top = float(2 ** int(voi[0].LUTDescriptor[2]) - 1)
        return 0.0, top, f"VOI LUT: values / {top:g}"
    modality = ds.get("ModalityLUTSequence")
    if modality:
        lo, hi = 0.0, float(2 ** int(modality[0].LUTDescriptor[2]) - 1)
    else:
        signed = ds.get("PixelRepresentation", 0) == 1
        lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            lo, hi = sorted(
                (lo * float(slope) + float(intercept), hi * float(slope) + float(intercept))
            )
    span = f"values / {hi:g}" if lo == 0 else f"(values - {lo:g}) / {hi - lo:g}"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        return lo, hi, f"VOI window centre {centre:g} width {width:g}, windowed {span}"
    return lo, hi, f"no VOI window: {span}"


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): the first, as float."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)
