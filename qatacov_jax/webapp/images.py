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
import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from qatacov_jax.data import imageio
from qatacov_jax.data.image_limits import MIN_RADIOGRAPH_SIDE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class UploadError(ValueError):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Upload:
    """A decoded upload.

    Attributes:
      image: (H, W) float32 in [0, 1], bright = dense (`data.imageio.read_xray`).
      intensity: how its values were mapped to [0, 1] (report.json's "intensity").
      colour_fraction: share of pixels with visible colour (0 for greyscale files and DICOM;
        `plausibility.input_warnings` warns about colour pictures).
      dicom: the DICOM file's patient and study identifiers that are present (field name ->
        text), shown beside the decision so that a result is never read against the wrong
        patient; empty for other formats.
    """

    image: np.ndarray
    intensity: str
    colour_fraction: float = 0.0
    dicom: dict[str, str] = dataclasses.field(default_factory=dict)


# DICOM attributes shown with a result (all optional), by the report's field names.
DICOM_IDENTIFIERS = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "study_date": "StudyDate",
    "accession_number": "AccessionNumber",
    "study_description": "StudyDescription",
}


def decode_upload(data: bytes) -> Upload:
    """Bytes of an uploaded X-ray -> `Upload`.

    Raises:
      UploadError: empty, not an image, corrupt, smaller than a radiograph (422); over the
        pixel budget (413, as an upload over --max-upload-mb); a DICOM layout we cannot read
        (415). The message says what is wrong with the file, never a server path or
        exception name.
    """
    if not data:
        raise UploadError("the uploaded file is empty")
    dicom = len(data) > 132 and data[128:132] == b"DICM"
    with tempfile.TemporaryDirectory(prefix="qatacov_upload_") as tmp:
        path = Path(tmp) / ("upload.dcm" if dicom else "upload")
        path.write_bytes(data)
        try:
            # The same smallest side infer.py decides on (image_limits.MIN_RADIOGRAPH_SIDE).
            img, note = imageio.read_xray_with_info(path, min_side=MIN_RADIOGRAPH_SIDE)
        except imageio.ImageReadError as e:
            reason = e.reason.replace(str(path), "the file").replace(tmp, "")
            if e.too_large:
                raise UploadError(reason, 413) from None
            if dicom:
                raise UploadError(f"unsupported DICOM: {reason}", 415) from None
            if e.refused:  # readable, but not used (too small for a radiograph)
                raise UploadError(reason) from None
            reason = reason.removeprefix("not a readable image: ")
            raise UploadError(f"not a readable chest X-ray image: {reason}") from None
        except Image.DecompressionBombError:
            raise UploadError(
                f"the image has more pixels than the {Image.MAX_IMAGE_PIXELS} this server "
                "decodes; downsample it",
                413,
            ) from None
        except Exception:  # noqa: BLE001 - any other decoder failure is a bad file
            raise UploadError("the file could not be decoded as an image") from None
        upload = Upload(img, note)
        if dicom:
            upload = dataclasses.replace(upload, dicom=dicom_identifiers(path))
        else:
            upload = dataclasses.replace(upload, colour_fraction=colour_fraction(path))
    return upload


def dicom_identifiers(path: Path) -> dict[str, str]:
    """The `DICOM_IDENTIFIERS` present in a DICOM file's header (values as text)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the pixels were readable; the header is a bonus
        return {}
    out = {}
    for field, keyword in DICOM_IDENTIFIERS.items():
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            out[field] = "".join(c for c in value if c.isprintable())[:200]
    return out


def colour_fraction(path: Path, side: int = 256) -> float:
    """Share of pixels whose RGB channels differ by more than 24 of 255 (at most `side`
    pixels a side): 0 for greyscale files, near 0 for a grey X-ray saved as colour JPEG
    (compression leaves a few levels of chroma), large for photographs and colour noise."""
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "LA", "1", "I", "F") or im.mode.startswith("I;"):
                return 0.0
            im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            rgb = im.convert("RGB")
            rgb.thumbnail((side, side))
            arr = np.asarray(rgb, np.int16)
    except Exception:  # noqa: BLE001 - it was decoded once already; never fail here
        return 0.0
    chroma = arr.max(-1) - arr.min(-1)
    return float((chroma > 24).mean())


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


def deeper_than_8_bits(img: np.ndarray) -> bool:
    """Whether (H, W) float [0, 1] holds values an 8-bit copy would round (a 12-bit DICOM),
    so that window/level on the page needs the 16-bit copy."""
    scaled = np.asarray(img, np.float64) * 255.0
    return bool(np.abs(scaled - np.round(scaled)).max(initial=0.0) > 1e-3)


def encode_probability(prob: np.ndarray) -> bytes:
    """(H, W) values in [0, 1] (probabilities, or an X-ray deeper than 8 bits) -> RGB PNG
    with round(p * 65535) in red (high) + green (low)."""
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
    except Exception:  # noqa: BLE001 - any decoder error is the client's bad mask
        raise UploadError("mask PNG cannot be decoded (corrupt or truncated PNG data)") from None
    if fg.shape != tuple(shape):
        raise UploadError(
            f"mask is {fg.shape[1]}x{fg.shape[0]} pixels but the X-ray is "
            f"{shape[1]}x{shape[0]}; reload the image"
        )
    return fg
