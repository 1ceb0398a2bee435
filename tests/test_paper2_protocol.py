"""Paper 2's protocol on fake COVID-QU-Ex downloads (both sets, Train / Val / Test): the Test
folder is exactly every round's test list and never trains or validates, five folds over
Train + Val each validate once, `official` reads the folders as shipped, and every run
records its image lists in splits.json before training, refusing to resume on others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import train_utils
from data_fakes import make_covid_qu_ex, write_pair

from qatacov_jax import data
from qatacov_jax.data import sources
from qatacov_jax.training import loop, rundir
from qatacov_jax.training import splits as run_splits

PER_CLASS = 5  # images per class and split folder: 30 in Train + Val, 15 in Test
FOLDS = 5


@pytest.fixture(scope="module")
def download(tmp_path_factory) -> Path:
    manual = tmp_path_factory.mktemp("covid_qu_ex") / "manual"
    make_covid_qu_ex(manual, per_class=PER_CLASS)
    return manual


def _cfg(download: Path, tfds_dir: Path, task: str, protocol: str):
    cfg = data.default_config()
    cfg.dataset, cfg.target = f"covid_qu_ex/{task}", task
    cfg.data_dir, cfg.manual_dir = str(tfds_dir), str(download)
    cfg.stored_size = cfg.image_size = 32
    cfg.num_threads = 1
    cfg.protocol = protocol
    cfg.num_folds = FOLDS
    cfg.validation_fraction = 0.0
    return cfg


def _ids(cfg, fold, split) -> list[str]:
    builder = sources.prepare(cfg)
    tfds_split, idx = sources.select(cfg, builder, fold=fold, split=split)
    return sources.record_ids(builder, tfds_split, idx)


def _folder(download: Path, task: str, folder: str) -> set[str]:
    """`<split>/<class>/<file>` of every image the download ships in `folder`."""
    name = f"{task.title()} Segmentation Data"
    root = download / name / name / folder
    split = {"Train": "train", "Val": "validation", "Test": "test"}[folder]
    return {f"{split}/{p.parent.parent.name}/{p.name}" for p in root.glob("*/images/*.png")}


@pytest.mark.parametrize("task", ["infection", "lung"])
def test_paper2_tests_every_fold_on_the_test_folder_only(download, tmp_path_factory, task):
    cfg = _cfg(download, tmp_path_factory.mktemp("tfds"), task, "paper2")
    test = _folder(download, task, "Test")
    pool = _folder(download, task, "Train") | _folder(download, task, "Val")
    assert len(test) == 3 * PER_CLASS and len(pool) == 6 * PER_CLASS
    validated: list[str] = []
    for fold in range(FOLDS):
        train, val = _ids(cfg, fold, "train"), _ids(cfg, fold, "validation")
        assert set(_ids(cfg, fold, "test")) == set(_ids(cfg, fold, "eval")) == test
        assert len(_ids(cfg, fold, "test")) == len(test)  # each Test image exactly once
        assert not (set(train) | set(val)) & test  # never trained or validated on
        assert set(train) | set(val) == pool and not set(train) & set(val)
        validated += val
        assert sources.selection_split(cfg, fold) == "validation"
        assert sources.final_split(cfg, fold) == "test"
        assert sources.test_split(cfg, fold, "eval") == "eval"  # = Test under paper2
    # Five-fold CV over Train + Val: each image validates in exactly one round, and a
    # round's validation set is 20% of the training data.
    assert sorted(validated) == sorted(pool)
    assert len(_ids(cfg, 0, "validation")) == len(pool) // FOLDS
    # Stratified by the three classes: every round validates on all of them.
    for fold in range(FOLDS):
        classes = {i.split("/")[1] for i in _ids(cfg, fold, "validation")}
        assert classes == {"COVID-19", "Non-COVID", "Normal"}


def test_official_reads_train_val_test_as_shipped(download, tmp_path):
    cfg = _cfg(download, tmp_path / "tfds", "infection", "official")
    assert set(_ids(cfg, None, "train")) == _folder(download, "infection", "Train")
    assert set(_ids(cfg, None, "eval")) == _folder(download, "infection", "Val")
    assert set(_ids(cfg, None, "test")) == _folder(download, "infection", "Test")
    assert sources.selection_split(cfg, None) == "eval"
    assert sources.test_split(cfg, None, "eval") == "test"
    with pytest.raises(ValueError, match="config.fold=None"):
        _ids(cfg, 0, "train")


def test_protocols_refuse_what_they_cannot_do(download, tmp_path):
    cfg = _cfg(download, tmp_path / "tfds", "infection", "paper2")
    with pytest.raises(ValueError, match="five-fold"):
        _ids(cfg, None, "train")
    cfg.validation_fraction = 0.2
    with pytest.raises(ValueError, match="held-out fold"):
        _ids(cfg, 0, "train")
    cfg.validation_fraction = 0.0
    cfg.protocol = "paper3"
    with pytest.raises(ValueError, match=r"valid: \['folds', 'official', 'paper2'\]"):
        _ids(cfg, 0, "train")
    qata = data.default_config()
    qata.protocol = "paper2"
    with pytest.raises(ValueError, match="Train / Val / Test"):
        sources.protocols.check(qata, sources.spec(qata), 0)


def test_folds_protocol_is_unchanged_by_default(download, tmp_path):
    """Without a protocol (configs and runs made before it existed), folds are cut from
    the train split alone, as the annotation stages' folders of accepted masks need."""
    cfg = _cfg(download, tmp_path / "tfds", "infection", "folds")
    del cfg["protocol"]
    train = _folder(download, "infection", "Train")
    ids = set(_ids(cfg, 0, "train")) | set(_ids(cfg, 0, "eval"))
    assert ids == train
    stored = {"data": {"num_folds": 5}}
    assert rundir.config_differences(stored, {"data": {"num_folds": 5, "protocol": "folds"}}) == []


