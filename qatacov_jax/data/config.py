"""The `config.data` block: which dataset, where it lives, and how the pipeline feeds it."""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """Defaults for `config.data` (the synthetic set, paper-faithful pipeline settings).

    Fields:
      dataset: `synthetic_cxr` | `qatacov19/v1` | `qatacov19/v2` | `qatacov19/group2` |
        `covid_qu_ex/infection` | `covid_qu_ex/lung`.
      data_dir: TFDS data directory holding prepared datasets. None = TFDS's default
        (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
      manual_dir: folder holding the unpacked download (`QaTa-COV19/`, or
        `Infection Segmentation Data/` / `Lung Segmentation Data/`). None =
        `<data_dir>/downloads/manual`. Not used by `synthetic_cxr`.
      control_dirs: QaTa-COV19 only: folders of control CXRs (PNG/JPEG/DICOM, searched
        recursively). Empty = `<manual_dir>/controls` if it exists.
      control_group: a short name for that set of control folders (e.g. `group1`); it names
        the prepared dataset, so different control groups never share a directory.
      stored_size: side of the square images the real-dataset builders store (256).
      bad_data: `fail` (stop at the first unusable file, naming it) or `skip` (leave it out,
        log it and count it).
      image_size: model input side; images are resized bilinear, masks nearest.
      target: `infection` (the infection mask) or `lung` (the lung mask).
      protocol: which images train, validate and test (`data.protocols`,
        docs/method.md#protocols): `folds` (K folds cut from the train split, paper 1;
        fold=None: the dataset's own splits), `official` (the shipped Train / Val / Test,
        fold=None) or `paper2` (COVID-QU-Ex: test = the shipped Test, the doctor-verified
        20%; K folds over Train + Val, each round's held-out fold validating; every fold's
        model tested on Test).
      num_folds: K of the stratified K-fold CV used when a fold number is given.
      fold_seed: seed of the fold assignment (and of the fold=None validation hold-out).
      val_fraction: with fold=None on a dataset without a predefined validation split,
        this stratified fraction of the train split is held out as `eval` (0 = none: train
        on the whole train split, as Group-II).
      validation_fraction: a stratified fraction of the *training* part (of the CV round,
        or of the train split) held out as the `validation` split that picks
        checkpoints/best; 0 = none (the final model is evaluated, as paper 1; paper 2 uses
        0.2). The test fold is then read only by the final evaluation
        (docs/method.md#model-selection).
      class_targets: per-category training images per epoch (`{category: count}`), for
        datasets whose examples carry a `category` (`qatacov19/group2`): a category with
        fewer images gets augmented copies up to its target, one absent from the dict is
        used as it is (paper 1, Group-II; docs/datasets.md#group-ii). Empty = off; when
        set it replaces `balance`.
      group2: `qatacov19/group2` inputs: `chestxray14_dir` (ChestX-ray14 images, searched
        recursively), `train_list` / `test_list` (its official train_val_list.txt /
        test_list.txt), `bacterial_dirs` / `viral_dirs` (pneumonia CXR folders). Relative
        paths are under `manual_dir`.
      balance: oversample the minority class (COVID-19 on QaTa) up to the majority count
        each epoch, as the paper's Table 1.
      augment: `copies` (paper: only the extra copies made by balancing are augmented),
        `all` (every training draw), or `none`.
      max_shift / max_rotation: augmentation ranges (fraction of size; degrees).
      num_workers: grain worker processes (0 = in the main process with threads).
      num_threads: reader threads per process.
      prefetch: batches buffered per worker.
      synthetic: sizes of `synthetic_cxr` (stored image side, counts, seed, COVID fraction).
    """
    cfg = ml_collections.ConfigDict()
    cfg.dataset = "synthetic_cxr"
    cfg.data_dir = ml_collections.config_dict.placeholder(str)
    cfg.manual_dir = ml_collections.config_dict.placeholder(str)
    cfg.control_dirs = ()
    cfg.control_group = "controls"
    cfg.stored_size = 256
    cfg.bad_data = "fail"
    cfg.image_size = 224
    cfg.target = "infection"
    cfg.protocol = "folds"
    cfg.num_folds = 5
    cfg.fold_seed = 0
    cfg.val_fraction = 0.2
    cfg.validation_fraction = 0.0
    cfg.balance = True
    cfg.class_targets = ml_collections.ConfigDict()
    cfg.group2 = ml_collections.ConfigDict(
        {
            "chestxray14_dir": ml_collections.config_dict.placeholder(str),
            "train_list": ml_collections.config_dict.placeholder(str),
            "test_list": ml_collections.config_dict.placeholder(str),
            "bacterial_dirs": (),
            "viral_dirs": (),
        }
    )
    cfg.augment = "copies"
    cfg.max_shift = 0.1
    cfg.max_rotation = 10.0
    cfg.num_workers = 0
    cfg.num_threads = 4
    cfg.prefetch = 2
    cfg.synthetic = ml_collections.ConfigDict(
        {"image_size": 128, "num_train": 320, "num_test": 80, "seed": 0, "positive_fraction": 0.3}
    )
    return cfg
