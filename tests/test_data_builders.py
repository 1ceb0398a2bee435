"""TFDS builders on small fake archives in the real on-disk layouts (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_fakes import make_covid_qu_ex, make_qatacov19, marker_position
from PIL import Image

from qatacov_jax import data
from qatacov_jax.data import sources


def _cfg(tmp_path: Path, dataset: str, **kw):
    cfg = data.default_config()
    cfg.dataset = dataset
    cfg.data_dir = str(tmp_path / "tfds")
    cfg.manual_dir = str(tmp_path / "manual")
    cfg.stored_size = 32
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _examples(builder, split):
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def _assert_paired(ex) -> None:
    """The mask marks exactly where this image's own marker is (after storage resize)."""
    name = ex["filename"].decode()
    k = int(name.split("_")[-1].split(".")[0].strip("()").split("(")[-1])
    r, c = marker_position(k % 16, 48, 40)
    # Marker centre in stored (32x32) coordinates.
    cy, cx = int((r + 3) * 32 / 48), int((c + 3) * 32 / 40)
    mask = ex["mask"][..., 0]
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    assert mask[cy, cx] == 255, name
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - cy) <= 1.5 and abs(xs.mean() - cx) <= 1.5, name
    assert ex["image"][cy, cx, 0] > 200, name  # the bright marker is under the mask


def test_builders_are_registered():
    import tensorflow_datasets as tfds

    assert set(tfds.builder_cls("qatacov19").builder_configs) == {"v1", "v2"}
    assert set(tfds.builder_cls("covid_qu_ex").builder_configs) == {"infection", "lung"}
    assert tfds.builder_cls("synthetic_cxr") is data.SyntheticCxr


def test_qatacov19_v1_with_controls_and_dicom(tmp_path):
    counts = make_qatacov19(tmp_path / "manual")
    cfg = _cfg(tmp_path, "qatacov19/v1", control_dirs=("group1",), control_group="group1")
    builder = data.prepare(cfg)
    assert builder.builder_config.name == "v1_group1_s32"
    exs = _examples(builder, "train")
    names = builder.info.features["label"].names
    covid = [e for e in exs if names[e["label"]] == "covid19"]
    controls = [e for e in exs if names[e["label"]] == "control"]
    # Images without a mask (img_3, img_4) are left out of v1 by design.
    assert len(covid) == counts["v1_covid"] and len(controls) == counts["controls"]
    assert sorted(e["filename"].decode() for e in covid) == ["img_0.png", "img_1.png", "img_2.png"]
    for e in covid:
        _assert_paired(e)
    for e in controls:
        assert e["image"].shape == (32, 32, 1) and not e["mask"].any()
    dicom = [e for e in controls if e["filename"].decode().endswith(".dcm")]
    assert len(dicom) == 1 and dicom[0]["image"].std() > 10  # a real gradient, decoded
    # Asking for other control folders under the same group name is refused.
    cfg.control_dirs = ("group1/mooney",)
    with pytest.raises(ValueError, match="control folders"):
        data.prepare(cfg)


def test_qatacov19_v2_predefined_split(tmp_path):
    counts = make_qatacov19(tmp_path / "manual")
    cfg = _cfg(tmp_path, "qatacov19/v2", control_dirs=("group1",), control_group="g1")
    builder = data.prepare(cfg)
    train, test = _examples(builder, "train"), _examples(builder, "test")
    n_covid = {s: sum(e["label"] == 1 for e in exs) for s, exs in (("tr", train), ("te", test))}
    assert n_covid == {"tr": counts["v2_train"], "te": counts["v2_test"]}
    assert len(train) + len(test) == counts["v2_train"] + counts["v2_test"] + counts["controls"]
    for e in train + test:
        if e["label"] == 1:
            _assert_paired(e)
    # Through the pipeline API: fold=None uses the predefined test split.
    assert data.num_examples(cfg, fold=None, split="test") == len(test)


