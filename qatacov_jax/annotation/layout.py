"""Folders of accepted masks, in the layouts the TFDS builders read, and image keys.

An annotation folder (`scripts/serve.py --annotations OUT`) is the manual directory of a
builder, so the accepted masks train the next models with no conversion:

    infection (`qatacov19/v1`):
        OUT/QaTa-COV19/QaTa-COV19-v1/Images/<key>.png
        OUT/QaTa-COV19/QaTa-COV19-v1/Ground-truths/mask_<key>.png
    lung (`covid_qu_ex/lung`, the train split):
        OUT/Lung Segmentation Data/Lung Segmentation Data/Train/<class>/images/<key>.png
        OUT/Lung Segmentation Data/Lung Segmentation Data/Train/<class>/lung masks/<key>.png

The builders' folder names are repeated here rather than imported: their modules load
TensorFlow Datasets, which a review server must not wait for (a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from qatacov_jax.data import imageio

TARGETS = ("infection", "lung")
QATA_ROOT = "QaTa-COV19"
QATA_DIR = Path(QATA_ROOT) / f"{QATA_ROOT}-v1"
QATA_IMAGES, QATA_MASKS = "Images", "Ground-truths"
LUNG_ROOT = "Lung Segmentation Data"
LUNG_SPLITS = ("Train", "Val", "Test")
LUNG_CLASSES = ("COVID-19", "Non-COVID", "Normal")
LUNG_IMAGES, LUNG_MASKS = "images", "lung masks"
DEFAULT_CLASS = "COVID-19"
# What each target trains as (`config.data.dataset`, `config.data.target`).
DATASETS = {"infection": ("qatacov19/v1", "infection"), "lung": ("covid_qu_ex/lung", "lung")}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image of a mask folder: its key, X-ray file, mask file and class folder."""

    key: str
    image: Path | None
    mask: Path
    klass: str = DEFAULT_CLASS


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
    return target


def lung_train_dir(out: Path) -> Path:
    return Path(out) / LUNG_ROOT / LUNG_ROOT / "Train"


def accepted_paths(
    out: Path, key: str, target: str, klass: str = DEFAULT_CLASS
) -> tuple[Path, Path]:
    """(X-ray, mask) file an accepted image `key` has in annotation folder `out`."""
    if check_target(target) == "infection":
        root = Path(out) / QATA_DIR
        return root / QATA_IMAGES / f"{key}.png", root / QATA_MASKS / f"mask_{key}.png"
    base = lung_train_dir(out) / klass
    return base / LUNG_IMAGES / f"{key}.png", base / LUNG_MASKS / f"{key}.png"


def prepare_lung_tree(out: Path) -> None:
    """Every class folder the `covid_qu_ex` builder expects in the train split (it refuses a
    split with a class folder missing, even an empty one)."""
    for klass in LUNG_CLASSES:
        for sub in (LUNG_IMAGES, LUNG_MASKS):
            (lung_train_dir(out) / klass / sub).mkdir(parents=True, exist_ok=True)


