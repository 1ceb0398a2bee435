"""Infection maps vs activation maps (`qatacov_jax.evaluation.localization`): the scores on
hand-made maps, and the measured ordering with quickstart-sized models (paper 1's claim)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import train_utils  # noqa: F401  (repository root on sys.path for `configs`)
from _trained_run import learned_data_dir, learned_run

from qatacov_jax.evaluation import localization
from qatacov_jax.evaluation.localization import (
    METHODS,
    LocalizationAccumulator,
    localization_statistics,
)
from qatacov_jax.metrics import DEFAULT_NUM_BINS, bin_edges


def _case():
    """Two 4x4 images: a COVID-19 one infected in its top-left 2x2, and a control."""
    masks = np.zeros((2, 4, 4, 1), np.float32)
    masks[0, :2, :2] = 1.0
    good = np.zeros((2, 4, 4), np.float32)
    good[0, :2, :2] = 0.9  # all mass inside the mask, peak inside
    bad = np.zeros((2, 4, 4), np.float32)
    bad[0, 2:, 2:] = 1.0  # peak and mass outside
    bad[0, 0, 0] = 0.25
    bad[1, :, :] = 0.6  # a control lit up everywhere
    # Named as two of the compared methods; the "infection_map" one also detects.
    return masks, {"infection_map": good, "gradcam": bad}


def test_scores_of_hand_made_maps():
    masks, maps = _case()
    stats = localization_statistics(
        {k: jnp.asarray(v) for k, v in maps.items()},
        jnp.asarray(masks),
        jnp.array([1, 0]),
        jnp.array([True, True]),
        jnp.array([0.7, 0.2]),
    )
    acc = LocalizationAccumulator(("infection_map", "gradcam"))
    acc.update(stats)
    s = acc.summary()
    assert s["num_images"] == 2 and s["num_covid19_localised"] == 1
    good, bad = s["methods"]["infection_map"], s["methods"]["gradcam"]
    assert good["pointing_game"]["value"] == 1.0 and bad["pointing_game"]["value"] == 0.0
    assert good["energy_inside_mask"]["value"] == pytest.approx(1.0)
    assert bad["energy_inside_mask"]["value"] == pytest.approx(0.25 / 4.25)
    # At 0.5 the good map is exact; the bad one finds nothing in the mask.
    assert good["pixel"]["covid19"]["at_threshold"]["metrics"]["f1"]["value"] == 1.0
    assert bad["pixel"]["covid19"]["at_threshold"]["metrics"]["f1"]["value"] == 0.0
    # Its best threshold (0 < t <= 0.25; the highest is reported: the bin edge at or just
    # below 0.25) takes in the top-left pixel: tp 1, fp 4 (+ 16 on the control image over
    # all images), fn 3.
    best = bad["pixel"]["covid19"]["best"]
    edges = bin_edges(DEFAULT_NUM_BINS)
    assert best["threshold"] == edges[np.searchsorted(edges, 0.25, side="right") - 1]
    assert 0.249 < best["threshold"] <= 0.25
    assert best["metrics"]["f1"]["value"] == pytest.approx(2 / (2 + 4 + 3))
    assert bad["pixel"]["all"]["best"]["metrics"]["f1"]["value"] == pytest.approx(2 / 25)
    # Detection: the classifier's probabilities, and the infection map's any-pixel rule.
    assert s["detection"]["classifier"]["confusion"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 0}
    assert s["detection"]["infection_map"]["confusion"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 0}
    ci = good["pointing_game"]["ci95"]
    assert ci == 0.0  # m (1 - m) = 0: the paper's formula gives no width at 100%


def test_runs_must_share_their_images():
    import ml_collections

    seg = ml_collections.ConfigDict({"fold": 0, "data": {"dataset": "a", "image_size": 64}})
    cls = ml_collections.ConfigDict({"fold": 0, "data": {"dataset": "a", "image_size": 32}})
    with pytest.raises(ValueError, match="image_size"):
        localization.check_same_images(seg, cls)
    cls.data.image_size = 64
    localization.check_same_images(seg, cls)


@pytest.mark.slow
def test_infection_maps_localise_better_than_activation_maps(tmp_path_factory, tmp_path):
    """The quickstart segmenter (2 of its 3 epochs, shared with the learning test) against
    configs/classifier_quickstart.py (3 of its 5 epochs: held-out detection AUC 0.74), seed 0,
    on the synthetic test split: every score exists for every method, and the infection
    map's pixel F1 beats both CAMs' (docs/evaluation.md: 75.9 vs 4.4 and 3.9 with the full runs)."""
    from configs import classifier_quickstart
    from qatacov_jax.training.loop import train_and_evaluate

    segmenter = learned_run(tmp_path_factory)
    config = classifier_quickstart.get_config()
    config.data.data_dir = str(learned_data_dir(tmp_path_factory))
    config.num_epochs = 3
    config.num_devices = 1  # as the segmenter (tests/_trained_run.py): 8 simulated are slower
    train_and_evaluate(config, tmp_path / "classifier")
    out = tmp_path / "localization"
    result = localization.compare_localization(
        segmenter, tmp_path / "classifier", out, split="test", num_examples=4, num_worst=2
    )
    assert json.loads((out / "localization.json").read_text()) == result
    assert "Grad-CAM++" in (out / "localization.md").read_text()
    for name in ("first", *(f"worst_{m}" for m in METHODS)):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    assert result["num_images"] == 80 and result["num_covid19_localised"] > 10
    scores = {}
    for m in METHODS:
        r = result["methods"][m]
        for subset in ("covid19", "all"):
            for at in ("at_threshold", "best"):
                for k in ("f1", "iou"):
                    cell = r["pixel"][subset][at]["metrics"][k]
                    assert cell["value"] is not None and cell["ci95"] is not None, (m, subset)
        for k in ("pointing_game", "energy_inside_mask"):
            assert 0.0 <= r[k]["value"] <= 1.0 and r[k]["ci95"] is not None, (m, k)
        scores[m] = r["pixel"]["covid19"]["best"]["metrics"]["f1"]["value"]
    for d in result["detection"].values():
        assert d["metrics"]["sensitivity"]["ci95"] is not None
    assert scores["infection_map"] > max(scores["gradcam"], scores["gradcampp"]), scores


def test_command_line_refusals(tmp_path, capsys):
    from qatacov_jax.cli.compare_localization import main

    assert main(["--help"]) == 0
    assert "--segmenter" in capsys.readouterr().out
    assert main(["--segmenter", str(tmp_path)]) == 2
    assert "--classifier is required" in capsys.readouterr().err
    args = ["--segmenter", str(tmp_path / "a"), "--classifier", str(tmp_path / "b")]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "localization.json").write_text("{}")
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err
