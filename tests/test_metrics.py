"""Streaming metrics: hand-computed confusion matrices, scikit-learn, and the paper's CIs."""

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from qatacov_jax import metrics
from qatacov_jax.metrics import ConfusionCounts, MetricAccumulator, batch_statistics


def test_counts_hand_computed():
    # 2 images of 2x2 pixels; image 1 has an infection, image 0 none.
    probs = np.array([[[0.1, 0.6], [0.2, 0.3]], [[0.9, 0.5], [0.4, 0.05]]], np.float32)
    masks = np.array([[[0, 0], [0, 0]], [[1, 1], [1, 0]]], np.float32)
    stats = batch_statistics(
        probs[..., None], masks[..., None], np.array([0, 1]), np.array([True, True]), num_bins=10
    )
    acc = MetricAccumulator(num_bins=10)
    acc.update(stats)
    # pixels >= 0.5: (0,0,1) fp; (1,0,0) tp; (1,0,1) tp; (1,1,0)=0.4 on mask -> fn.
    assert acc.pixel == ConfusionCounts(tp=2, fp=1, tn=4, fn=1)
    # image 0: max 0.6 >= 0.5 but label 0 -> fp; image 1 -> tp.
    assert acc.detection == ConfusionCounts(tp=1, fp=1, tn=0, fn=0)
    m = acc.pixel.metrics()
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["f2"] == pytest.approx(5 * (2 / 3) * (2 / 3) / (4 * 2 / 3 + 2 / 3))
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["dsc"] == pytest.approx(4 / 6)
    # Histograms: each probability in its logit-spaced bin [edges[b], edges[b + 1]).
    edges = metrics.bin_edges(10)
    bins = np.searchsorted(edges, probs, side="right") - 1
    np.testing.assert_array_equal(np.nonzero(acc.hists["pixel_pos"])[0], np.unique(bins[masks > 0]))
    np.testing.assert_array_equal(
        np.nonzero(acc.hists["pixel_neg"])[0], np.unique(bins[masks == 0])
    )
    assert edges[5] == 0.5  # p = 0.5 sits on an edge: the threshold is a curve point


def test_padding_rows_count_nowhere():
    probs = np.full((3, 4, 4, 1), 0.9, np.float32)
    masks = np.ones((3, 4, 4, 1), np.float32)
    stats = batch_statistics(probs, masks, np.array([1, 1, 0]), np.array([True, False, False]))
    acc = MetricAccumulator()
    acc.update(stats)
    assert acc.pixel.total == 16 and acc.detection.total == 1
    assert sum(int(h.sum()) for h in acc.hists.values()) == 16 + 1


def test_paper_table3_ci_from_table4_confusion_matrix():
    # Degerli et al. Table 4a (U-Net DenseNet-121, cumulative over 5 folds) must give Table 3's
    # row "U-Net DenseNet-121 not frozen": this pins both the formulas and the N of eq. (13).
    cm = ConfusionCounts(tp=2903, fn=48, tn=12300, fp=244)
    r = cm.metrics_with_ci()
    expected = {  # value %, CI radius (fraction)
        "sensitivity": (98.37, 0.0046),
        "specificity": (98.05, 0.0024),
        "precision": (92.25, 0.0042),
        "f1": (95.21, 0.0034),
        "f2": (97.08, 0.0027),
        "accuracy": (98.12, 0.0021),
    }
    for name, (value, ci) in expected.items():
        assert round(100 * r[name]["value"], 2) == value, name
        # One unit of the last printed digit: the paper's F2 CI (0.0027) is 0.00265 here.
        assert r[name]["ci95"] == pytest.approx(ci, abs=1.01e-4), name
    # Table 4b (UNet++ DenseNet-121) against Table 3's UNet++ DenseNet-121 row.
    r = ConfusionCounts(tp=2848, fn=103, tn=12439, fp=105).metrics_with_ci()
    assert round(100 * r["sensitivity"]["value"], 2) == 96.51
    assert round(r["sensitivity"]["ci95"], 4) == 0.0066
    assert round(100 * r["specificity"]["value"], 2) == 99.16
    assert round(r["specificity"]["ci95"], 4) == 0.0016
    assert round(100 * r["precision"]["value"], 2) == 96.44
    assert round(r["precision"]["ci95"], 4) == 0.0029


def test_confidence_radius_formula():
    assert metrics.confidence_radius(0.9, 100) == pytest.approx(1.96 * np.sqrt(0.09 / 100))
    assert metrics.confidence_radius(1.0, 50) == 0.0
    assert np.isnan(metrics.confidence_radius(0.5, 0))
    assert np.isnan(metrics.confidence_radius(float("nan"), 10))


