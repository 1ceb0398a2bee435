"""The synthetic set, splits, augmentation, balancing and the sharded grain iterators."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from qatacov_jax import data
from qatacov_jax.data import augment, splits, synthetic
from qatacov_jax.data.pipeline import TrainPlan, _channel_affine, _EvalPositions, _TrainPositions
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.runtime.sharding import make_mesh

UNIT = Preprocessing.from_mode("unit")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """A 40 + 8 image synthetic set at 64x64, built once for the module."""
    c = data.default_config()
    c.data_dir = str(tmp_path_factory.mktemp("tfds"))
    c.image_size = 64
    c.synthetic.image_size = 64
    c.synthetic.num_train = 40
    c.synthetic.num_test = 8
    c.num_threads = 2
    data.prepare(c)
    return c


def _batches(it, n):
    out = [jax.tree.map(np.asarray, next(it)) for _ in range(n)]
    return out


def test_synthetic_generator_is_deterministic_and_plausible():
    a = synthetic.generate(3, 7, 64, 0.5)
    b = synthetic.generate(3, 7, 64, 0.5)
    c = synthetic.generate(4, 7, 64, 0.5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)
    exs = [synthetic.generate(0, i, 64, 0.5) for i in range(40)]
    pos = [e for e in exs if e.label == 1]
    neg = [e for e in exs if e.label == 0]
    assert pos and neg
    for e in exs:
        assert e.image.dtype == np.uint8 and e.image.shape == (64, 64)
        lung = e.lung_mask > 0
        assert 0.1 < lung.mean() < 0.5  # two lungs of plausible size
        assert e.image[lung].mean() < e.image[~lung].mean() + 10  # air is darker
        assert not (e.mask > 0)[~lung].any()  # infection only inside the lungs
    assert all(e.mask.any() for e in pos) and not any(e.mask.any() for e in neg)
    # Confusers are present among controls, so "any brightening" is not COVID-19.
    findings = {f for e in neg for f in e.findings}
    assert {"effusion", "cardiomegaly", "nodules"} & findings
    # Opacities are mostly in the lower half of the lungs (lower-zone predominance).
    rows = np.concatenate([np.nonzero(e.mask)[0] for e in pos])
    lung_rows = np.concatenate([np.nonzero(e.lung_mask)[0] for e in pos])
    assert rows.mean() > lung_rows.mean()


def test_folds_disjoint_covering_stratified_and_seeded():
    labels = np.array([1] * 23 + [0] * 77)
    folds = splits.stratified_folds(labels, 5, seed=0)
    together = np.concatenate(folds)
    assert len(together) == 100 and len(np.unique(together)) == 100
    for f in folds:
        assert abs(labels[f].sum() - 23 / 5) < 1 and abs(len(f) - 20) <= 1
    assert all(
        np.array_equal(a, b)
        for a, b in zip(folds, splits.stratified_folds(labels, 5, seed=0), strict=True)
    )
    assert not np.array_equal(folds[0], splits.stratified_folds(labels, 5, seed=1)[0])
    train, held = splits.cv_indices(labels, 2, 5, 0)
    assert not set(train) & set(held) and len(train) + len(held) == 100
    kept, val = splits.stratified_holdout(labels, 0.2, 0)
    assert not set(kept) & set(val) and labels[val].sum() == 5


def test_augmentation_moves_image_and_mask_together():
    for seed in range(10):
        image = np.full((64, 64), 0.2, np.float32)
        mask = np.zeros((64, 64), np.uint8)
        image[20:26, 40:46] = 1.0
        mask[20:26, 40:46] = 255
        rng = np.random.default_rng(seed)
        out_image, out_mask = augment.augment(rng, image, mask)
        assert set(np.unique(out_mask)) <= {0, 255}  # nearest keeps it binary
        ys, xs = np.nonzero(out_mask)
        iy, ix = np.nonzero(out_image > 0.6)
        assert abs(ys.mean() - iy.mean()) < 0.75 and abs(xs.mean() - ix.mean()) < 0.75
        # Nearest fill: no black borders from uncovered areas.
        assert out_image.min() >= 0.2 - 1e-5
    # Shift within 10% and rotation within 10 degrees: the marker stays close.
    moved = []
    for seed in range(50):
        m, o = augment.random_affine(np.random.default_rng(seed), (64, 64))
        centre = np.array([31.5, 31.5])
        moved.append(np.linalg.norm(m @ centre + o - centre))  # = |shift|
        assert np.degrees(np.arccos(np.clip(m[0, 0], -1, 1))) <= 10 + 1e-6
    assert 0 < max(moved) <= 0.1 * 64 * np.sqrt(2) + 1e-6


def test_fast_paths_match_the_reference_implementations():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32)).astype(np.float32)
    for mode in ("torch", "tf", "caffe", "bgr", "unit"):
        pre = Preprocessing.from_mode(mode)
        scale, shift = _channel_affine(pre)
        np.testing.assert_allclose(x[..., None] * scale + shift, pre(x[..., None]), atol=1e-4)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.random((64, 64)).astype(np.float32), 3)
    mask = (image > image.mean()).astype(np.uint8) * 255
    for seed in range(5):
        m, o = augment.random_affine(np.random.default_rng(seed), (64, 64))
        ref_image, ref_mask = augment.apply_affine(image, mask, m, o)
        fast_image, fast_mask = augment.apply_affine_fast(image, mask, m, o)
        np.testing.assert_allclose(fast_image, ref_image, atol=1e-5)
        assert (fast_mask != ref_mask).mean() < 0.005  # ties at exactly .5 may round apart


def test_balance_ratio_and_copies_are_the_augmented_ones():
    labels = np.array([1] * 6 + [0] * 20)
    plan = TrainPlan(np.arange(26), labels, balance=True, augment="copies", seed=0)
    assert plan.epoch_length == 40
    records, flags = plan.epoch(0)
    assert np.bincount(labels[records]).tolist() == [20, 20]
    assert flags.sum() == 14 and (labels[records[flags]] == 1).all()
    # Every COVID-19 image appears once unaugmented; controls are never augmented.
    assert sorted(records[~flags & (labels[records] == 1)]) == list(range(6))
    again = plan.epoch(0)
    assert np.array_equal(records, again[0])
    assert not np.array_equal(records, plan.epoch(1)[0])
    flat = TrainPlan(np.arange(26), labels, balance=False, augment="all", seed=0)
    assert flat.epoch_length == 26 and flat.epoch(0)[1].all()


def test_process_slices_partition_every_global_batch():
    plan = TrainPlan(np.arange(10), np.array([0, 1] * 5), False, "none", 0)
    p0, p1 = (_TrainPositions(plan, 8, 4, p) for p in (0, 1))
    for step in range(3):
        got = [p0[step * 4 + j]["position"] for j in range(4)]
        got += [p1[step * 4 + j]["position"] for j in range(4)]
        assert got == list(range(step * 8, step * 8 + 8))
    e0, e1 = (_EvalPositions(np.arange(5), 8, 4, p) for p in (0, 1))
    assert len(e0) == len(e1) == 4
    valid = [e0[j]["valid"] for j in range(4)] + [e1[j]["valid"] for j in range(4)]
    assert valid == [True] * 5 + [False] * 3


def test_train_iterator_contract_determinism_and_resume(cfg):
    mesh = make_mesh()
    kw = dict(fold=0, global_batch_size=8, preprocessing=UNIT, mesh=mesh)
    it = data.train_iterator(cfg, seed=0, **kw)
    first = next(it)
    assert first["image"].shape == (8, 64, 64, 3) and first["image"].dtype == np.float32
    assert first["mask"].shape == (8, 64, 64, 1) and first["label"].dtype == np.int32
    assert set(np.unique(np.asarray(first["mask"]))) <= {0.0, 1.0}
    assert first["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    state = it.get_state()
    rest = _batches(it, 2)
    it.set_state(state)
    resumed = _batches(it, 2)
    for a, b in zip(rest, resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    same = data.train_iterator(cfg, seed=0, **kw)
    np.testing.assert_array_equal(np.asarray(first["image"]), np.asarray(next(same)["image"]))
    other = data.train_iterator(cfg, seed=1, **kw)
    assert not np.array_equal(np.asarray(first["image"]), np.asarray(next(other)["image"]))
    # Balanced epochs: over one epoch labels are 50/50.
    n = data.num_examples(cfg, fold=0, split="train")
    it = data.train_iterator(cfg, seed=0, **kw)
    labels = np.concatenate([b["label"] for b in _batches(it, n // 8)])
    assert abs(labels.mean() - 0.5) < 0.15


def test_eval_iterator_pads_marks_and_shards_per_device(cfg):
    mesh8 = make_mesh(8)
    n = data.num_examples(cfg, fold=0, split="eval")
    kw = dict(fold=0, split="eval", global_batch_size=16, preprocessing=UNIT)
    batches = list(data.eval_iterator(cfg, mesh=mesh8, **kw))
    assert len(batches) == -(-n // 16)
    valid = np.concatenate([np.asarray(b["valid"]) for b in batches])
    index = np.concatenate([np.asarray(b["index"]) for b in batches])
    assert valid.sum() == n and not valid[n:].any()
    assert list(index[:n]) == list(range(n))
    names = data.example_filenames(cfg, fold=0, split="eval")
    assert len(names) == n and len(set(names)) == n
    train_names = set(data.example_filenames(cfg, fold=0, split="train"))
    assert not train_names & set(names)  # the held-out fold is disjoint from training
    # Each of the 8 devices holds its own 2-example slice of every batch...
    b = batches[0]
    for shard in b["index"].addressable_shards:
        start = shard.index[0].start
        np.testing.assert_array_equal(np.asarray(shard.data), np.arange(start, start + 2))
    # ...and the data is the same as on a single device.
    one = next(iter(data.eval_iterator(cfg, mesh=make_mesh(1), **kw)))
    for k in one:
        np.testing.assert_array_equal(np.asarray(one[k]), np.asarray(b[k]))


def test_preprocessing_is_applied_and_test_split(cfg):
    tf_mode = Preprocessing.from_mode("tf")
    mesh = make_mesh(1)
    batch = next(
        iter(
            data.eval_iterator(
                cfg,
                fold=None,
                split="test",
                global_batch_size=8,
                preprocessing=tf_mode,
                mesh=mesh,
            )
        )
    )
    image = np.asarray(batch["image"])
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.min() < -0.5
    np.testing.assert_array_equal(image[..., 0], image[..., 2])  # grey -> 3 equal channels
    assert data.num_examples(cfg, fold=None, split="test") == 8
    # fold=None on a set without a validation split holds out val_fraction of train.
    assert data.num_examples(cfg, fold=None, split="eval") == 8


def test_config_errors_are_clear(cfg):
    bad = cfg.copy_and_resolve_references()
    bad.dataset = "qatacov"
    with pytest.raises(ValueError, match="valid names"):
        data.num_examples(bad, fold=0, split="eval")
    with pytest.raises(ValueError, match="fold must be in"):
        data.num_examples(cfg, fold=5, split="eval")
    with pytest.raises(ValueError, match="divisible"):
        data.train_iterator(
            cfg, fold=0, global_batch_size=6, preprocessing=UNIT, mesh=make_mesh(8), seed=0
        )


@pytest.mark.slow
def test_worker_processes_give_the_same_stream(cfg):
    mesh = make_mesh(1)
    kw = dict(fold=0, global_batch_size=4, preprocessing=UNIT, mesh=mesh, seed=0)
    ref = _batches(data.train_iterator(cfg, **kw), 3)
    mp_cfg = cfg.copy_and_resolve_references()
    mp_cfg.num_workers = 2
    it = data.train_iterator(mp_cfg, **kw)
    got = _batches(it, 1)
    state = it.get_state()
    got += _batches(it, 2)
    it.close()
    # Resuming a worker-process iterator from its state continues the same stream.
    resumed = data.train_iterator(mp_cfg, **kw)
    resumed.set_state(state)
    again = _batches(resumed, 2)
    resumed.close()
    for a, b in zip(ref, got, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for a, b in zip(ref[1:], again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
