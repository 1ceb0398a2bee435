"""TFDS builder `covid_qu_ex`: COVID-QU-Ex (Tahir et al.), infection and lung segmentation sets.

Manual download: the folder that holds the unpacked Kaggle archive, with its doubled names:

    Infection Segmentation Data/Infection Segmentation Data/{Train,Val,Test}/
        {COVID-19,Non-COVID,Normal}/{images,lung masks,infection masks}/<name>.png
    Lung Segmentation Data/Lung Segmentation Data/{Train,Val,Test}/
        {COVID-19,Non-COVID,Normal}/{images,lung masks}/<name>.png

A mask has its image's file name. (A single, un-doubled top folder is accepted too.)

Configs: `infection` (features image, mask = infection, lung_mask, label, filename; a
class without an `infection masks` folder gets all-zero infection masks, as non-COVID
images have no infection) and `lung` (image, lung_mask, label, filename). Splits: `train`,
`validation`, `test` (the dataset's Train/Val/Test; Val and Test may be absent, as in a
folder of accepted masks). Labels: `covid19`, `non_covid`, `normal`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from qatacov_jax.data.features import BadDataLog, cxr_features, read_example

LABELS = ["covid19", "non_covid", "normal"]
CLASS_FOLDERS = {"COVID-19": "covid19", "Non-COVID": "non_covid", "Normal": "normal"}
SPLIT_FOLDERS = {"train": "Train", "validation": "Val", "test": "Test"}
ROOTS = {"infection": "Infection Segmentation Data", "lung": "Lung Segmentation Data"}


@dataclasses.dataclass
class CovidQuExConfig(tfds.core.BuilderConfig):
    task: str = "infection"
    stored_size: int = 256
    bad_data: str = "fail"


def covid_qu_ex_config(
    task: str, *, stored_size: int = 256, bad_data: str = "fail"
) -> CovidQuExConfig:
    if task not in ROOTS:
        raise ValueError(f"COVID-QU-Ex config must be one of {sorted(ROOTS)}, got {task!r}.")
    name = task if stored_size == 256 else f"{task}_s{stored_size}"
    return CovidQuExConfig(
        name=name,
        description=f"COVID-QU-Ex {ROOTS[task]}.",
        task=task,
        stored_size=stored_size,
        bad_data=bad_data,
    )


class CovidQuEx(tfds.core.GeneratorBasedBuilder):
    """COVID-QU-Ex CXRs (COVID-19 / non-COVID / normal) with lung and infection masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [covid_qu_ex_config("infection"), covid_qu_ex_config("lung")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download COVID-QU-Ex from Kaggle (anasmohammedtahir/covidqu), unpack it so that "
        "<manual_dir>/'Infection Segmentation Data' and/or 'Lung Segmentation Data' exist, "
        "and point config.data.manual_dir at <manual_dir>."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        infection = self.builder_config.task == "infection"
        return self.dataset_info_from_configs(
            features=cxr_features(LABELS, infection=infection, lung=True),
            homepage="https://www.kaggle.com/datasets/anasmohammedtahir/covidqu",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = _find_root(Path(dl_manager.manual_dir), ROOTS[self.builder_config.task])
        # A folder of accepted masks (docs/annotation.md) has Train only: a Val or Test
        # folder that is absent or holds no image is left out (TFDS cannot write an empty
        # split); K-fold and train-on-all runs read the train split alone.
        return {
            split: self._generate_examples(root / folder, split)
            for split, folder in SPLIT_FOLDERS.items()
            if split == "train" or _has_images(root / folder)
        }

    def _generate_examples(self, split_dir: Path, split: str):
        cfg = self.builder_config
        bad = BadDataLog(cfg.bad_data, split)
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir} not found; is the archive fully unpacked?")
        for class_folder, label in CLASS_FOLDERS.items():
            class_dir = split_dir / class_folder
            images_dir = class_dir / "images"
            if not images_dir.is_dir():
                raise FileNotFoundError(f"{images_dir} not found; is the archive fully unpacked?")
            mask_dirs = {"lung_mask": class_dir / "lung masks"}
            if cfg.task == "infection":
                mask_dirs["mask"] = class_dir / "infection masks"
            for image in sorted(p for p in images_dir.iterdir() if p.is_file()):
                masks: dict[str, Path | None] = {}
                missing = None
                for key, d in mask_dirs.items():
                    if key == "mask" and label != "covid19" and not d.is_dir():
                        masks[key] = None  # no infection folder: no infection to mark
                    elif (d / image.name).is_file():
                        masks[key] = d / image.name
                    else:
                        missing = d / image.name
                if missing is not None:
                    bad.bad(image, f"has no mask (expected {missing})")
                    continue
                ex = read_example(image, masks, cfg.stored_size, bad)
                if ex is not None:
                    key = f"{split}/{class_folder}/{image.name}"
                    yield key, {**ex, "label": label, "filename": f"{class_folder}/{image.name}"}
        bad.report()


def _has_images(split_dir: Path) -> bool:
    return any(p.is_file() for p in split_dir.glob("*/images/*"))


def _find_root(manual: Path, name: str) -> Path:
    """The folder holding Train/Val/Test: the doubled `<name>/<name>` or a single `<name>`."""
    for candidate in (manual / name / name, manual / name):
        if (candidate / "Train").is_dir():
            return candidate
    raise FileNotFoundError(
        f"No '{name}/{name}/Train' (nor '{name}/Train') under the manual directory {manual}; "
        "set config.data.manual_dir to the folder holding the unpacked COVID-QU-Ex archive."
    )
