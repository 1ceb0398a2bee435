"""TFDS builder `qatacov19`: the QaTa-COV19 COVID-19 CXRs with infection masks, plus controls.

Manual download: the folder that holds the unpacked Kaggle archive `QaTa-COV19/`:

    QaTa-COV19/QaTa-COV19-v1/Images/<name>.png
    QaTa-COV19/QaTa-COV19-v1/Ground-truths/mask_<name>.png
    QaTa-COV19/QaTa-COV19-v2/{Train Set,Test Set}/Images/covid_N.png
    QaTa-COV19/QaTa-COV19-v2/{Train Set,Test Set}/Ground-truths/mask_covid_N.png

Configs:
* `v1`: every v1 image that has a ground-truth mask (2,951 of the 4,603 images; the rest
  have no mask and are left out by design, with a log line) in one `train` split — the
  paper's 5-fold CV is cut from it by the pipeline;
* `v2`: the predefined `train` (7,145) / `test` (2,113) split.

Controls (label `control`, all-zero mask) come from folders the user points at
(`control_dirs`; default `<manual_dir>/controls` when present), searched recursively for
PNG/JPEG/BMP/TIFF/DICOM (RSNA's files are DICOM). Control Group-I (RSNA, PadChest, Mooney,
Montgomery, Shenzhen normals) or Group-II (ChestX-ray14) is simply a different set of folders
with a different `control_group` name. In `v2` each control goes to `test` with the
COVID-19 test fraction, decided by a hash of its path (stable across rebuilds).

`group2` is paper 1's Group-II experiment (docs/datasets.md#group-ii): ChestX-ray14's
official train / test lists (the user passes the two list files and the image folder),
bacterial and viral pneumonia folders, and the v1 COVID-19 images; no CV. The COVID-19 and
pneumonia images are split with Table 5's counts (`TABLE5_SPLIT`: COVID-19 2,078 / 873,
bacterial 2,130 / 630, viral 1,146 / 339; a class of another size at the same proportion),
the test images chosen by a stable hash of each file, so a rebuild picks the same ones.
Each example also carries its `category` (`GROUP2_CATEGORIES`), which the per-class
augmentation targets of the pipeline count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from qatacov_jax.data.features import BadDataLog, cxr_features, read_example
from qatacov_jax.data.imageio import SUPPORTED_SUFFIXES, is_dicom

LABELS = ["control", "covid19"]
GROUP2_CATEGORIES = ["covid19", "bacterial_pneumonia", "viral_pneumonia", "chestxray14"]
ROOT = "QaTa-COV19"
V2_SPLITS = {"train": "Train Set", "test": "Test Set"}
# Paper 1's Table 5: (training, test) images of the Group-II classes besides ChestX-ray14
# (whose official lists give 86,524 / 25,596). The COVID-19 ratio (29.6% test) is not
# ChestX-ray14's (22.8%), so each class is split by its own counts.
TABLE5_SPLIT = {
    "covid19": (2078, 873),
    "bacterial_pneumonia": (2130, 630),
    "viral_pneumonia": (1146, 339),
}
# Recorded in the prepared dataset: a Group-II set split otherwise is refused (sources.py).
GROUP2_SPLIT_RULE = "table5"


@dataclasses.dataclass
class Qatacov19Config(tfds.core.BuilderConfig):
    """Which QaTa-COV19 version, which control folders, storage size and bad-data policy."""

    version_name: str = "v1"
    control_dirs: tuple[str, ...] = ()
    stored_size: int = 256
    bad_data: str = "fail"
    # group2 only: ChestX-ray14 image folder, its train(+val) and test list files, and the
    # bacterial / viral pneumonia folders.
    chestxray14_dir: str = ""
    train_list: str = ""
    test_list: str = ""
    bacterial_dirs: tuple[str, ...] = ()
    viral_dirs: tuple[str, ...] = ()


def qatacov19_config(
    version_name: str,
    *,
    manual_dir: str | None = None,
    control_dirs: tuple[str, ...] = (),
    control_group: str = "controls",
    stored_size: int = 256,
    bad_data: str = "fail",
    group2: Any = None,
) -> Qatacov19Config:
    """A config named `v1`/`v2`, or `v1_<group>` when control folders are given (so prepared
    datasets with different controls live in different directories); `group2_<group>` with
    the `config.data.group2` block (ChestX-ray14 lists and pneumonia folders)."""
    if version_name not in ("v1", "v2", "group2"):
        raise ValueError(
            f"QaTa-COV19 version must be 'v1', 'v2' or 'group2', got {version_name!r}."
        )
    dirs = tuple(str(_resolve(d, manual_dir)) for d in control_dirs)
    name = version_name
    extra: dict[str, Any] = {}
    if version_name == "group2":
        extra = _group2_fields(group2, manual_dir)
        if control_group not in ("controls", "group2"):
            name += f"_{control_group}"
    if dirs:
        if not control_group.replace("-", "").replace("_", "").isalnum():
            raise ValueError(
                f"control_group {control_group!r} must be letters, digits, '-' or '_' "
                "(it names the prepared dataset directory)."
            )
        name += f"_{control_group}"
    if stored_size != 256:
        name += f"_s{stored_size}"
    return Qatacov19Config(
        name=name,
        description=f"QaTa-COV19 {version_name} with controls from {list(dirs) or 'none'}.",
        version_name=version_name,
        control_dirs=dirs,
        stored_size=stored_size,
        bad_data=bad_data,
        **extra,
    )


def _group2_fields(group2: Any, manual_dir: str | None) -> dict[str, Any]:
    """The resolved `config.data.group2` paths, each checked to exist (one clear error)."""
    need = {
        "chestxray14_dir": "the ChestX-ray14 image folder (searched recursively)",
        "train_list": "ChestX-ray14's official train list (train_val_list.txt)",
        "test_list": "ChestX-ray14's official test list (test_list.txt)",
    }
    out: dict[str, Any] = {}
    for key, what in need.items():
        value = group2.get(key) if group2 is not None else None
        if not value:
            raise ValueError(f"config.data.group2.{key} is not set: give {what}.")
        path = _resolve(value, manual_dir)
        if not path.exists():
            raise FileNotFoundError(f"config.data.group2.{key}: {path} does not exist ({what}).")
        out[key] = str(path)
    for key in ("bacterial_dirs", "viral_dirs"):
        paths = tuple(str(_resolve(d, manual_dir)) for d in group2.get(key) or ())
        for p in paths:
            if not Path(p).is_dir():
                raise FileNotFoundError(f"config.data.group2.{key}: {p} is not a folder.")
        out[key] = paths
    return out


def _resolve(path: str, manual_dir: str | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and manual_dir:
        p = Path(manual_dir) / p
    return p


class Qatacov19(tfds.core.GeneratorBasedBuilder):
    """QaTa-COV19 (v1, v2) COVID-19 CXRs with infection masks, plus user-supplied controls."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [qatacov19_config("v1"), qatacov19_config("v2")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download QaTa-COV19 from Kaggle (aysendegerli/qatacov19-dataset), unpack it so that "
        "<manual_dir>/QaTa-COV19/QaTa-COV19-v1 and .../QaTa-COV19-v2 exist, and point "
        "config.data.manual_dir at <manual_dir>. Put control CXRs under "
        "<manual_dir>/controls or list their folders in config.data.control_dirs."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        features = cxr_features(LABELS, infection=True, lung=False)
        metadata = {"control_dirs": list(cfg.control_dirs)}
        if cfg.version_name == "group2":
            features = tfds.features.FeaturesDict(
                {**features, "category": tfds.features.ClassLabel(names=GROUP2_CATEGORIES)}
            )
            metadata["group2"] = group2_sources(cfg)
        return self.dataset_info_from_configs(
            features=features,
            homepage="https://www.kaggle.com/datasets/aysendegerli/qatacov19-dataset",
            metadata=tfds.core.MetadataDict(**metadata),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        manual = Path(dl_manager.manual_dir)
        # Group-II's COVID-19 images are v1's.
        root = manual / ROOT / f"QaTa-COV19-{cfg.version_name.replace('group2', 'v1')}"
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} not found. The manual directory {manual} must hold the unpacked "
                f"'{ROOT}/' folder (see config.data.manual_dir)."
            )
        control_dirs = [Path(d) for d in cfg.control_dirs]
        if not control_dirs and (manual / "controls").is_dir():
            control_dirs = [manual / "controls"]
        for d in control_dirs:
            if not d.is_dir():
                raise FileNotFoundError(
                    f"Control folder {d} does not exist (config.data.control_dirs)."
                )
        controls = sorted(p for d in control_dirs for p in _image_files(d))
        if cfg.version_name == "group2":
            return self._group2_splits(manual / ROOT / "QaTa-COV19-v1")
        if cfg.version_name == "v1":
            pairs = _pairs(root, "v1")
            return {"train": self._generate_examples(pairs, controls, "train")}
        pairs = {split: _pairs(root / folder, split) for split, folder in V2_SPLITS.items()}
        n_test = len(pairs["test"])
        test_fraction = n_test / max(1, n_test + len(pairs["train"]))
        split_controls = {"train": [], "test": []}
        for p in controls:
            split_controls["test" if _hash_unit(p) < test_fraction else "train"].append(p)
        return {
            split: self._generate_examples(pairs[split], split_controls[split], split)
            for split in V2_SPLITS
        }

    def _group2_splits(self, v1_root: Path) -> dict[str, Any]:
        """Group-II: ChestX-ray14 by its official lists; the other classes by its ratio."""
        cfg = self.builder_config
        lists = {"train": _read_list(cfg.train_list), "test": _read_list(cfg.test_list)}
        both = set(lists["train"]) & set(lists["test"])
        if both:
            raise ValueError(
                f"{len(both)} files are in both ChestX-ray14 lists (e.g. {sorted(both)[0]}); "
                "check config.data.group2.train_list and test_list."
            )
        found = {p.name: p for p in _image_files(Path(cfg.chestxray14_dir))}
        missing = [n for names in lists.values() for n in names if n not in found]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} files of the ChestX-ray14 lists are not under "
                f"{cfg.chestxray14_dir} (e.g. {missing[0]}); unpack every images_*.tar.gz there."
            )
        others: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []}
        masks = dict(_pairs(v1_root, "v1"))  # v1 images without a mask are left out
        images = {
            "covid19": list(masks),
            "bacterial_pneumonia": [p for d in cfg.bacterial_dirs for p in _image_files(Path(d))],
            "viral_pneumonia": [p for d in cfg.viral_dirs for p in _image_files(Path(d))],
        }
        for category, paths in images.items():
            train, test = split_by_table5(sorted(paths), category)
            others["train"] += [(p, category) for p in train]
            others["test"] += [(p, category) for p in test]
        return {
            split: self._group2_examples(
                others[split], [found[n] for n in lists[split]], masks, split
            )
            for split in ("train", "test")
        }

    def _group2_examples(self, others, chestxray14: list[Path], masks, split: str):
        cfg = self.builder_config
        bad = BadDataLog(cfg.bad_data, split)
        items = [*others, *((p, "chestxray14") for p in chestxray14)]
        for path, category in items:
            covid = category == "covid19"
            ex = read_example(path, {"mask": masks[path] if covid else None}, cfg.stored_size, bad)
            if ex is not None:
                yield (
                    str(path),
                    {
                        **ex,
                        "label": "covid19" if covid else "control",
                        "category": category,
                        "filename": path.name if covid else str(path),
                    },
                )
        bad.report()

    def _generate_examples(self, pairs: list[tuple[Path, Path | None]], controls, split: str):
        cfg = self.builder_config
        bad = BadDataLog(cfg.bad_data, split)
        for image_path, mask_path in pairs:
            if mask_path is None:
                bad.bad(image_path, "has no ground-truth mask (expected mask_<image name>)")
                continue
            ex = read_example(image_path, {"mask": mask_path}, cfg.stored_size, bad)
            if ex is not None:
                yield str(image_path), {**ex, "label": "covid19", "filename": image_path.name}
        for path in controls:
            ex = read_example(path, {"mask": None}, cfg.stored_size, bad)
            if ex is not None:
                yield str(path), {**ex, "label": "control", "filename": str(path)}
        bad.report()


