"""Paper 1's Group-II experiment on fake ChestX-ray14 lists (docs/datasets.md#group-ii): the
official lists decide ChestX-ray14's train/test membership exactly, and every epoch of the
training stream reaches the per-class augmentation targets."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import train_utils  # noqa: F401 - puts the repository root (configs/) on sys.path
from data_fakes import make_qatacov19, write_pair

from qatacov_jax import data
from qatacov_jax.data import pipeline, sources
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.runtime.sharding import make_mesh

TARGETS = {"covid19": 14, "bacterial_pneumonia": 9, "viral_pneumonia": 7}


@pytest.fixture(scope="module")
def group2(tmp_path_factory):
    root = tmp_path_factory.mktemp("group2")
    manual = root / "manual"
    make_qatacov19(manual)
    v1 = manual / "QaTa-COV19" / "QaTa-COV19-v1"
    for k in range(5, 13):  # more COVID-19 images with masks than the shared fake has
        write_pair(v1 / "Images" / f"img_{k}.png", v1 / "Ground-truths" / f"mask_img_{k}.png", k)
    cxr14 = manual / "cxr14"
    names = [f"0000{i:04d}_000.png" for i in range(10)]
    for i, name in enumerate(names):
        write_pair(cxr14 / f"images_00{1 + i % 2}" / "images" / name, None, i)
    train_list, test_list = names[:6], names[6:9]  # names[9] is in neither list
    (cxr14 / "train_val_list.txt").write_text("\n".join(train_list) + "\n")
    (cxr14 / "test_list.txt").write_text("\n".join(test_list) + "\n")
    for kind, n in (("bacteria", 6), ("virus", 5)):
        for i in range(n):
            write_pair(manual / "pneumonia" / kind / f"{kind}_{i}.png", None, i)

    from configs import group2_unet_densenet121

    config = group2_unet_densenet121.get_config()
    assert dict(config.data.class_targets) == group2_unet_densenet121.GROUP2_TARGETS
    cfg = config.data
    cfg.data_dir, cfg.manual_dir = str(root / "tfds"), str(manual)
    cfg.stored_size = cfg.image_size = 32
    cfg.num_threads = 1
    cfg.group2.chestxray14_dir = "cxr14"  # relative paths are under manual_dir
    cfg.group2.train_list = "cxr14/train_val_list.txt"
    cfg.group2.test_list = "cxr14/test_list.txt"
    cfg.group2.bacterial_dirs = ("pneumonia/bacteria",)
    cfg.group2.viral_dirs = ("pneumonia/virus",)
    cfg.class_targets = TARGETS
    return config, train_list, test_list


def _names(cfg, split: str) -> list[str]:
    return [Path(n).name for n in data.example_filenames(cfg, fold=None, split=split)]


def test_official_lists_decide_chestxray14_membership(group2):
    config, train_list, test_list = group2
    train, test = _names(config.data, "train"), _names(config.data, "test")
    cxr = lambda names: sorted(n for n in names if n.startswith("0000"))  # noqa: E731
    assert cxr(train) == sorted(train_list) and cxr(test) == sorted(test_list)
    # The other classes are split once, disjointly, at about ChestX-ray14's test ratio.
    others = [n for n in train + test if not n.startswith("0000")]
    assert len(others) == len(set(others)) == 3 + 8 + 6 + 5
    assert 0 < len([n for n in test if not n.startswith("0000")]) < len(others)
    # No CV and no hold-out: Group-II has nothing that could select a checkpoint.
    assert sources.selection_split(config.data, config.fold) is None


def test_every_epoch_reaches_the_per_class_targets(group2, monkeypatch):
    config, train_list, _ = group2
    cfg = config.data
    builder = sources.prepare(cfg)
    cats, names = sources.categories(builder, "train")
    sizes = collections.Counter(names[c] for c in cats)
    expected = {n: max(sizes[n], TARGETS.get(n, 0)) for n in names}
    assert expected["chestxray14"] == len(train_list)
    epoch_length = data.num_examples(cfg, fold=None, split="train")
    assert epoch_length == sum(expected.values())

    seen: list[tuple[int, bool, int]] = []
    real_map = pipeline.LoadExample.map

    def spy(self, element):
        seen.append((element["record"], element["augment"], element["position"]))
        return real_map(self, element)

    monkeypatch.setattr(pipeline.LoadExample, "map", spy)
    batch = 4
    it = data.train_iterator(
        cfg,
        fold=None,
        global_batch_size=batch,
        preprocessing=Preprocessing.from_mode("unit"),
        mesh=make_mesh(1),
        seed=0,
    )
    for _ in range(-(-2 * epoch_length // batch)):  # two whole epochs, through the loader
        next(it)
    it.close()
    for epoch in (0, 1):
        rows = [(r, a) for r, a, g in seen if g // epoch_length == epoch]
        counts = collections.Counter(names[cats[r]] for r, _ in rows)
        assert dict(counts) == expected, epoch
        # Copies above the class's own images are augmented; ChestX-ray14 never is.
        augmented = collections.Counter(names[cats[r]] for r, a in rows if a)
        assert augmented["chestxray14"] == 0
        assert augmented["covid19"] == expected["covid19"] - sizes["covid19"]
    assert np.all(np.diff(sorted(g for *_, g in seen)) == 1)  # no position skipped
