"""Evaluation protocols: which images train, validate and test a run (`config.data.protocol`).

| protocol | fold | train | validation (picks the checkpoint) | test |
|---|---|---|---|---|
| `folds` (default) | k | the other K-1 folds of the train split | `validation_fraction` of that, or none | the held-out fold (`eval`) |
| `folds` | None | the train split | the dataset's Val, or `val_fraction` of train | the test split |
| `official` | None only | the shipped Train | the shipped Val (else `validation_fraction`) | the shipped Test |
| `paper2` | k only | K-1 folds of Train + Val | the held-out fold of Train + Val | the shipped Test |

`paper2` is paper 2's (COVID-QU-Ex) protocol: "the verified subset (20%) was considered as a
test set for all the experiments", "a 20% test set, an 80% train set, and five-fold
cross-validation, where 20% of training data was used as a validation set". The download
ships that verified 20% as `Test/`; the other 80% (`Train/` + `Val/`) is cut into K=5
stratified folds (by the three classes), and in round k fold k (20% of the 80%) is the
validation set, the other four train, and the model is tested on `Test/`. Every fold's
model is tested on the same images, so cross-validation reports fold averages, and pooled
counts whose confidence intervals use the number of test images (docs/method.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatacov_jax.data import records as recs
from qatacov_jax.data import splits

PROTOCOLS = ("folds", "official", "paper2")


def protocol(data_cfg: Any) -> str:
    """`config.data.protocol` (absent or None = `folds`), checked."""
    name = data_cfg.get("protocol") or "folds"
    if name not in PROTOCOLS:
        raise ValueError(
            f"Unknown config.data.protocol {name!r}; valid: {list(PROTOCOLS)} "
            "(docs/method.md#protocols)."
        )
    return name


def check(data_cfg: Any, spec: Any, fold: int | None) -> str:
    """The protocol of `data_cfg`, refused where it cannot apply to `spec` and `fold`.

    Args:
      spec: the dataset's `sources.DatasetSpec`.
      fold: the CV round, or None.

    Raises:
      ValueError: naming the config field to change.
    """
    name = protocol(data_cfg)
    fraction = float(data_cfg.get("validation_fraction", 0.0) or 0.0)
    if name == "official":
        if spec.test is None:
            raise ValueError(
                f"{data_cfg.dataset} ships no test split, so config.data.protocol='official' "
                "cannot apply; use 'folds' with a fold number."
            )
        if fold is not None:
            raise ValueError(
                "config.data.protocol='official' trains on the dataset's own splits: set "
                "config.fold=None (a fold number cuts folds: protocol 'folds' or 'paper2')."
            )
        if spec.validation is not None and fraction > 0:
            raise ValueError(
                f"{data_cfg.dataset} ships a validation split, which protocol 'official' "
                "uses; set config.data.validation_fraction=0."
            )
    if name == "paper2":
        if spec.validation is None or spec.test is None:
            raise ValueError(
                f"config.data.protocol='paper2' needs a dataset shipped as Train / Val / Test "
                f"(covid_qu_ex/infection, covid_qu_ex/lung), not {data_cfg.dataset}."
            )
        if fold is None:
            raise ValueError(
                "config.data.protocol='paper2' is five-fold cross-validation over Train + Val: "
                "give config.fold (0..num_folds-1), or run scripts/cross_validate.py."
            )
        if fraction > 0:
            raise ValueError(
                "In protocol 'paper2' the held-out fold of Train + Val is the validation set "
                "(20% of the training data with 5 folds); set config.data.validation_fraction=0."
            )
        if data_cfg.get("train_on_all"):
            raise ValueError("config.data.train_on_all holds nothing out; it cannot be 'paper2'.")
    return name


def paper2_pool(spec: Any) -> str:
    """The TFDS split expression of paper 2's cross-validation pool (Train + Val)."""
    return f"{spec.train}+{spec.validation}"


def paper2_select(
    data_cfg: Any, builder: Any, spec: Any, fold: int, split: str
) -> tuple[str, np.ndarray]:
    """(TFDS split, sorted record indices) of (`fold`, `split`) under protocol `paper2`.

    `train`: the other folds of Train + Val; `validation`: fold `fold` of Train + Val (the
    selection split); `test` and `eval` (what a CV round is finally evaluated on): Test.
    Folds are stratified by class label, seeded by `config.data.fold_seed`.
    """
    if split in ("test", "eval"):
        return spec.test, np.arange(len(recs.class_labels(builder, spec.test)))
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train', 'eval', 'validation' or 'test', got {split!r}.")
    pool = paper2_pool(spec)
    labels = recs.class_labels(builder, pool)
    train, held = splits.cv_indices(labels, fold, int(data_cfg.num_folds), data_cfg.fold_seed)
    return pool, train if split == "train" else held


def tests_on_shared_split(data_cfg: Any, split: str | None) -> bool:
    """Whether a fold evaluated on `split` saw the dataset's one test split, the same images
    as every other fold: 'test', or 'eval' under protocol `paper2` (whose `eval` is Test).

    Args:
      data_cfg: the fold's `config.data` (a ConfigDict or its JSON dict).
    """
    if split == "test":
        return True
    return split == "eval" and protocol(data_cfg) == "paper2"
