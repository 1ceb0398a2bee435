"""The quickstart's own pieces (the full chain is the README's first command; its training
part is covered by tests/test_training_learning.py, evaluate/infer by their tests)."""

import numpy as np
import pytest
from PIL import Image

from qatacov_jax.quickstart import QuickstartError, write_overview, write_samples


def test_samples_are_unseen_pngs_named_by_ground_truth(tmp_path):
    paths = write_samples(tmp_path, 4, size=64)
    assert len(paths) == 4
    for p in paths:
        assert p.name.split("_")[0] in ("covid19", "control")
        assert Image.open(p).size == (64, 64)
    # Deterministic: the same call writes the same pixels.
    again = write_samples(tmp_path / "again", 4, size=64)
    assert [np.asarray(Image.open(a)).tobytes() for a in paths] == [
        np.asarray(Image.open(b)).tobytes() for b in again
    ]


def test_overview_puts_each_xray_above_its_map(tmp_path):
    samples, maps = tmp_path / "samples", tmp_path / "maps"
    samples.mkdir()
    maps.mkdir()
    for i, value in enumerate((10, 200)):
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(samples / f"x{i}.png")
        Image.fromarray(np.full((8, 8, 3), (255, 0, value), np.uint8)).save(maps / f"x{i}_map.png")
    sheet = np.asarray(Image.open(write_overview(samples, maps, tmp_path / "o.png")))
    assert sheet.shape == (16, 16, 3)
    assert tuple(sheet[0, 0]) == (10, 10, 10) and tuple(sheet[0, 8]) == (200, 200, 200)
    assert tuple(sheet[8, 0]) == (255, 0, 10) and tuple(sheet[8, 8]) == (255, 0, 200)


def test_overview_without_maps_is_a_clear_error(tmp_path):
    (tmp_path / "s").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "s" / "a.png")
    with pytest.raises(QuickstartError, match="no infection maps"):
        write_overview(tmp_path / "s", tmp_path / "m", tmp_path / "o.png")
