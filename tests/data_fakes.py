"""Small fake dataset archives in the exact on-disk layouts of QaTa-COV19 and COVID-QU-Ex,
and fake X-ray files (`write_dicom_pixels`) for the image-reading and inference tests.

Each archive image carries a bright square *marker* at a position unique to the file, and its
mask marks the same square, so a test can check that an image was paired with its own mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def marker_position(k: int, h: int, w: int) -> tuple[int, int]:
    """Top-left corner of file k's marker (distinct for k < 16)."""
    return (4 + (k % 4) * (h // 5), 4 + (k // 4) * (w // 5))


def write_pair(image_path: Path, mask_path: Path | None, k: int, h: int = 48, w: int = 40):
    """A grey CXR stand-in with marker k, and (if given) its {0,255} mask."""
    rng = np.random.default_rng(k)
    image = (rng.uniform(40, 120, (h, w))).astype(np.uint8)
    r, c = marker_position(k, h, w)
    image[r : r + 6, c : c + 6] = 255
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path)
    if mask_path is not None:
        mask = np.zeros((h, w), np.uint8)
        mask[r : r + 6, c : c + 6] = 255
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mask_path)


def write_dicom(path: Path, h: int = 40, w: int = 36) -> None:
    """A 16-bit MONOCHROME2 DICOM control image (as RSNA's), made with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 7).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_dicom_pixels(path, pixels: np.ndarray, photometric: str, window=None) -> None:
    """A 12-bit DX DICOM holding `pixels` (2-D, 0..4095) as `photometric` (MONOCHROME1/2),
    with a VOI window `(center, width)` if given."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_qatacov19(manual: Path) -> dict[str, int]:
    """QaTa-COV19 v1 (5 images, 3 with masks) and v2 (3 train / 2 test), plus controls."""
    v1 = manual / "QaTa-COV19" / "QaTa-COV19-v1"
    for k in range(5):
        name = f"img_{k}.png"
        mask = v1 / "Ground-truths" / f"mask_{name}" if k < 3 else None
        write_pair(v1 / "Images" / name, mask, k)
    k = 0
    for folder, n in (("Train Set", 3), ("Test Set", 2)):
        base = manual / "QaTa-COV19" / "QaTa-COV19-v2" / folder
        for _ in range(n):
            name = f"covid_{k}.png"
            write_pair(base / "Images" / name, base / "Ground-truths" / f"mask_{name}", k)
            k += 1
    controls = manual / "group1"
    write_pair(controls / "mooney" / "normal_a.png", None, 10)
    write_pair(controls / "mooney" / "normal_b.jpeg", None, 11)
    write_dicom(controls / "rsna" / "0004cfab-14fd.dcm")
    return {"v1_covid": 3, "v2_train": 3, "v2_test": 2, "controls": 3}


def make_covid_qu_ex(manual: Path, *, per_class: int = 2) -> None:
    """Both COVID-QU-Ex sets with their doubled top folders; Normal has no infection masks
    folder in the infection set (tests the all-zero fallback)."""
    k = 0
    for task, with_infection in (("Infection", True), ("Lung", False)):
        root = manual / f"{task} Segmentation Data" / f"{task} Segmentation Data"
        for split in ("Train", "Val", "Test"):
            for cls, fmt in (
                ("COVID-19", "covid_{}.png"),
                ("Non-COVID", "Non_COVID ({}).png"),
                ("Normal", "Normal ({}).png"),
            ):
                for _ in range(per_class):
                    name = fmt.format(k)
                    d = root / split / cls
                    write_pair(d / "images" / name, d / "lung masks" / name, k % 16)
                    if with_infection and cls != "Normal":
                        mask = np.zeros((48, 40), np.uint8)
                        if cls == "COVID-19":
                            r, c = marker_position(k % 16, 48, 40)
                            mask[r : r + 6, c : c + 6] = 255
                        (d / "infection masks").mkdir(parents=True, exist_ok=True)
                        Image.fromarray(mask).save(d / "infection masks" / name)
                    k += 1