def _pairs(folder: Path, split: str) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every image of a QaTa `Images/` + `Ground-truths/` folder.

    v1 ships more images than masks by design, so there an image without a mask is left out
    (logged); in v2 every image must have its mask (`None` is reported as bad data).
    """
    images_dir, masks_dir = folder / "Images", folder / "Ground-truths"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found; is the QaTa-COV19 archive fully unpacked?")
    masks = {p.name: p for p in masks_dir.iterdir() if p.is_file()}
    out, unmasked = [], 0
    for image in sorted(p for p in images_dir.iterdir() if p.is_file()):
        mask = masks.get(f"mask_{image.name}")
        if mask is None and split == "v1":
            unmasked += 1
            continue
        out.append((image, mask))
    if unmasked:
        logging.info("%s: %d images have no ground-truth mask and are left out", folder, unmasked)
    return out


def _image_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in SUPPORTED_SUFFIXES or is_dicom(p))
    ]


def _read_list(path: str) -> list[str]:
    """File names of a ChestX-ray14 list file (one per line; blank lines ignored)."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no files (config.data.group2 list file).")
    return names


def group2_sources(cfg: Qatacov19Config) -> dict[str, Any]:
    return {
        "chestxray14_dir": cfg.chestxray14_dir,
        "train_list": cfg.train_list,
        "test_list": cfg.test_list,
        "bacterial_dirs": list(cfg.bacterial_dirs),
        "viral_dirs": list(cfg.viral_dirs),
        "split": GROUP2_SPLIT_RULE,
    }


def table5_test_count(category: str, n: int) -> int:
    """Test images of a Group-II class of `n` images: Table 5's count when `n` is the
    paper's total (COVID-19 2,951 -> 873), else the same proportion, rounded half up."""
    train, test = TABLE5_SPLIT[category]
    return (2 * n * test + train + test) // (2 * (train + test))


def split_by_table5(paths: list[Path], category: str) -> tuple[list[Path], list[Path]]:
    """(train, test) of one Group-II class: `table5_test_count` test images, the first in
    the order of a stable hash of each file (the same choice on every rebuild), both in
    the order of `paths`."""
    order = sorted(paths, key=lambda p: (_hash_unit(p), str(p)))
    test = set(order[: table5_test_count(category, len(paths))])
    return [p for p in paths if p not in test], [p for p in paths if p in test]


def _hash_unit(path: Path) -> float:
    """A stable pseudo-random number in [0, 1) from a file's name and parent folder."""
    key = f"{path.parent.name}/{path.name}".encode()
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") / 2.0**64