def _run_config(download: Path, tfds_dir: Path):
    config = train_utils.tiny_config(str(tfds_dir))
    config.data = _cfg(download, tfds_dir, "infection", "paper2")
    config.fold = 1
    config.batch_size, config.num_epochs, config.steps_per_epoch = 2, 1, 2
    config.bn_recalibration_batches = 0
    config.checkpoint_every_steps = 1
    return config


def test_splits_json_is_written_before_training_and_checked_on_resume(download, tmp_path):
    config = _run_config(download, tmp_path / "tfds")
    workdir = tmp_path / "run"
    seen = {}

    def first_step(step: int) -> None:
        if step == 1:
            seen.update(json.loads((workdir / run_splits.SPLITS_FILE).read_text()))

    results = loop.train_and_evaluate(config, workdir, step_callback=first_step)
    assert seen["fold"] == 1 and seen["dataset"]["protocol"] == "paper2"
    assert seen["dataset"]["version"] == "1.0.0" and seen["checksum"].startswith("sha256:")
    assert set(seen["test"]) == _folder(download, "infection", "Test")
    assert seen["validation"] == sorted(_ids(config.data, 1, "validation"))
    assert not set(seen["test"]) & (set(seen["train"]) | set(seen["validation"]))
    assert seen["classes"]["test"].count("covid19") == seen["counts"]["test"]["covid19"]
    assert results["final"]["split"] == "eval" and results["final"]["num_examples"] == 15
    assert results["selection"]["split"] == "validation"
    assert run_splits.checksum(seen) == seen["checksum"]

    # The same data resumes (more epochs); other images are refused with the difference.
    config.num_epochs = 2
    loop.train_and_evaluate(config, workdir)
    bigger = tmp_path / "manual2"
    make_covid_qu_ex(bigger, per_class=PER_CLASS)
    extra = bigger / "Infection Segmentation Data" / "Infection Segmentation Data" / "Train"
    write_pair(extra / "Normal" / "images" / "Normal (99).png", None, 3)
    write_pair(extra / "Normal" / "lung masks" / "Normal (99).png", None, 3)
    config.num_epochs = 3
    config.data.manual_dir, config.data.data_dir = str(bigger), str(tmp_path / "tfds2")
    with pytest.raises(run_splits.SplitsMismatchError, match="trained on other images") as e:
        loop.train_and_evaluate(config, workdir)
    assert "new" in str(e.value) and "splits.json" in str(e.value)

    # Extra fields (the annotation stage's) are kept and do not count.
    record = run_splits.add_fields(workdir, predicted=["x"])
    assert record["predicted"] == ["x"] and run_splits.read(workdir)["checksum"] == seen["checksum"]
    with pytest.raises(ValueError, match="part of the splits record"):
        run_splits.add_fields(workdir, train=[])


