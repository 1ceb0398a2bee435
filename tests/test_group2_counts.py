"""Group-II's COVID-19 and pneumonia images are split with paper 1's Table 5 counts
(2,078 / 873, 2,130 / 630, 1,146 / 339; 27,438 test images with ChestX-ray14's 25,596), not
ChestX-ray14's ratio: exactly at the real sizes, in proportion on a fake download."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import pytest
import train_utils  # noqa: F401 - puts the repository root (configs/) on sys.path
from data_fakes import write_pair

from qatacov_jax import data
from qatacov_jax.data import sources
from qatacov_jax.data.qatacov19 import TABLE5_SPLIT, split_by_table5, table5_test_count

REAL = {"covid19": 2951, "bacterial_pneumonia": 2760, "viral_pneumonia": 1485}
TABLE5 = {
    "covid19": (2078, 873),
    "bacterial_pneumonia": (2130, 630),
    "viral_pneumonia": (1146, 339),
}
CHESTXRAY14 = (86_524, 25_596)  # its official train_val_list.txt / test_list.txt


def test_real_sizes_give_table5_counts_exactly():
    assert TABLE5_SPLIT == TABLE5
    total_test = CHESTXRAY14[1]
    for category, n in REAL.items():
        paths = [Path(f"/data/{category}/img_{i}.png") for i in range(n)]
        train, test = split_by_table5(paths, category)
        assert (len(train), len(test)) == TABLE5[category]
        assert not set(train) & set(test) and len(set(train) | set(test)) == n
        # A rebuild (files listed in another order) picks the same test images.
        shuffled = random.Random(0).sample(paths, n)
        assert set(split_by_table5(shuffled, category)[1]) == set(test)
        total_test += len(test)
    assert total_test == 27_438
    training = sum(t for t, _ in TABLE5.values()) + CHESTXRAY14[0]
    assert training == 91_878  # Table 5's training total before augmentation
    # COVID-19's test share is not ChestX-ray14's: one ratio for all would miss Table 5.
    ratio = CHESTXRAY14[1] / sum(CHESTXRAY14)
    assert round(REAL["covid19"] * ratio) != 873


@pytest.mark.parametrize(("category", "n"), [("covid19", 30), ("bacterial_pneumonia", 28)])
def test_other_sizes_keep_table5_proportions(category, n):
    train, test = TABLE5[category]
    assert table5_test_count(category, n) == round(n * test / (train + test))


def test_the_builder_splits_a_fake_download_in_table5_proportions(tmp_path):
    """A fake Group-II one hundredth of the real size: 30 COVID-19, 28 bacterial and 15
    viral pneumonia images, and a ChestX-ray14 split by its lists."""
    manual = tmp_path / "manual"
    v1 = manual / "QaTa-COV19" / "QaTa-COV19-v1"
    sizes = {"covid19": 30, "bacterial_pneumonia": 28, "viral_pneumonia": 15}
    for k in range(sizes["covid19"]):
        write_pair(v1 / "Images" / f"c_{k}.png", v1 / "Ground-truths" / f"mask_c_{k}.png", k % 16)
    for kind, category in (("bacteria", "bacterial_pneumonia"), ("virus", "viral_pneumonia")):
        for i in range(sizes[category]):
            write_pair(manual / "pneumonia" / kind / f"{kind}_{i}.png", None, i % 16)
    names = [f"0000{i:04d}_000.png" for i in range(12)]
    for i, name in enumerate(names):
        write_pair(manual / "cxr14" / "images" / name, None, i)
    (manual / "cxr14" / "train.txt").write_text("\n".join(names[:9]))
    (manual / "cxr14" / "test.txt").write_text("\n".join(names[9:]))

    cfg = data.default_config()
    cfg.dataset, cfg.manual_dir, cfg.data_dir = "qatacov19/group2", str(manual), str(tmp_path)
    cfg.stored_size = 32
    cfg.group2.chestxray14_dir = "cxr14/images"
    cfg.group2.train_list, cfg.group2.test_list = "cxr14/train.txt", "cxr14/test.txt"
    cfg.group2.bacterial_dirs, cfg.group2.viral_dirs = ("pneumonia/bacteria",), ("pneumonia/virus",)
    builder = sources.prepare(cfg)
    counts = {}
    for split in ("train", "test"):
        cats, category_names = sources.categories(builder, split)
        counts[split] = collections.Counter(category_names[c] for c in cats)
    for category, n in sizes.items():
        test = table5_test_count(category, n)
        assert (counts["train"][category], counts["test"][category]) == (n - test, test)
    assert (counts["test"]["covid19"], counts["test"]["bacterial_pneumonia"]) == (9, 6)
    assert counts["test"]["viral_pneumonia"] == 3
    assert (counts["train"]["chestxray14"], counts["test"]["chestxray14"]) == (9, 3)
    assert builder.info.metadata["group2"]["split"] == "table5"