def read_masks(folder: str | Path, target: str, *, all_splits: bool = False) -> dict[str, Entry]:
    """The images with a mask in `folder`, by key (the X-ray file's stem).

    Args:
      folder: an annotation folder / builder manual directory (layouts above), or a plain
        folder of mask files named `mask_<key>.png` or `<key>.png` (no X-rays: `image` None).
      target: `infection` or `lung`.
      all_splits: lung only: also COVID-QU-Ex's Val and Test (default: Train, which is what
        the builder's train split, and so a stage's training, reads).

    Raises:
      FileNotFoundError: no such folder, or no mask in it.
      ValueError: two images with the same key.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"mask folder {folder} does not exist")
    if check_target(target) == "infection" and (folder / QATA_DIR).is_dir():
        entries = list(_qata_entries(folder / QATA_DIR))
    elif target == "lung" and _lung_root(folder) is not None:
        splits = LUNG_SPLITS if all_splits else LUNG_SPLITS[:1]
        entries = list(_lung_entries(_lung_root(folder), splits))
    else:
        entries = list(_plain_entries(folder))
    out: dict[str, Entry] = {}
    for e in entries:
        if e.key in out:
            raise ValueError(
                f"{folder}: two images have the key {e.key!r} ({out[e.key].mask}, {e.mask})"
            )
        out[e.key] = e
    if not out:
        raise FileNotFoundError(
            f"{folder} holds no {target} masks (expected {QATA_DIR}/{QATA_MASKS}/mask_<key>.png"
            if target == "infection"
            else f"{folder} holds no lung masks (expected {LUNG_ROOT}/{LUNG_ROOT}/Train/<class>/"
            f"{LUNG_MASKS}/<key>.png"
        )
    return dict(sorted(out.items()))


def _qata_entries(root: Path) -> Iterable[Entry]:
    masks_dir = root / QATA_MASKS
    for image in sorted((root / QATA_IMAGES).glob("*.png")):
        mask = masks_dir / f"mask_{image.name}"
        if mask.is_file():  # an image without a mask is not part of the v1 dataset
            yield Entry(image.stem, image, mask)


def _lung_root(folder: Path) -> Path | None:
    for root in (folder / LUNG_ROOT / LUNG_ROOT, folder / LUNG_ROOT):
        if (root / "Train").is_dir():
            return root
    return None


def _lung_entries(root: Path, splits: Iterable[str]) -> Iterable[Entry]:
    for split in splits:
        for klass in LUNG_CLASSES:
            base = root / split / klass
            for image in sorted((base / LUNG_IMAGES).glob("*")):
                mask = base / LUNG_MASKS / image.name
                if image.is_file() and mask.is_file():
                    yield Entry(image.stem, image, mask, klass)


def _plain_entries(folder: Path) -> Iterable[Entry]:
    for mask in sorted(folder.glob("*.png")):
        key = mask.stem[len("mask_") :] if mask.stem.startswith("mask_") else mask.stem
        yield Entry(key, None, mask)


# ------------------------------------------------------------------ keys of X-ray folders


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_key(rel: Path) -> str:
    """Source path relative to the annotated folder's parent -> output stem: folders joined
    by '__', odd characters '_' (`batch1/sub/x.png` -> `batch1__sub__x`). The folder's own
    name is kept so that later batches (`batch2/x.png`) add to the dataset, not replace."""
    parts = [_SAFE.sub("_", p) for p in Path(rel).with_suffix("").parts]
    return "__".join(p.strip("._") or "_" for p in parts)


def is_xray_file(p: Path) -> bool:
    return (
        p.is_file()
        and not p.name.startswith(".")
        and (
            p.suffix.lower() in imageio.SUPPORTED_SUFFIXES
            or (p.suffix == "" and imageio.is_dicom(p))
        )
    )


def xray_folder(images_dir: str | Path) -> dict[str, Path]:
    """Key -> file of every X-ray under `images_dir` (recursively, in file order); keys
    made unique with _2, _3... (`image_key`).

    Raises:
      FileNotFoundError: no such folder, or no X-ray in it.
    """
    images_dir = Path(images_dir).absolute()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"X-ray folder {images_dir} does not exist.")
    sources: dict[str, Path] = {}
    for p in sorted(images_dir.rglob("*")):
        if is_xray_file(p):
            key = base = image_key(p.relative_to(images_dir.parent))
            n = 2
            while key in sources:
                key, n = f"{base}_{n}", n + 1
            sources[key] = p
    if not sources:
        raise FileNotFoundError(
            f"X-ray folder {images_dir} holds no X-ray files "
            f"({', '.join(imageio.SUPPORTED_SUFFIXES)} or DICOM)."
        )
    return sources


def lung_class(path: Path) -> str:
    """The COVID-QU-Ex class folder named on an X-ray's path (default COVID-19)."""
    for part in reversed(Path(path).parts[:-1]):
        if part in LUNG_CLASSES:
            return part
    return DEFAULT_CLASS


def fingerprint(entries: dict[str, Entry]) -> str:
    """A short hash of a mask folder's keys, masks and X-ray sizes: a stage prepares a new
    dataset whenever the accepted masks change, never a stale one."""
    h = hashlib.sha1()
    for key, e in sorted(entries.items()):
        h.update(key.encode() + b"\0" + e.klass.encode() + b"\0")
        h.update(e.mask.read_bytes())
        if e.image is not None:
            h.update(str(e.image.stat().st_size).encode())
    return h.hexdigest()[:12]