def test_cross_validation_tests_every_fold_on_test_and_pools_with_n_test(download, tmp_path):
    from qatacov_jax.training.cross_validation import cross_validate

    config = _run_config(download, tmp_path / "tfds")
    config.data.num_folds = 2
    config.checkpoint_every_steps = 0
    summary = cross_validate(config, tmp_path / "cv")
    test = _folder(download, "infection", "Test")
    for fold in (0, 1):
        record = run_splits.read(tmp_path / "cv" / f"fold_{fold}")
        assert set(record["test"]) == test and record["fold"] == fold
        assert summary["per_fold"][str(fold)]["num_examples"] == len(test)
    pooled = summary["pooled"]
    assert pooled["shared_test"] == {
        "folds": 2,
        "test_images": len(test),
        "note": pooled["shared_test"]["note"],
    }
    assert pooled["num_images"] == 2 * len(test)  # both folds' predictions are counted
    sens = pooled["detection"]["metrics"]["sensitivity"]
    assert sens["n"] == PER_CLASS  # the Test folder's COVID-19 images, not twice as many
    from qatacov_jax.metrics.confusion import confidence_radius

    assert sens["ci95"] == pytest.approx(confidence_radius(sens["value"], PER_CLASS))

    # scripts/evaluate.py on the same CV run pools the same way: N = the test images.
    from qatacov_jax.evaluation.runner import evaluate

    evaluated = evaluate(tmp_path / "cv", out_dir=tmp_path / "evaluation")
    assert evaluated["shared_test"]["test_images"] == len(test)
    assert evaluated["num_images"] == 2 * len(test)
    got = evaluated["detection"]["metrics"]["sensitivity"]
    assert got["n"] == PER_CLASS and got["value"] == pytest.approx(sens["value"])
    assert got["ci95"] == pytest.approx(sens["ci95"])
    saved = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert saved["detection"]["metrics"]["sensitivity"]["n"] == PER_CLASS


PAPER2_CONFIGS = sorted(
    p.stem
    for p in (Path(__file__).parents[1] / "configs" / "paper2").glob("*.py")
    if p.stem not in ("__init__", "base")
)


@pytest.mark.parametrize("name", PAPER2_CONFIGS)
def test_every_paper2_config_follows_paper2s_protocol(name):
    import importlib

    config = importlib.import_module(f"configs.paper2.{name}").get_config()
    rundir.validate_config(config)
    assert (config.model.family, config.loss.name, config.data.image_size) == (
        "smp", "cross_entropy", 256,
    )  # fmt: skip
    assert (config.data.protocol, config.fold, config.eval_split) == ("paper2", 0, "test")
    assert config.data.validation_fraction == 0.0  # the held-out fold validates
    assert (config.data.augment, config.data.balance) == ("none", False)
    assert (config.optim.name, config.optim.eps) == ("adam", 1e-8)
    merge = config.model.decoder_merge_policy
    assert merge == ("cat" if config.model.arch == "fpn" else None)
    spec = sources.spec(config.data)
    assert sources.protocols.check(config.data, spec, config.fold) == "paper2"
    scheme = config.model.cascade.scheme
    assert scheme == ("cascaded" if name.endswith("_cascaded") else "parallel")


@pytest.mark.parametrize("name", ["fpn_densenet121", "lung_fpn_densenet121"])
def test_the_paper1_family_covid_qu_ex_configs_read_the_shipped_splits(name):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model.get("family") in (None, "paper1") and config.loss.get("name") is None
    assert (config.data.protocol, config.fold) == ("official", None)
    assert sources.protocols.check(config.data, sources.spec(config.data), None) == "official"
    assert "Not paper 2's experiment" in importlib.import_module(f"configs.{name}").__doc__
