"""Evaluation: the jitted streaming step, reports, and scripts/evaluate.py on a real run."""

import json
import shutil

import numpy as np
import pytest
from _trained_run import trained_run
from flax import nnx
from PIL import Image
from train_utils import tiny_model

from qatacov_jax.cli import evaluate as evaluate_cli
from qatacov_jax.evaluation import examples, reports
from qatacov_jax.evaluation import runner as evaluate
from qatacov_jax.metrics import ConfusionCounts, MetricAccumulator
from qatacov_jax.runtime.sharding import make_mesh, shard_batch


def test_sharded_stats_step_equals_numpy():
    rng = np.random.default_rng(0)
    mesh = make_mesh()
    model = tiny_model(0)
    model.eval()
    stats_fn = evaluate.make_stats_fn(model, mesh, threshold=0.5, num_bins=100)
    batches, probs_all, masks_all, labels_all = [], [], [], []
    for _ in range(3):
        b = {
            "image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32),
            "mask": (rng.random((8, 16, 16, 1)) < 0.2).astype(np.float32),
            "label": rng.integers(0, 2, 8).astype(np.int32),
            "valid": np.array([True] * 8),
        }
        batches.append(b)
    batches[-1]["valid"][5:] = False  # padding rows of the last batch
    for b in batches:
        n = int(b["valid"].sum())
        probs_all.append(np.asarray(nnx.sigmoid(model(b["image"])))[:n])
        masks_all.append(b["mask"][:n])
        labels_all.append(b["label"][:n])
    acc = evaluate.accumulate(stats_fn, (shard_batch(b, mesh) for b in batches), num_bins=100)
    p, m, lab = map(np.concatenate, (probs_all, masks_all, labels_all))
    pred, truth = p >= 0.5, m > 0.5
    assert acc.pixel == ConfusionCounts(
        tp=int((pred & truth).sum()),
        fp=int((pred & ~truth).sum()),
        tn=int((~pred & ~truth).sum()),
        fn=int((~pred & truth).sum()),
    )
    det = p.reshape(len(p), -1).max(1) >= 0.5
    assert acc.detection.tp == int((det & (lab == 1)).sum()) and acc.num_images == 21


def _acc(seed: int) -> MetricAccumulator:
    from qatacov_jax.metrics import batch_statistics

    rng = np.random.default_rng(seed)
    acc = MetricAccumulator(num_bins=50)
    p = rng.random((4, 8, 8, 1)).astype(np.float32)
    acc.update(batch_statistics(p, p > 0.7, np.array([0, 1, 1, 0]), np.ones(4, bool), num_bins=50))
    return acc


def test_reports_and_refusal(tmp_path):
    info = {"model": "unet", "encoder": "densenet121", "frozen": False, "split": "test"}
    folds = [(_acc(i), {**info, "fold": i}) for i in range(2)]
    total = folds[0][0].merge(folds[1][0])
    result = reports.write_outputs(tmp_path, total, {**info, "fold": "all"}, per_fold=folds)
    for name in reports.OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0, name
    md = (tmp_path / "tables.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Per fold"):
        assert title in md
    c = total.detection
    assert (
        f"| Control | {c.tn:,} | {c.fp:,} |" in md and f"| COVID-19 | {c.fn:,} | {c.tp:,} |" in md
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["detection"]["confusion"] == c.to_dict()
    assert len(saved["folds"]) == 2 and "fold_average" in saved
    assert MetricAccumulator.from_dict(saved["state"]).to_dict() == total.to_dict()
    assert result["pixel"]["metrics"]["auc"]["bin_error"] is not None
    with pytest.raises(FileExistsError, match="metrics.json already exists"):
        reports.check_outputs_free(tmp_path, overwrite=False)
    reports.check_outputs_free(tmp_path, overwrite=True)


def test_unpreprocess_inverts_every_mode():
    from qatacov_jax.data.preprocessing import MODES, Preprocessing

    x = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    for mode in MODES:
        prep = Preprocessing.from_mode(mode)
        np.testing.assert_allclose(examples.unpreprocess(prep, prep(x)), x, atol=1e-5)


def test_bad_run_dir_is_a_clear_error(tmp_path, capsys):
    assert evaluate_cli.main([str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.mark.slow
def test_evaluate_quickstart_run_and_cv(run_dir, tmp_path, capsys):
    from qatacov_jax import data
    from qatacov_jax.training.rundir import read_config

    out = tmp_path / "single"
    assert evaluate_cli.main([str(run_dir), "--split", "test", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    config = read_config(run_dir)
    n_test = data.num_examples(config.data, fold=config.fold, split="test")
    assert m["num_images"] == n_test
    assert (
        m["pixel"]["confusion"]["tp"]
        + m["pixel"]["confusion"]["fn"]
        + m["pixel"]["confusion"]["tn"]
        + m["pixel"]["confusion"]["fp"]
        == n_test * 64 * 64
    )
    for name in reports.OUTPUTS:
        assert (out / name).exists()
    # The quickstart (docs/quickstart.md) ends with these: infection maps of test examples (--num-maps 8).
    panels = sorted((out / "maps").glob("*_panel.png"))
    assert len(panels) == min(8, n_test)
    panel = np.asarray(Image.open(panels[0]))
    assert panel.ndim == 3 and panel.shape[0] >= 256 and panel.shape[1] > 3 * panel.shape[0]
    assert evaluate_cli.main([str(run_dir), "--split", "test", "--out", str(out)]) == 2  # refuses

    # A CV run is a folder of fold_k run dirs: cumulative counts are the folds' sums.
    cv = tmp_path / "cv"
    for k in (0, 1):
        shutil.copytree(run_dir, cv / f"fold_{k}")
    r = evaluate.evaluate(cv, split="test")
    assert r["num_images"] == 2 * n_test
    assert r["detection"]["confusion"]["tp"] == 2 * m["detection"]["confusion"]["tp"]
    assert (cv / "evaluation" / "test" / "fold_1" / "tables.md").exists()
    assert "Per fold" in (cv / "evaluation" / "test" / "tables.md").read_text()
