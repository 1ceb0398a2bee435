"""Stratified K-fold cross-validation and stratified hold-outs, deterministic by seed.

The paper evaluates with stratified 5-fold CV: every fold keeps the COVID-19 / control
ratio of the whole set. Folds are built per class: each class's indices are shuffled with
the seed and dealt into K nearly equal parts, so folds are disjoint, cover the set, and
differ in size by at most one example per class.
"""

from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
    """Splits example indices into `num_folds` disjoint, stratified folds.

    Args:
      labels: (N,) int class of each example.
      num_folds: K >= 2.
      seed: shuffling seed; the same seed gives the same folds.

    Returns:
      K sorted int64 index arrays; fold k is the held-out part of CV round k.
    """
    labels = np.asarray(labels)
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds} (config.data.num_folds).")
    if len(labels) < num_folds:
        raise ValueError(f"Cannot split {len(labels)} examples into {num_folds} folds.")
    rng = np.random.default_rng(seed)
    folds: list[list[np.ndarray]] = [[] for _ in range(num_folds)]
    # Rotating where each class starts keeps fold sizes balanced when class counts are
    # not multiples of K (otherwise fold 0 would get every class's remainder).
    start = 0
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        parts = np.array_split(idx, num_folds)
        for k in range(num_folds):
            folds[(k + start) % num_folds].append(parts[k])
        start += len(idx) % num_folds
    return [np.sort(np.concatenate(f)) for f in folds]


def cv_indices(
    labels: np.ndarray, fold: int, num_folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of CV round `fold`."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold} (num_folds={num_folds}).")
    folds = stratified_folds(labels, num_folds, seed)
    train = np.sort(np.concatenate([f for k, f in enumerate(folds) if k != fold]))
    return train, folds[fold]


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices with `fraction` of each class held out (at least one)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:n])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out
