"""Annotation stages (`scripts/annotation_stage.py`, `annotation.stage`) on a tiny model:
Stage I candidates are out of fold (checked from every run's splits.json), Stage II models
train on every accepted mask, and an interrupted stage resumes without retraining."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from annotation_utils import synthetic_positives, write_synthetic_masks
from PIL import Image
from train_utils import tiny_config

from qatacov_jax import data
from qatacov_jax.annotation import stage as stage_mod
from qatacov_jax.annotation.candidates import MANIFEST, CandidateStore
from qatacov_jax.annotation.stage import StageSpec, key_of, run_stage, stage_config
from qatacov_jax.cli import annotation_stage as stage_cli
from qatacov_jax.training.splits import SPLITS_FILE

N = 10  # accepted masks


def _config(seed: int):
    cfg = tiny_config("unused")
    cfg.num_epochs, cfg.steps_per_epoch, cfg.batch_size = 1, 2, 2
    cfg.bn_recalibration_batches = 0
    cfg.seed = seed
    return cfg


def _splits(workdir, run):
    """A run's splits.json with its id lists as image keys."""
    record = json.loads((workdir / run / SPLITS_FILE).read_text())
    for name in ("train", "validation", "test"):
        record[name] = sorted(key_of(i) for i in record[name])
    return record


def test_stage_one_is_out_of_fold_and_resumes(tmp_path, monkeypatch):
    masks = write_synthetic_masks(tmp_path / "manual", N)
    workdir = tmp_path / "stage1"
    spec = StageSpec(masks, "infection", workdir, {"tinya": _config(0), "tinyb": _config(1)}, 2)
    # Interrupted while predicting the first model's second fold (the second model not
    # trained yet).
    real, calls = stage_mod.predict_run, []

    def crash_on_second_fold(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stage_mod, "predict_run", crash_on_second_fold)
    with pytest.raises(KeyboardInterrupt):
        run_stage(spec)
    assert not (workdir / "candidates" / MANIFEST).exists()
    done = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/fold_*/results.json")}
    written = {p: p.stat().st_mtime_ns for p in (workdir / "candidates").rglob("*.png")}
    assert len(done) == 2 and len(written) == N // 2 * 3  # fold 0: X-ray, mask, probability
    monkeypatch.setattr(stage_mod, "predict_run", real)
    summary = run_stage(spec)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # no run trained again
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # nor predicted again

    store = CandidateStore(workdir / "candidates")
    assert store.stage == "I" and store.models == ("tinya", "tinyb")
    assert sorted(store.keys()) == sorted(f"covid_{i}" for i in range(N))
    for key, info in store.images.items():
        for model, c in info["candidates"].items():
            splits = _splits(workdir, c["run"])
            assert c["run"] == f"runs/{model}/fold_{c['fold']}" and splits["fold"] == c["fold"]
            # Out of fold: predicted by a model that never trained or validated on it.
            assert key in splits["test"] and key in splits["predicted"]
            assert key not in splits["train"] and key not in splits["validation"]
        assert info["disagreement"] is not None and info["entropy"] > 0
        assert store.masks(key)["tinya"].shape == (32, 32)
    for model in ("tinya", "tinyb"):
        tests = [set(_splits(workdir, f"runs/{model}/fold_{k}")["test"]) for k in (0, 1)]
        assert not tests[0] & tests[1] and len(tests[0] | tests[1]) == N
        row = summary["models"][model]
        assert 0 <= row["cv_pixel_f1_mean"] <= 1 and row["images"] == N
    assert "| tinya |" in (workdir / "summary.md").read_text()

    # Changed masks mean another stage: refused, nothing mixed.
    first = masks / "QaTa-COV19" / "QaTa-COV19-v1" / "Ground-truths" / "mask_covid_0.png"
    Image.fromarray(255 - np.asarray(Image.open(first))).save(first)
    with pytest.raises(ValueError, match="another stage"):
        run_stage(spec)


def test_stage_two_trains_on_every_mask_through_the_command_line(tmp_path):
    masks = write_synthetic_masks(tmp_path / "accepted", 6)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, ex in enumerate(synthetic_positives(9)[6:]):
        Image.fromarray(ex.image).save(pool / f"new_{i}.png")
    config = tmp_path / "tinyc.py"
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(os.path.dirname(__file__))!r})\n"
        "from train_utils import tiny_config\n\n\n"
        "def get_config():\n"
        "    return tiny_config('unused')\n"
    )
    workdir = tmp_path / "stage2"
    argv = [str(config), "--masks", str(masks), "--pool", str(pool), "--workdir", str(workdir)]
    overrides = ["--config.num_epochs=1", "--config.batch_size", "2", "--config.seed=3"]
    assert stage_cli.main([*argv, *overrides, "--config.bn_recalibration_batches=0"]) == 0
    splits = _splits(workdir, "runs/tinyc/all")
    assert splits["train"] == [f"covid_{i}" for i in range(6)]  # every accepted mask
    assert splits["predicted"] == ["pool__new_0", "pool__new_1", "pool__new_2"]
    assert splits["validation"] == [] and splits["test"] == splits["train"]  # a fit
    run_config = json.loads((workdir / "runs" / "tinyc" / "all" / "config.json").read_text())
    assert run_config["seed"] == 3 and run_config["fold"] is None
    store = CandidateStore(workdir / "candidates")
    assert store.stage == "II" and set(store.keys()) == set(splits["predicted"])
    assert store.images["pool__new_0"]["candidates"]["tinyc"]["fold"] is None
    assert store.images["pool__new_0"]["source"] == str(pool / "new_0.png")
    # Bad command lines are one line and exit 2.
    assert stage_cli.main([*argv, "--config.nope=1"]) == 2
    assert stage_cli.main([str(config), "--masks", str(masks), "--workdir", "w"]) == 2


def test_train_on_all_holds_nothing_out(tmp_path):
    masks = write_synthetic_masks(tmp_path / "m", 5)
    spec = StageSpec(masks, "infection", tmp_path / "w", {"t": _config(0)}, pool=tmp_path)
    cfg = stage_config(_config(0), spec, tmp_path / "tfds")
    assert cfg.data.dataset == "qatacov19/v1" and cfg.fold is None
    for split in ("train", "eval"):
        assert data.num_examples(cfg.data, fold=None, split=split) == 5
    assert data.sources.selection_split(cfg.data, None) is None
    cfg.data.train_on_all = False  # qatacov19/v1 has no test split: a fold is needed
    with pytest.raises(ValueError, match="fold"):
        data.num_examples(cfg.data, fold=None, split="train")


def test_lung_masks_are_read_as_covid_qu_ex(tmp_path):
    """`--target lung`: the accepted lung masks train as `covid_qu_ex/lung` (train split)."""
    masks = write_synthetic_masks(tmp_path / "lung", 6, target="lung")
    spec = StageSpec(masks, "lung", tmp_path / "w", {"t": _config(0)}, folds=2)
    cfg = stage_config(_config(0), spec, tmp_path / "tfds")
    assert (cfg.data.dataset, cfg.data.target, cfg.data.num_folds) == (
        "covid_qu_ex/lung",
        "lung",
        2,
    )
    ids = lambda fold, split: [  # noqa: E731
        key_of(n) for n in data.example_filenames(cfg.data, fold=fold, split=split)
    ]
    held_out = [ids(k, "eval") for k in (0, 1)]
    assert sorted(held_out[0] + held_out[1]) == [f"covid_{i}" for i in range(6)]
    assert set(ids(0, "train")) == set(held_out[1])
