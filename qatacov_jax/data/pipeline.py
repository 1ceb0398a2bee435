"""The grain input pipeline: TFDS records -> model-ready, mesh-sharded global batches.

Per example: decode -> resize to `image_size` (image bilinear, mask nearest) -> training
augmentation (shift/rotation, identical on image and mask) -> the encoder's `Preprocessing`.
Then batch -> worker processes + prefetch -> `shard_batch` onto the mesh.

The order of training examples is a pure function of (seed, global position), computed in
`TrainPlan`: epoch e is the balanced pool (every control once; every COVID-19 image once
unaugmented plus augmented copies up to the control count, as the paper's Table 1) shuffled
with seed (seed, e). Global position g lands in global batch g // B; process p reads only the
positions of its own slice of every batch, so each host loads just its shard and the stream
is identical for any number of worker processes. Augmentation draws from a generator seeded
by (seed, g) for the same reason, and grain's iterator state (a position) resumes it exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from jax.sharding import Mesh

from qatacov_jax.data import sources
from qatacov_jax.data.augment import augment as random_augment
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.data.resize import resize_image, resize_mask
from qatacov_jax.runtime.sharding import check_batch_size, shard_batch

AUGMENT_MODES = ("copies", "all", "none")


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """Maps a global stream position to (record, augment?) for the balanced, shuffled epochs.

    Attributes:
      records: (N,) record indices of the training pool (into the TFDS split).
      labels: (N,) int 0/1 labels of those records.
      balance: oversample the minority class to the majority count per epoch.
      augment: one of `AUGMENT_MODES`.
      seed: shuffling seed.
      groups: (N,) int group of each record for `targets` (None: balance by label).
      targets: per group, images per epoch (None = each image once, no copies); when
        given, it replaces `balance`: paper 1's Group-II targets (docs/datasets.md#group-ii).
    """

    records: np.ndarray
    labels: np.ndarray
    balance: bool
    augment: str
    seed: int
    groups: np.ndarray | None = None
    targets: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.augment not in AUGMENT_MODES:
            raise ValueError(
                f"config.data.augment must be one of {AUGMENT_MODES}, got {self.augment!r}."
            )
        if len(self.records) == 0:
            raise ValueError("The training split is empty; check the dataset and fold.")

    def _group_targets(self) -> tuple[np.ndarray, dict[int, int]] | None:
        """(group of each record, images per epoch of each present group), or None."""
        if self.targets is not None:
            groups = np.asarray(self.groups)
            present = [int(g) for g in np.unique(groups)]
            sizes = np.bincount(groups, minlength=len(self.targets))
            return groups, {g: max(int(sizes[g]), int(self.targets[g] or 0)) for g in present}
        if not self.balance:
            return None
        counts = np.bincount(self.labels, minlength=2)
        return self.labels, {int(c): int(counts.max()) for c in np.unique(self.labels)}

    @functools.cached_property
    def epoch_length(self) -> int:  # cached: the positions ask for it once per example
        plan = self._group_targets()
        return len(self.records) if plan is None else int(sum(plan[1].values()))

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(records (E,), augment flags (E,)) of epoch `e`, shuffled."""
        rng = np.random.default_rng([self.seed, e])
        plan = self._group_targets()
        if plan is not None:
            groups, targets = plan
            recs, flags = [], []
            for cls, target in targets.items():
                idx = self.records[groups == cls]
                extra = target - len(idx)
                # Whole extra rounds of the class, then a random subset for the remainder,
                # redrawn every epoch so every image gets its share of copies over time.
                copies = np.concatenate(
                    [np.tile(idx, extra // len(idx)), rng.permutation(idx)[: extra % len(idx)]]
                )
                recs += [idx, copies]
                flags += [np.zeros(len(idx), bool), np.ones(len(copies), bool)]
            records, copy = np.concatenate(recs), np.concatenate(flags)
        else:
            records, copy = self.records, np.zeros(len(self.records), bool)
        if self.augment == "all":
            flags = np.ones(len(records), bool)
        elif self.augment == "none":
            flags = np.zeros(len(records), bool)
        else:
            flags = copy
        order = rng.permutation(len(records))
        return records[order], flags[order]


class _TrainPositions:
    """Random-access, practically infinite sequence of this process's training positions."""

    def __init__(self, plan: TrainPlan, global_batch: int, local_batch: int, process: int):
        self.plan = plan
        self.global_batch = global_batch
        self.local_batch = local_batch
        self.process = process
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = (i // self.local_batch) * self.global_batch
        g += self.process * self.local_batch + i % self.local_batch
        e, pos = divmod(g, self.plan.epoch_length)
        # Reader threads call this concurrently, so read the cache once into a local and
        # replace it wholesale (never mutate it); two epochs cover a batch that straddles.
        cache = self._cache
        if e not in cache:
            cache = {k: v for k, v in cache.items() if k == e - 1}
            cache[e] = self.plan.epoch(e)
            self._cache = cache
        records, flags = cache[e]
        return {"record": int(records[pos]), "augment": bool(flags[pos]), "position": g}


class _EvalPositions:
    """This process's slice of the padded evaluation order."""

    def __init__(self, records: np.ndarray, global_batch: int, local_batch: int, process: int):
        self.records = records
        self.global_batch = global_batch
        self.local_batch = local_batch
        self.process = process
        num_batches = -(-len(records) // global_batch)
        self.length = num_batches * local_batch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        g = (i // self.local_batch) * self.global_batch
        g += self.process * self.local_batch + i % self.local_batch
        valid = g < len(self.records)
        return {
            "record": int(self.records[g if valid else 0]),
            "augment": False,
            "position": g,
            "valid": valid,
        }


class LoadExample(grain.transforms.Map):
    """Reads one record and makes it model-ready (picklable, for worker processes)."""

    def __init__(
        self,
        source: Any,
        *,
        mask_key: str,
        positive: int,
        image_size: int,
        preprocessing: Preprocessing,
        seed: int,
        max_shift: float,
        max_rotation: float,
    ) -> None:
        self.source = source
        self.mask_key = mask_key
        self.positive = positive
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.scale, self.shift = _channel_affine(preprocessing)
        self.seed = seed
        self.max_shift = max_shift
        self.max_rotation = max_rotation

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        ex = self.source[element["record"]]
        image = resize_image(ex["image"][..., 0], self.image_size)
        mask = resize_mask(ex[self.mask_key][..., 0], self.image_size)
        image = image.astype(np.float32) / np.float32(255.0)
        if element["augment"]:
            rng = np.random.default_rng([self.seed, element["position"]])
            image, mask = random_augment(rng, image, mask, self.max_shift, self.max_rotation)
        out = {
            "image": image[..., None] * self.scale + self.shift,
            "mask": (mask > 127).astype(np.float32)[..., None],
            "label": np.int32(int(ex["label"]) == self.positive),
        }
        if "valid" in element:
            out["valid"] = np.bool_(element["valid"])
            out["index"] = np.int32(element["position"])
        return out


def _channel_affine(preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(scale (3,), shift (3,)) with preprocessing(grey) == grey * scale + shift.

    Every preprocessing mode is a per-channel affine map of a grey image; doing it as one
    broadcast multiply-add is ~5x cheaper than the general call. Derived by probing the
    `Preprocessing` itself (so it can never drift from it) and checked to be affine.
    """
    probe = np.asarray([0.0, 1.0, 0.37], np.float32).reshape(3, 1, 1, 1)
    out = np.asarray(preprocessing(probe), np.float32)[:, 0, 0, :]  # (3 probes, 3 channels)
    shift, scale = out[0], out[1] - out[0]
    if not np.allclose(out[2], 0.37 * scale + shift, rtol=1e-5, atol=1e-5):
        raise ValueError(f"Preprocessing {preprocessing} is not a per-channel affine map.")
    return scale, shift


class ShardedIterator:
    """Iterator of global, mesh-sharded batches with grain's exact-resume state.

    `get_state()` / `set_state()` save and restore the position of the underlying grain
    iterator (a JSON-serialisable dict), so a resumed run sees exactly the batches the
    interrupted one would have seen next.
    """

    def __init__(self, dataset: grain.IterDataset, mesh: Mesh) -> None:
        self._dataset = dataset
        self._iterator = iter(dataset)
        self._mesh = mesh

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return shard_batch(next(self._iterator), self._mesh)

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state)

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _loader(data_cfg: Any, builder, split: str, preprocessing: Preprocessing, seed: int):
    spec = sources.spec(data_cfg)
    names = builder.info.features["label"].names
    return LoadExample(
        sources.data_source(builder, split, keep=("image", sources.MASK_KEY[data_cfg.target])),
        mask_key=sources.MASK_KEY[data_cfg.target],
        positive=names.index(spec.positive),
        image_size=data_cfg.image_size,
        preprocessing=preprocessing,
        seed=seed,
        max_shift=data_cfg.max_shift,
        max_rotation=data_cfg.max_rotation,
    )


def _finish(ds: grain.MapDataset, data_cfg: Any, local_batch: int, drop: bool) -> Any:
    # Batching on the MapDataset (before worker slicing) makes each worker produce whole,
    # consecutive batches that grain interleaves back in order: the stream of batches is the
    # same for any num_workers (batching after the split would mix workers' examples).
    batched = ds.batch(local_batch, drop_remainder=drop)
    read = grain.ReadOptions(
        num_threads=data_cfg.num_threads,
        # grain warns (and under-uses its threads) when the buffer is smaller than the threads.
        prefetch_buffer_size=max(2, data_cfg.prefetch, data_cfg.num_threads),
    )
    it = batched.to_iter_dataset(read)
    if data_cfg.num_workers > 0:
        # Grain's workers read absl flags; outside an absl app (pytest, notebooks, plain
        # scripts) they are unparsed and grain would fail, so accept the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data_cfg.num_workers, per_worker_buffer_size=data_cfg.prefetch
            )
        )
    return it


def _local_batch(global_batch_size: int, mesh: Mesh) -> int:
    return check_batch_size(global_batch_size, mesh)


def train_iterator(
    data_cfg: Any,
    *,
    fold: int | None,
    global_batch_size: int,
    preprocessing: Preprocessing,
    mesh: Mesh,
    seed: int,
) -> ShardedIterator:
    """Infinite training batches, sharded over the mesh's `data` axis.

    Returns:
      An iterator of dicts: `image` (B, H, W, 3) float32 preprocessed, `mask` (B, H, W, 1)
      float32 in {0, 1}, `label` (B,) int32 (1 = COVID-19); B = global_batch_size. Supports
      `get_state()` / `set_state()`.
    """
    builder = sources.prepare(data_cfg)
    plan = _train_plan(data_cfg, builder, fold, seed)
    split, _ = sources.select(data_cfg, builder, fold=fold, split="train")
    local = _local_batch(global_batch_size, mesh)
    positions = _TrainPositions(plan, global_batch_size, local, jax.process_index())
    ds = grain.MapDataset.source(positions).map(
        _loader(data_cfg, builder, split, preprocessing, seed)
    )
    return ShardedIterator(_finish(ds, data_cfg, local, drop=True), mesh)


def eval_iterator(
    data_cfg: Any,
    *,
    fold: int | None,
    split: str,
    global_batch_size: int,
    preprocessing: Preprocessing,
    mesh: Mesh,
) -> ShardedIterator:
    """One pass over the held-out fold (`split='eval'`), the validation split carved from
    the training part (`'validation'`) or the test split (`'test'`).

    Returns:
      An iterator of dicts with the training keys plus `valid` (B,) bool (False on the
      padding that fills the last batch) and `index` (B,) int32, the example's position in
      `example_filenames(data_cfg, fold=fold, split=split)`.
    """
    if split == "train":
        raise ValueError(
            "eval_iterator reads 'eval', 'validation' or 'test'; use train_iterator for training."
        )
    builder = sources.prepare(data_cfg)
    tfds_split, records = sources.select(data_cfg, builder, fold=fold, split=split)
    local = _local_batch(global_batch_size, mesh)
    positions = _EvalPositions(records, global_batch_size, local, jax.process_index())
    ds = grain.MapDataset.source(positions).map(
        _loader(data_cfg, builder, tfds_split, preprocessing, seed=0)
    )
    return ShardedIterator(_finish(ds, data_cfg, local, drop=False), mesh)


def num_examples(data_cfg: Any, *, fold: int | None, split: str) -> int:
    """Examples in a split: for `train`, one epoch of `train_iterator` (after balancing);
    for `eval` / `test`, the real (unpadded) examples of one `eval_iterator` pass."""
    builder = sources.prepare(data_cfg)
    if split == "train":
        return _train_plan(data_cfg, builder, fold, 0).epoch_length
    return len(sources.select(data_cfg, builder, fold=fold, split=split)[1])


def _train_plan(data_cfg: Any, builder: Any, fold: int | None, seed: int) -> TrainPlan:
    """The `TrainPlan` of (data_cfg, fold): label balancing, or per-category targets."""
    split, records = sources.select(data_cfg, builder, fold=fold, split="train")
    labels = sources.binary_labels(builder, split, sources.spec(data_cfg).positive)[records]
    wanted = dict(data_cfg.get("class_targets") or {})
    if not wanted:
        return TrainPlan(records, labels, bool(data_cfg.balance), data_cfg.augment, seed)
    cats = sources.categories(builder, split)
    if cats is None:
        raise ValueError(
            f"config.data.class_targets is set but {data_cfg.dataset} has no image categories "
            "(only qatacov19/group2 has); leave class_targets empty."
        )
    groups, names = cats
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(
            f"config.data.class_targets names unknown categories {unknown}; valid: {list(names)}."
        )
    targets = tuple(int(wanted[n]) if n in wanted else None for n in names)
    return TrainPlan(
        records, labels, False, data_cfg.augment, seed, groups=groups[records], targets=targets
    )


def example_filenames(data_cfg: Any, *, fold: int | None, split: str) -> list[str]:
    """File names of an `eval_iterator` pass, indexed by its `index` key."""
    builder = sources.prepare(data_cfg)
    tfds_split, records = sources.select(data_cfg, builder, fold=fold, split=split)

    skip = {
        k: tfds.decode.SkipDecoding()
        for k in ("image", "mask", "lung_mask")
        if k in builder.info.features
    }
    source = builder.as_data_source(tfds_split, decoders=skip)
    out = []
    for r in records:
        name = source[int(r)]["filename"]
        out.append(name.decode() if isinstance(name, bytes) else str(name))
    return out