def test_undefined_rates_are_nan_not_zero():
    m = ConfusionCounts(tp=0, fp=0, tn=10, fn=0).metrics()
    assert np.isnan(m["sensitivity"]) and np.isnan(m["precision"]) and np.isnan(m["iou"])
    assert m["specificity"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    b, h, w = 8, 16, 16
    masks = (rng.random((b, h, w, 1)) < 0.3).astype(np.float32)
    # Informative but noisy scores, some exactly 0 and 1 to exercise the end bins.
    probs = np.clip(0.35 * masks + rng.random(masks.shape) * 0.7, 0, 1).astype(np.float32)
    probs[0, 0, 0, 0], probs[0, 0, 1, 0] = 0.0, 1.0
    labels = rng.integers(0, 2, b)
    valid = np.ones(b, bool)
    stats_fn = jax.jit(batch_statistics, static_argnames=("threshold", "num_bins"))
    acc = MetricAccumulator()
    for lo in (0, 4):  # two batches: streaming must equal all-at-once
        sl = slice(lo, lo + 4)
        acc.update(stats_fn(probs[sl], masks[sl], labels[sl], valid[sl]))
    y, s = masks.ravel().astype(int), probs.ravel()
    pred = (s >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert acc.pixel == ConfusionCounts(tp=tp, fp=fp, tn=tn, fn=fn)
    m = acc.pixel.metrics()
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["f2"] == pytest.approx(skm.fbeta_score(y, pred, beta=2))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["iou"] == pytest.approx(skm.jaccard_score(y, pred))

    summary = acc.summary()
    auc = summary["pixel"]["metrics"]["auc"]
    exact = skm.roc_auc_score(y, s)
    assert abs(auc["value"] - exact) <= auc["bin_error"] + 1e-12
    assert auc["bin_error"] < 2e-3  # 1000 bins on 2048 spread-out scores
    ap = summary["pixel"]["metrics"]["average_precision"]["value"]
    assert ap == pytest.approx(skm.average_precision_score(y, s), abs=5e-3)

    # Detection: image score = max probability.
    score = probs.reshape(b, -1).max(1)
    dpred = (score >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, dpred, labels=[0, 1]).ravel()
    assert acc.detection == ConfusionCounts(tp=tp, fp=fp, tn=tn, fn=fn)


def test_binned_roc_matches_sklearn_at_bin_edges():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 5000)
    # Scores already on bin edges: binning loses nothing, so AUC is exact.
    s = np.round(rng.random(5000) * 0.6 + 0.4 * y, 2)
    pos = np.bincount(np.minimum((s[y == 1] * 100 + 0.5).astype(int), 99), minlength=100)
    neg = np.bincount(np.minimum((s[y == 0] * 100 + 0.5).astype(int), 99), minlength=100)
    auc, err = metrics.auc_from_histograms(pos, neg)
    # Ties count 1/2 in both definitions, except that 0.99 and 1.0 share the last bin.
    assert auc == pytest.approx(skm.roc_auc_score(y, s), abs=err + 1e-12)
    curves = metrics.curves_from_histograms(pos, neg)
    assert curves.tpr[0] == 0 and curves.tpr[-1] == 1 and curves.fpr[-1] == 1
    assert np.all(np.diff(curves.tpr) >= 0) and np.all(np.diff(curves.fpr) >= 0)


def test_merge_and_roundtrip_are_cumulative():
    rng = np.random.default_rng(0)
    accs = []
    for _ in range(2):
        acc = MetricAccumulator(num_bins=50)
        probs = rng.random((2, 8, 8, 1)).astype(np.float32)
        acc.update(
            batch_statistics(probs, probs > 0.6, np.array([0, 1]), np.ones(2, bool), num_bins=50)
        )
        accs.append(acc)
    merged = accs[0].merge(accs[1])
    assert merged.pixel == accs[0].pixel + accs[1].pixel
    back = MetricAccumulator.from_dict(merged.to_dict())
    assert back.summary() == merged.summary() or back.to_dict() == merged.to_dict()
    with pytest.raises(ValueError, match="num_bins"):
        accs[0].merge(MetricAccumulator(num_bins=10))
    avg = metrics.fold_average([a.summary() for a in accs])
    assert avg["pixel"]["sensitivity"]["mean"] == pytest.approx(
        np.mean([a.pixel.metrics()["sensitivity"] for a in accs])
    )


def test_accumulator_rejects_bad_settings():
    with pytest.raises(ValueError, match="threshold"):
        MetricAccumulator(threshold=0.0)
    acc = MetricAccumulator(num_bins=10)
    stats = batch_statistics(
        np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)), np.zeros(1), np.ones(1, bool), num_bins=20
    )
    with pytest.raises(ValueError, match="same num_bins"):
        acc.update(stats)
