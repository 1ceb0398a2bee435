"""What an X-ray file may cost and be before it is decoded: a pixel budget read from the
header, the DICOM modalities that are chest radiographs, and the smallest usable image.

A small file can declare a huge image: a 99 KB PNG of 9000 x 9000 pixels, a 79 KB deflated
DICOM that inflates to gigabytes, a 244 KB compressed DICOM of 16000 x 16000. Decoding any
of them costs gigabytes (the float copies of the pipeline multiply the pixel count), so the
size is read from the header first (PIL opens lazily; DICOM with `stop_before_pixels`, and
a deflated DICOM inflated only as far as its header) and the file is refused when it is
over `max_pixels()`. One setting serves `scripts/infer.py`, `scripts/evaluate.py` and the
server: `--max-megapixels` (`set_max_megapixels`) or the `QATACOV_MAX_MEGAPIXELS`
environment variable, default `DEFAULT_MAX_MEGAPIXELS`.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_file_meta_info

# The largest chest detectors are 43 cm at 100 um, 4300 x 4300 = 18.5 million pixels; twice
# that leaves room for scanned films while an 8000 x 8000 file (4.4 GB through infer.py)
# is refused.
DEFAULT_MAX_MEGAPIXELS = 36.0
MAX_MEGAPIXELS_ENV = "QATACOV_MAX_MEGAPIXELS"

# DICOM Modality values of projection radiographs (PS3.3 C.7.3.1.1.1). DR is retired but
# still sent by some detectors; RG is film/screen radiography. A file without Modality is
# accepted (converters and anonymisers drop it); CT, MR, US, NM, SEG, RTDOSE... are refused.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")

# Below this many pixels a side an image shows no lungs (the models read 224..512); the
# decision is not given (`scripts/infer.py`, the server).
MIN_RADIOGRAPH_SIDE = 32

# A deflated DICOM is inflated this far to read its header, then only as far as the header
# says its pixels need.
_DEFLATED_HEADER_BYTES = 4 << 20
_DEFLATE_SLACK_BYTES = 1 << 20

_override: float | None = None


class ImageRefusedError(ValueError):
    """A file that is readable but will not be decoded or used; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageTooLargeError(ImageRefusedError):
    """Refused for its pixel count (the --max-megapixels budget, or Pillow's own limit): the
    web app answers 413, as for an upload over --max-upload-mb."""


def set_max_megapixels(megapixels: float | None) -> None:
    """Sets the pixel budget of this process (None: back to the environment or default)."""
    if megapixels is not None and not megapixels > 0:
        raise ValueError(f"the pixel budget must be positive, got {megapixels}")
    global _override
    _override = megapixels


def max_pixels() -> int:
    """The pixel budget: `set_max_megapixels`, else `QATACOV_MAX_MEGAPIXELS`, else default."""
    if _override is not None:
        return int(_override * 1e6)
    text = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ValueError(f"{MAX_MEGAPIXELS_ENV}={text!r} is not a positive number")
        return int(value * 1e6)
    return int(DEFAULT_MAX_MEGAPIXELS * 1e6)


def check_pixel_budget(height: int, width: int, frames: int = 1, budget: int | None = None):
    """Raises ImageRefusedError when height x width x frames is over the budget."""
    budget = max_pixels() if budget is None else budget
    n = int(height) * int(width) * max(1, int(frames))
    if n > budget:
        of = f" x {frames} frames" if frames > 1 else ""
        raise ImageTooLargeError(
            f"the image is {width} x {height} pixels{of} ({n / 1e6:.1f} million), over the "
            f"limit of {budget / 1e6:g} million that --max-megapixels ({MAX_MEGAPIXELS_ENV}) "
            "sets; downsample it, or raise the limit if the machine has the memory"
        )


def check_min_side(height: int, width: int, min_side: int = MIN_RADIOGRAPH_SIDE) -> None:
    """Raises ImageRefusedError when a side is under `min_side` pixels."""
    if min(height, width) < min_side:
        raise ImageRefusedError(
            f"the image is {width} x {height} pixels, too small for a chest radiograph "
            f"(at least {min_side} pixels a side)"
        )


def check_modality(ds: pydicom.Dataset) -> None:
    """Raises ImageRefusedError when the DICOM's Modality is not a projection radiograph."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise ImageRefusedError(
            f"DICOM Modality is {modality}, not a radiograph ({', '.join(RADIOGRAPH_MODALITIES)}"
            "): the models read chest X-rays only"
        )


def header_frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def check_dicom_header(ds: pydicom.Dataset, budget: int | None = None) -> None:
    """The checks a DICOM header allows before its pixels are decoded: modality, one frame,
    the pixel budget (Rows x Columns x NumberOfFrames)."""
    check_modality(ds)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not isinstance(rows, int) or not isinstance(cols, int):
        return  # decoding will say what is missing
    frames = header_frames(ds)
    check_pixel_budget(rows, cols, frames, budget)
    if frames > 1:
        raise ImageRefusedError(
            f"a multi-frame DICOM ({frames} frames); expected one radiograph per file"
        )


def read_dicom_checked(path: Path, budget: int | None = None) -> pydicom.Dataset:
    """`pydicom.dcmread(path)` after `check_dicom_header` passed on its header alone.

    A deflated file (transfer syntax 1.2.840.10008.1.2.1.99) is inflated here, never past
    what its header declares (pydicom would inflate all of it, whatever it holds).

    Raises:
      ImageRefusedError: refused by the header; other exceptions: an unreadable file.
    """
    meta = read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return _read_deflated(path, meta, budget)
    check_dicom_header(pydicom.dcmread(path, stop_before_pixels=True), budget)
    return pydicom.dcmread(path)


def _read_deflated(path: Path, meta: pydicom.Dataset, budget: int | None) -> pydicom.Dataset:
    raw = path.read_bytes()
    length = meta.get("FileMetaInformationGroupLength")
    if raw[128:132] != b"DICM" or not isinstance(length, int):
        raise ImageRefusedError("a deflated DICOM without a file meta information header")
    start = 132 + 12 + length  # preamble, DICM, the group length element, the group
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflate.decompress(raw[start:], _DEFLATED_HEADER_BYTES)
    header = read_dataset(
        DicomBytesIO(head), False, True, stop_when=lambda tag, vr, n: tag == 0x7FE00010
    )
    check_dicom_header(header, budget)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    bits = int(header.get("BitsAllocated", 16) or 16)
    need = int(header.get("Rows", 0) or 0) * int(header.get("Columns", 0) or 0)
    need = need * header_frames(header) * samples * -(-bits // 8)
    cap = _DEFLATED_HEADER_BYTES + need + need // 8 + _DEFLATE_SLACK_BYTES
    body = head + inflate.decompress(inflate.unconsumed_tail, cap - len(head))
    if inflate.unconsumed_tail or (not inflate.eof and len(body) >= cap):
        raise ImageRefusedError("the deflated DICOM inflates to more data than its header declares")
    dataset = read_dataset(DicomBytesIO(body), False, True)
    ds = FileDataset(str(path), dataset, raw[:128], meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds
