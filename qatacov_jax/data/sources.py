"""From `config.data` to a prepared TFDS dataset, its labels, and the records of a split.

Datasets are addressed by name (`synthetic_cxr`, `qatacov19/v1`, `qatacov19/v2`,
`covid_qu_ex/infection`, `covid_qu_ex/lung`). Preparing never touches the network: TFDS's
GCS access is off, and the real datasets read only the user's manual directory.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from qatacov_jax.data import splits
from qatacov_jax.data.covid_qu_ex import CovidQuEx, covid_qu_ex_config
from qatacov_jax.data.qatacov19 import Qatacov19, qatacov19_config
from qatacov_jax.data.synthetic_cxr import SyntheticCxr, synthetic_config

# Never fetch prepared datasets or metadata from Google's bucket: data comes from the user.
tfds.core.utils.gcs_utils._is_gcs_disabled = True  # noqa: SLF001


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a named dataset maps onto TFDS splits.

    Attributes:
      train: TFDS split used for training (and split into CV folds).
      validation: predefined validation split, or None.
      test: predefined test split, or None.
      positive: label name(s) that count as COVID-19 (label 1).
      targets: which masks exist: subset of ('infection', 'lung').
    """

    train: str
    validation: str | None
    test: str | None
    positive: str
    targets: tuple[str, ...]


SPECS = {
    "synthetic_cxr": DatasetSpec("train", None, "test", "covid19", ("infection", "lung")),
    "qatacov19/v1": DatasetSpec("train", None, None, "covid19", ("infection",)),
    "qatacov19/v2": DatasetSpec("train", None, "test", "covid19", ("infection",)),
    "covid_qu_ex/infection": DatasetSpec(
        "train", "validation", "test", "covid19", ("infection", "lung")
    ),
    "covid_qu_ex/lung": DatasetSpec("train", "validation", "test", "covid19", ("lung",)),
}

MASK_KEY = {"infection": "mask", "lung": "lung_mask"}


def spec(data_cfg: Any, *, check_target: bool = True) -> DatasetSpec:
    if data_cfg.dataset not in SPECS:
        raise ValueError(
            f"Unknown dataset {data_cfg.dataset!r} (config.data.dataset); "
            f"valid names: {sorted(SPECS)}."
        )
    s = SPECS[data_cfg.dataset]
    if check_target and data_cfg.target not in s.targets:
        raise ValueError(
            f"Dataset {data_cfg.dataset!r} has no {data_cfg.target!r} masks "
            f"(config.data.target); it has {list(s.targets)}."
        )
    return s


def data_dir(data_cfg: Any) -> str:
    if data_cfg.data_dir:
        return os.path.expanduser(data_cfg.data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def manual_dir(data_cfg: Any) -> str:
    if data_cfg.manual_dir:
        return os.path.expanduser(data_cfg.manual_dir)
    return os.path.join(data_dir(data_cfg), "downloads", "manual")


def make_builder(data_cfg: Any) -> tfds.core.DatasetBuilder:
    """The (possibly not yet prepared) builder named by `data_cfg.dataset`."""
    spec(data_cfg, check_target=False)
    name = data_cfg.dataset
    ddir = data_dir(data_cfg)
    if name == "synthetic_cxr":
        s = data_cfg.synthetic
        config = synthetic_config(
            s.image_size, s.num_train, s.num_test, s.seed, s.positive_fraction
        )
        return SyntheticCxr(
            config=_config_arg(SyntheticCxr, config), data_dir=ddir, file_format="array_record"
        )
    if name.startswith("qatacov19/"):
        config = qatacov19_config(
            name.split("/")[1],
            manual_dir=manual_dir(data_cfg),
            control_dirs=tuple(data_cfg.control_dirs),
            control_group=data_cfg.control_group,
            stored_size=data_cfg.stored_size,
            bad_data=data_cfg.bad_data,
        )
        return Qatacov19(
            config=_config_arg(Qatacov19, config), data_dir=ddir, file_format="array_record"
        )

    config = covid_qu_ex_config(
        name.split("/")[1], stored_size=data_cfg.stored_size, bad_data=data_cfg.bad_data
    )
    return CovidQuEx(
        config=_config_arg(CovidQuEx, config), data_dir=ddir, file_format="array_record"
    )


def _config_arg(cls: type, config: tfds.core.BuilderConfig) -> tfds.core.BuilderConfig | str:
    """TFDS refuses a config *object* named like a registered one: pass the name instead."""
    registered = cls.builder_configs.get(config.name)
    if registered is None:
        return config
    if registered != config:
        raise ValueError(f"Config {config} clashes with the registered {registered}.")
    return config.name


def prepare(data_cfg: Any) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder, building it first (offline) if needed.

    In a multi-process run only process 0 builds; the others wait at a barrier and then
    read the same prepared files (the data dir must be shared storage).
    """
    builder = make_builder(data_cfg)
    if not _is_prepared(builder):
        if jax.process_index() == 0:
            _download_and_prepare(builder, data_cfg)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"prepare {data_cfg.dataset}")
        builder = make_builder(data_cfg)
    _check_controls(builder)
    return builder


def _check_controls(builder: tfds.core.DatasetBuilder) -> None:
    """A prepared QaTa set must have been built from the control folders asked for now."""
    wanted = getattr(builder.builder_config, "control_dirs", None)
    if wanted is None or not builder.info.metadata:
        return
    built = list(builder.info.metadata.get("control_dirs", []))
    if built != list(wanted):
        raise ValueError(
            f"The prepared dataset {builder.data_dir} was built with control folders {built}, "
            f"but config.data.control_dirs is {list(wanted)}. Use a different "
            "config.data.control_group for a different set of controls."
        )


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return Path(builder.data_dir, "dataset_info.json").is_file()


def _download_and_prepare(builder: tfds.core.DatasetBuilder, data_cfg: Any) -> None:
    if data_cfg.dataset != "synthetic_cxr":
        mdir = manual_dir(data_cfg)
        if not os.path.isdir(mdir):
            raise FileNotFoundError(
                f"Manual download directory {mdir} does not exist. Unpack the dataset there "
                "(see README, Data) or set config.data.manual_dir to the folder that holds it."
            )
    logging.info("Preparing %s into %s", data_cfg.dataset, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir(data_cfg),
            try_download_gcs=False,
            # Statistics need a full extra pass over the data and nothing here reads them.
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        )
    )


def data_source(builder: tfds.core.DatasetBuilder, split: str, *, keep: tuple[str, ...]):
    """Random-access source of examples (dicts of NumPy arrays).

    Only the image features named in `keep` are decoded; the others stay PNG bytes (PNG
    decoding is most of the per-example cost, and e.g. the lung mask is dead weight when
    training on infection).
    """
    skip = {
        k: tfds.decode.SkipDecoding()
        for k in ("image", "mask", "lung_mask")
        if k in builder.info.features and k not in keep
    }
    return builder.as_data_source(split, decoders=skip or None)


@functools.lru_cache(maxsize=32)
def _labels_cached(builder_dir: str, split: str, positive: str) -> np.ndarray:
    builder = tfds.builder_from_directory(builder_dir)
    names = builder.info.features["label"].names
    skip = {
        k: tfds.decode.SkipDecoding()
        for k in ("image", "mask", "lung_mask")
        if k in builder.info.features
    }
    source = builder.as_data_source(split, decoders=skip)
    pos = names.index(positive)
    return np.asarray([int(source[i]["label"]) == pos for i in range(len(source))], np.int32)


def binary_labels(builder: tfds.core.DatasetBuilder, split: str, positive: str) -> np.ndarray:
    """(N,) int32: 1 where the record of `split` is COVID-19, in record order."""
    return _labels_cached(str(builder.data_dir), split, positive)


def select(
    data_cfg: Any, builder: tfds.core.DatasetBuilder, *, fold: int | None, split: str
) -> tuple[str, np.ndarray]:
    """Which records of which TFDS split make up (`fold`, `split`).

    Args:
      fold: CV round k in [0, num_folds) — folds are cut from the train split — or None for
        the dataset's predefined splits (a stratified `val_fraction` hold-out of train serves
        as `eval` where the dataset has no validation split).
      split: `train`, `eval` (held-out fold / validation) or `test`.

    Returns:
      (TFDS split name, sorted record indices into it).
    """
    s = spec(data_cfg)
    if split == "test":
        if s.test is None:
            raise ValueError(
                f"{data_cfg.dataset} has no predefined test split; evaluate on the held-out "
                "CV fold with split='eval' and a fold number."
            )
        labels = binary_labels(builder, s.test, s.positive)
        return s.test, np.arange(len(labels))
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or 'test', got {split!r}.")
    labels = binary_labels(builder, s.train, s.positive)
    if fold is not None:
        train, held = splits.cv_indices(labels, fold, data_cfg.num_folds, data_cfg.fold_seed)
        return s.train, train if split == "train" else held
    if s.validation is not None:
        if split == "train":
            return s.train, np.arange(len(labels))
        val = binary_labels(builder, s.validation, s.positive)
        return s.validation, np.arange(len(val))
    if s.test is None:
        raise ValueError(
            f"{data_cfg.dataset} has no predefined train/test split; pass a CV fold number "
            f"(0..{data_cfg.num_folds - 1}) instead of fold=None."
        )
    kept, held = splits.stratified_holdout(labels, data_cfg.val_fraction, data_cfg.fold_seed)
    return s.train, kept if split == "train" else held
