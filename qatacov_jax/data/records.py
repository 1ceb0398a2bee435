"""What the records of a prepared TFDS split are: labels, categories and image ids.

One pass over a split reads every record's `label`, `filename` (and `category`, where the
dataset has one) with the images left undecoded; the result is cached per (prepared
directory, split). A split may be a `+`-joined expression of TFDS splits
(`train+validation`: paper 2's cross-validation pool over COVID-QU-Ex's Train and Val);
its records are those of the parts, in order.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

IMAGE_KEYS = ("image", "mask", "lung_mask")


@dataclasses.dataclass(frozen=True)
class SplitRecords:
    """Per record of a split (N records): `labels` (N,) int32 label index, `filenames`
    (the builder's `filename` feature), `categories` (N,) int32 or None, and `parts`: the
    TFDS split each record comes from."""

    labels: np.ndarray
    filenames: tuple[str, ...]
    categories: np.ndarray | None
    parts: tuple[str, ...]


def split_parts(split: str) -> list[str]:
    """`train+validation` -> ['train', 'validation']."""
    return [p.strip() for p in split.split("+")]


@functools.lru_cache(maxsize=32)
def _records_cached(builder_dir: str, split: str) -> SplitRecords:
    builder = tfds.builder_from_directory(builder_dir)
    skip = {k: tfds.decode.SkipDecoding() for k in IMAGE_KEYS if k in builder.info.features}
    has_category = "category" in builder.info.features
    labels, names, cats, parts = [], [], [], []
    for part in split_parts(split):
        source = builder.as_data_source(part, decoders=skip)
        for i in range(len(source)):
            ex = source[i]
            labels.append(int(ex["label"]))
            name = ex["filename"]
            names.append(name.decode() if isinstance(name, bytes) else str(name))
            if has_category:
                cats.append(int(ex["category"]))
            parts.append(part)
    return SplitRecords(
        labels=np.asarray(labels, np.int32),
        filenames=tuple(names),
        categories=np.asarray(cats, np.int32) if has_category else None,
        parts=tuple(parts),
    )


def records(builder: tfds.core.DatasetBuilder, split: str) -> SplitRecords:
    """The `SplitRecords` of `split` (cached)."""
    return _records_cached(str(builder.data_dir), split)


def label_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
    return tuple(builder.info.features["label"].names)


def binary_labels(builder: tfds.core.DatasetBuilder, split: str, positive: str) -> np.ndarray:
    """(N,) int32: 1 where the record of `split` is COVID-19, in record order."""
    pos = label_names(builder).index(positive)
    return (records(builder, split).labels == pos).astype(np.int32)


def class_labels(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
    """(N,) int32 label index of each record (COVID-QU-Ex: covid19, non_covid, normal)."""
    return records(builder, split).labels


def categories(
    builder: tfds.core.DatasetBuilder, split: str
) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """((N,) int32 category of each record of `split`, category names), or None for a
    dataset whose examples carry no `category` (all but `qatacov19/group2`)."""
    if "category" not in builder.info.features:
        return None
    cats = records(builder, split).categories
    return cats, tuple(builder.info.features["category"].names)


def record_ids(builder: tfds.core.DatasetBuilder, split: str, indices: np.ndarray) -> list[str]:
    """`<TFDS split>/<filename>` of each record in `indices`: unique across the splits of a
    dataset (COVID-QU-Ex: `test/COVID-19/covid_12.png` is the Test folder's file)."""
    recs = records(builder, split)
    return [f"{recs.parts[int(i)]}/{recs.filenames[int(i)]}" for i in indices]