def test_covid_qu_ex_infection_and_lung(tmp_path):
    make_covid_qu_ex(tmp_path / "manual")
    builder = data.prepare(_cfg(tmp_path, "covid_qu_ex/infection"))
    assert builder.info.features["label"].names == ["covid19", "non_covid", "normal"]
    for split in ("train", "validation", "test"):
        exs = _examples(builder, split)
        assert np.bincount([e["label"] for e in exs]).tolist() == [2, 2, 2]
        for e in exs:
            name = e["filename"].decode()
            assert name.split("/")[0] in ("COVID-19", "Non-COVID", "Normal")
            if e["label"] == 0:
                _assert_paired(e)
            else:
                assert not e["mask"].any(), name  # non-COVID: no infection
            # The lung mask is paired too (same marker in the fakes).
            _assert_paired({**e, "mask": e["lung_mask"]})
    lung = data.prepare(_cfg(tmp_path, "covid_qu_ex/lung"))
    assert "mask" not in lung.info.features and "lung_mask" in lung.info.features
    assert len(lung.as_data_source("test")) == 6
    with pytest.raises(ValueError, match="no 'infection' masks"):
        data.num_examples(_cfg(tmp_path, "covid_qu_ex/lung"), fold=None, split="test")


def test_registered_config_names_are_used_by_default(tmp_path):
    make_qatacov19(tmp_path / "manual")
    make_covid_qu_ex(tmp_path / "manual", per_class=1)
    v1 = data.prepare(_cfg(tmp_path, "qatacov19/v1", stored_size=256))
    assert v1.builder_config.name == "v1" and len(v1.as_data_source("train")) == 3
    assert v1.as_data_source("train")[0]["image"].shape == (256, 256, 1)
    qu = data.prepare(_cfg(tmp_path, "covid_qu_ex/infection", stored_size=256))
    assert qu.builder_config.name == "infection"
    cfg = _cfg(tmp_path, "synthetic_cxr")
    assert sources.make_builder(cfg).builder_config.name == "s128_n320x80_seed0_p30"


def test_missing_manual_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual"):
        data.prepare(_cfg(tmp_path, "covid_qu_ex/infection"))


@pytest.mark.parametrize("problem", ["corrupt", "no_mask", "mask_size"])
def test_bad_data_fails_naming_the_file_then_skip_counts_it(tmp_path, problem, caplog):
    make_qatacov19(tmp_path / "manual")
    base = tmp_path / "manual" / "QaTa-COV19" / "QaTa-COV19-v2" / "Train Set"
    image, mask = base / "Images" / "covid_1.png", base / "Ground-truths" / "mask_covid_1.png"
    if problem == "corrupt":
        image.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
        culprit = image
    elif problem == "no_mask":
        mask.unlink()
        culprit = image
    else:
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
        culprit = mask
    cfg = _cfg(tmp_path, "qatacov19/v2")
    with pytest.raises(data.DataError) as info:
        data.prepare(cfg)
    assert str(culprit) in str(info.value) and "bad_data='skip'" in str(info.value)
    # Nothing half-built is left behind: no prepared dataset, no leftover temp dirs.
    builder = sources.make_builder(cfg)
    assert not Path(builder.data_dir, "dataset_info.json").exists()
    parent = Path(builder.data_dir).parent
    assert not parent.exists() or not [p for p in parent.iterdir() if "incomplete" in p.name]

    cfg.bad_data = "skip"
    builder = data.prepare(cfg)
    assert len(builder.as_data_source("train")) == 2  # 3 COVID-19 train images, one skipped
    assert any(str(culprit) in r.getMessage() for r in caplog.records)


def test_rerunning_prepare_never_touches_a_prepared_dataset(tmp_path):
    make_qatacov19(tmp_path / "manual")
    cfg = _cfg(tmp_path, "qatacov19/v1")
    builder = data.prepare(cfg)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(builder.data_dir).iterdir()}
    before = [e["filename"] for e in _examples(builder, "train")]
    # Even with the source data now broken, a re-run reuses the prepared files untouched.
    (tmp_path / "manual" / "QaTa-COV19" / "QaTa-COV19-v1" / "Images" / "img_0.png").write_bytes(
        b"garbage"
    )
    again = data.prepare(cfg)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(again.data_dir).iterdir()} == (
        files
    )
    assert [e["filename"] for e in _examples(again, "train")] == before


def test_no_network_access_configured():
    import tensorflow_datasets as tfds

    assert tfds.core.utils.gcs_utils._is_gcs_disabled
