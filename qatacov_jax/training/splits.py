"""`splits.json`: the images a run trains, validates and is tested on.

Written into the run directory before the first training step and checked when the run
resumes: a run whose image lists changed since it started (another protocol, fold, seed,
a rebuilt dataset) is refused with the differences, instead of silently mixing two
experiments. Layout:

    format        1
    dataset       {name, config, version, protocol, target}: the prepared TFDS dataset
    fold          the CV round (null for the dataset's own splits)
    class_names   the dataset's label names
    train         sorted ids of the training images (before balancing / augmentation)
    validation    sorted ids of the split that picks checkpoints/best ([] if none)
    test          sorted ids of the split of the one final evaluation
    classes       {train, validation, test}: the class name of each id, in the same order
    counts        {train, validation, test}: images per class
    checksum      sha256 of dataset, fold, the three id lists and classes

An id is `<TFDS split>/<filename>` (`data.records.record_ids`): COVID-QU-Ex's
`test/COVID-19/covid_12.png` is the file `Test/COVID-19/images/covid_12.png` of the
download. Other keys (e.g. the annotation stage's `predicted`) may be added with
`add_fields`; they are kept and not part of the check.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path
from typing import Any

import ml_collections

from qatacov_jax.training import rundir

SPLITS_FILE = "splits.json"
FORMAT = 1
LISTS = ("train", "validation", "test")
# What the checksum covers: everything that decides which image is used how.
IDENTITY = ("dataset", "fold", *LISTS, "classes")


class SplitsMismatchError(rundir.RunDirMismatchError):
    """The run directory's images differ from those the configuration selects now."""


def checksum(record: dict[str, Any]) -> str:
    """sha256 of the identity fields of a splits record (canonical JSON)."""
    body = json.dumps({k: record.get(k) for k in IDENTITY}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def run_splits(config: ml_collections.ConfigDict, fold: int | None) -> dict[str, Any]:
    """The splits record of a run of `config` in CV round `fold` (prepares the dataset)."""
    from qatacov_jax.data import protocols, sources

    data_cfg = config.data
    builder = sources.prepare(data_cfg)
    names = list(builder.info.features["label"].names)
    which = {
        "train": "train",
        "validation": sources.selection_split(data_cfg, fold),
        "test": sources.test_split(data_cfg, fold, config.get("eval_split", "eval")),
    }
    record: dict[str, Any] = {
        "format": FORMAT,
        "dataset": {
            "name": data_cfg.dataset,
            "config": builder.builder_config.name,
            "version": str(builder.info.version),
            "protocol": protocols.protocol(data_cfg),
            "target": data_cfg.target,
        },
        "fold": fold,
        "class_names": names,
        "classes": {},
        "counts": {},
    }
    for key, split in which.items():
        ids: list[str] = []
        classes: list[str] = []
        if split is not None:
            tfds_split, idx = sources.select(data_cfg, builder, fold=fold, split=split)
            labels = sources.class_labels(builder, tfds_split)[idx]
            pairs = sorted(zip(sources.record_ids(builder, tfds_split, idx), labels, strict=True))
            ids = [i for i, _ in pairs]
            classes = [names[int(c)] for _, c in pairs]
        record[key] = ids
        record["classes"][key] = classes
        record["counts"][key] = dict(sorted(collections.Counter(classes).items()))
    if fold is None and sources.train_on_all(data_cfg):
        record["note"] = "trained on every image; the final evaluation re-reads them (a fit)"
    record["checksum"] = checksum(record)
    return record


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in ("dataset", "fold"):
        if stored.get(key) != now.get(key):
            out.append(f"{key}: {stored.get(key)!r} (stored) != {now.get(key)!r} (now)")
    for key in LISTS:
        then, cur = set(stored.get(key) or ()), set(now.get(key) or ())
        gone, new = sorted(then - cur), sorted(cur - then)
        if gone or new:
            example = (gone or new)[0]
            out.append(
                f"{key}: {len(gone)} images no longer selected, {len(new)} new (e.g. {example})"
            )
    if not out and stored.get("classes") != now.get("classes"):
        out.append("classes: the images' class labels changed")
    return out or ["the stored record was edited (its checksum does not match its contents)"]


def write_or_check(
    workdir: str | Path, config: ml_collections.ConfigDict, fold: int | None
) -> dict[str, Any]:
    """Writes `workdir/splits.json` for a new run, or checks a resumed run's against what
    `config` selects now.

    A stored record without a checksum (written before this check existed, or by an older
    annotation stage) is replaced by the full record, its other keys kept.

    Returns:
      The record now in the run directory.

    Raises:
      SplitsMismatchError: the stored record differs, naming what changed.
    """
    path = Path(workdir) / SPLITS_FILE
    now = run_splits(config, fold)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SplitsMismatchError(
                f"{path} is not valid JSON ({e}); it records the images this run trained on, "
                "so the run cannot be resumed safely. Use a new --workdir."
            ) from None
        if "checksum" in stored:
            if stored["checksum"] != now["checksum"] or checksum(stored) != stored["checksum"]:
                raise SplitsMismatchError(
                    f"--workdir {Path(workdir)} was trained on other images than "
                    "config.data now selects; refusing to mix them. Differences:\n  "
                    + "\n  ".join(_differences(stored, now))
                    + f"\nUse a new --workdir, or restore the data settings (see {path})."
                )
            return stored
        now = {**{k: v for k, v in stored.items() if k not in now}, **now}
    rundir.write_json(path, now)
    return now


def read(run_dir: str | Path) -> dict[str, Any]:
    """The splits record of a run directory."""
    path = Path(run_dir) / SPLITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the run was made before splits.json existed.")
    return json.loads(path.read_text())


def add_fields(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Adds keys that are not part of the record's identity (e.g. `predicted=[...]`).

    Raises:
      ValueError: a key of the record itself.
    """
    clash = sorted(set(fields) & {*IDENTITY, "format", "class_names", "counts", "checksum"})
    if clash:
        raise ValueError(f"{clash} are part of the splits record; they cannot be replaced.")
    record = {**read(run_dir), **fields}
    rundir.write_json(Path(run_dir) / SPLITS_FILE, record)
    return record
