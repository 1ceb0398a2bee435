"""From `config.data` to a prepared TFDS dataset, its labels, and the records of a split.

Datasets are addressed by name (`synthetic_cxr`, `qatacov19/v1`, `qatacov19/v2`,
`covid_qu_ex/infection`, `covid_qu_ex/lung`). Preparing never touches the network: TFDS's
GCS access is off, and the real datasets read only the user's manual directory. Which
records of which split train, validate and test a run is `select`, by the dataset's spec and
`config.data.protocol` (`data.protocols`: `folds`, `official`, `paper2`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from qatacov_jax.data import protocols, splits
from qatacov_jax.data.covid_qu_ex import CovidQuEx, covid_qu_ex_config
from qatacov_jax.data.qatacov19 import Qatacov19, group2_sources, qatacov19_config
from qatacov_jax.data.records import (  # noqa: F401  (re-exported: pipeline, training.splits)
    binary_labels,
    categories,
    class_labels,
    record_ids,
)
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
    # Paper 1's Group-II: ChestX-ray14's official train/test lists (qatacov19.py).
    "qatacov19/group2": DatasetSpec("train", None, "test", "covid19", ("infection",)),
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
            group2=data_cfg.get("group2"),
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
    if getattr(builder.builder_config, "version_name", "") == "group2":
        now, then = group2_sources(builder.builder_config), builder.info.metadata.get("group2")
        if then is not None and "split" not in then:
            raise ValueError(
                f"The prepared dataset {builder.data_dir} splits the COVID-19 and pneumonia "
                "images at ChestX-ray14's ratio, as before Group-II followed paper 1's Table 5 "
                "counts; delete that folder to prepare it again, or use a new "
                "config.data.control_group."
            )
        if then is not None and dict(then) != now:
            raise ValueError(
                f"The prepared dataset {builder.data_dir} was built from {dict(then)}, but "
                f"config.data.group2 now gives {now}. Use a different config.data.control_group "
                "for different Group-II inputs."
            )


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return Path(builder.data_dir, "dataset_info.json").is_file()


def _download_and_prepare(builder: tfds.core.DatasetBuilder, data_cfg: Any) -> None:
    if data_cfg.dataset != "synthetic_cxr":
        mdir = manual_dir(data_cfg)
        if not os.path.isdir(mdir):
            raise FileNotFoundError(
                f"Manual download directory {mdir} does not exist. Unpack the dataset there "
                "(see docs/data.md) or set config.data.manual_dir to the folder that holds it."
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


def select(
    data_cfg: Any, builder: tfds.core.DatasetBuilder, *, fold: int | None, split: str
) -> tuple[str, np.ndarray]:
    """Which records of which TFDS split make up (`fold`, `split`).

    Args:
      fold: CV round k in [0, num_folds) — folds are cut from the train split (from Train +
        Val under protocol `paper2`) — or None for the dataset's predefined splits (a
        stratified `val_fraction` hold-out of train serves as `eval` where the dataset has
        no validation split).
      split: `train`, `eval` (held-out fold / validation; the test split under `paper2`),
        `validation` (the stratified `config.data.validation_fraction` of the training
        part, which `train` then leaves out; the held-out fold under `paper2`;
        docs/method.md#model-selection) or `test`. `config.data.protocol` decides
        (`data.protocols`).

    Returns:
      (TFDS split name, sorted record indices into it).
    """
    s = spec(data_cfg)
    if protocols.check(data_cfg, s, fold) == "paper2":
        return protocols.paper2_select(data_cfg, builder, s, fold, split)
    if fold is None and train_on_all(data_cfg):
        return _all_of_train(builder, s, split)
    if split == "test":
        if s.test is None:
            raise ValueError(
                f"{data_cfg.dataset} has no predefined test split; evaluate on the held-out "
                "CV fold with split='eval' and a fold number."
            )
        labels = binary_labels(builder, s.test, s.positive)
        return s.test, np.arange(len(labels))
    if split not in ("train", "eval", "validation"):
        raise ValueError(f"split must be 'train', 'eval', 'validation' or 'test', got {split!r}.")
    if split in ("train", "validation"):
        tfds_split, records = _training_part(data_cfg, builder, s, fold)
        fraction = validation_fraction(data_cfg)
        if fraction == 0.0:
            if split == "validation":
                raise ValueError(
                    "There is no validation split: config.data.validation_fraction is 0. Set "
                    "it in (0, 1) to carve one from the training part of the fold."
                )
            return tfds_split, records
        labels = binary_labels(builder, tfds_split, s.positive)[records]
        # Seeded by fold_seed + 1 so the carve is independent of the fold assignment.
        kept, held = splits.stratified_holdout(labels, fraction, data_cfg.fold_seed + 1)
        return tfds_split, records[kept if split == "train" else held]
    labels = binary_labels(builder, s.train, s.positive)
    if fold is not None:
        return s.train, splits.cv_indices(labels, fold, data_cfg.num_folds, data_cfg.fold_seed)[1]
    if s.validation is not None:
        val = binary_labels(builder, s.validation, s.positive)
        return s.validation, np.arange(len(val))
    _need_test(data_cfg, s)
    if not data_cfg.val_fraction:
        raise ValueError(
            f"{data_cfg.dataset} has no 'eval' split with fold=None and "
            "config.data.val_fraction=0; evaluate split 'test' (config.eval_split='test')."
        )
    return s.train, splits.stratified_holdout(labels, data_cfg.val_fraction, data_cfg.fold_seed)[1]


def train_on_all(data_cfg: Any) -> bool:
    """`config.data.train_on_all` (absent = False): with fold=None, every record of the
    train split trains, none is held out (annotation Stage II trains its models on every
    accepted mask; docs/annotation.md). Nothing then picks checkpoints/best, and the final
    evaluation ('eval' or 'test') re-reads the training records: a fit, not a test."""
    return bool(data_cfg.get("train_on_all", False))


def _all_of_train(builder: tfds.core.DatasetBuilder, s: DatasetSpec, split: str):
    if split not in ("train", "eval", "test"):
        raise ValueError(
            "config.data.train_on_all holds nothing out, so there is no validation split; "
            "set config.data.validation_fraction to 0."
        )
    return s.train, np.arange(len(binary_labels(builder, s.train, s.positive)))


def _need_test(data_cfg: Any, s: DatasetSpec) -> None:
    if s.test is None:
        raise ValueError(
            f"{data_cfg.dataset} has no predefined train/test split; pass a CV fold number "
            f"(0..{data_cfg.num_folds - 1}) instead of fold=None."
        )


def _training_part(
    data_cfg: Any, builder: tfds.core.DatasetBuilder, s: DatasetSpec, fold: int | None
) -> tuple[str, np.ndarray]:
    """(TFDS split, records) that training may read: the other folds of CV round `fold`, or
    the dataset's train split less its `eval` hold-out (fold=None)."""
    labels = binary_labels(builder, s.train, s.positive)
    if fold is not None:
        return s.train, splits.cv_indices(labels, fold, data_cfg.num_folds, data_cfg.fold_seed)[0]
    if s.validation is not None or not data_cfg.val_fraction:
        _need_test(data_cfg, s)
        return s.train, np.arange(len(labels))
    _need_test(data_cfg, s)
    return s.train, splits.stratified_holdout(labels, data_cfg.val_fraction, data_cfg.fold_seed)[0]


def validation_fraction(data_cfg: Any) -> float:
    """`config.data.validation_fraction` checked to be in [0, 1) (0 = no validation split)."""
    fraction = float(data_cfg.get("validation_fraction", 0.0) or 0.0)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"config.data.validation_fraction must be in [0, 1), got {fraction} (0 = no "
            "validation split: the final model is evaluated)."
        )
    return fraction


def selection_split(data_cfg: Any, fold: int | None) -> str | None:
    """The split that picks `checkpoints/best` (and is evaluated every epoch), or None.

    docs/method.md#model-selection: the test data must never choose the model. With
    `validation_fraction > 0` it is `validation` (carved from the training part); with
    fold=None it is `eval` (the dataset's own validation split or the `val_fraction`
    hold-out of train, never its test split); in a CV round without a validation fraction
    nothing selects: `checkpoints/best` is the final model, as paper 1 evaluates it (also
    with fold=None and `val_fraction` 0, as paper 1's Group-II). Under protocol `paper2` it
    is `validation`, the held-out fold of Train + Val.
    """
    if protocols.protocol(data_cfg) == "paper2":
        return "validation"  # the held-out fold of Train + Val
    if fold is None and train_on_all(data_cfg):
        return None
    if validation_fraction(data_cfg) > 0.0:
        return "validation"
    if fold is not None:
        return None
    has_eval = spec(data_cfg, check_target=False).validation is not None or data_cfg.val_fraction
    return "eval" if has_eval else None


def final_split(data_cfg: Any, fold: int | None) -> str:
    """The split a run is finally evaluated on: the held-out fold of a CV round (`eval`),
    else the dataset's predefined test split (also for every round of protocol `paper2`)."""
    if protocols.protocol(data_cfg) == "paper2":
        return "test"
    return "eval" if fold is not None else "test"


def test_split(data_cfg: Any, fold: int | None, eval_split: str) -> str:
    """The split of a run's one final evaluation: `config.eval_split`, unless that split
    picks the checkpoint (its metrics would be optimistic), then `final_split`."""
    if eval_split == selection_split(data_cfg, fold):
        return final_split(data_cfg, fold)
    return eval_split
