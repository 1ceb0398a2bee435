"""`scripts/annotation_report.py`: machine-vs-manual preference, rejections, agreement and
time per image, from decisions made through the review API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from annotation_utils import mask_url, review_client, write_candidate_store, write_mask_folder

from qatacov_jax.annotation.report import fleiss_kappa
from qatacov_jax.cli import annotation_report as report_cli


def test_fleiss_kappa_matches_the_published_example():
    """Fleiss (1971): 10 subjects, 14 raters, 5 categories -> kappa 0.210."""
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [{str(j): n for j, n in enumerate(row) if n} for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.2099, abs=5e-4)
    assert fleiss_kappa([{"a": 2}, {"b": 3}]) == pytest.approx(1.0)  # always agree
    assert fleiss_kappa([{"a": 1, "b": 1}, {"a": 1, "b": 1}]) == pytest.approx(-1.0)
    assert np.isnan(fleiss_kappa([{"a": 1}]))  # no image with two raters


def test_report_from_two_annotators(tmp_path, capsys):
    keys = ["k1", "k2", "k3", "k4"]
    masks = write_candidate_store(tmp_path / "cands", keys, ["m1", "m2"])
    write_mask_folder(tmp_path / "manual", {k: np.roll(m["m1"], 4, 0) for k, m in masks.items()})
    out = tmp_path / "out"
    c = review_client(tmp_path / "cands", out, votes=2, reference=tmp_path / "manual")
    drawn = np.zeros((40, 48), bool)
    drawn[10:20, 10:20] = True
    plan = {  # annotator -> per image (outcome, candidate, seconds)
        "a": [("pick", "m1", 10), ("pick", "manual", 20), ("correct", "m2", 30), ("pick", "m1", 5)],
        "b": [("pick", "m1", 40), ("pick", "m2", 50), ("draw", None, 60), ("pick", "m1", 5)],
    }
    for who, decisions in plan.items():
        for key, (outcome, cand, secs) in zip(keys, decisions, strict=True):
            body = {"annotator": who, "outcome": outcome, "seconds": secs}
            if cand:
                body["candidate"] = cand
            if outcome in ("correct", "draw"):
                body["mask"] = mask_url(drawn)
            assert c.post(f"/api/annotate/{key}", json=body).status_code == 200
    # a skipped k1 first once (the time counts, the vote does not).
    assert c.post("/api/annotate/k1", json={"annotator": "a", "outcome": "skip", "seconds": 7})

    assert report_cli.main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Stage I" in printed and "| a |" in printed
    report = json.loads((out / "report" / "annotation_report.json").read_text())
    assert (out / "report" / "annotation_report.png").stat().st_size > 0
    s = report["stages"]["I"]
    a, b, both = (s["annotators"][k] for k in ("a", "b", "all"))
    assert a["machine_vs_manual"] == {"machine": 3, "manual": 1}
    assert a["machine_preferred"] == pytest.approx(0.75) and a["rejected_all"] == 0.0
    assert a["corrected"] == pytest.approx(0.25)
    assert b["machine_preferred"] == 1.0 and b["rejected_all"] == pytest.approx(0.25)
    assert both["votes"] == 8 and both["machine_preferred"] == pytest.approx(6 / 7)
    assert a["seconds_per_image"]["median"] == pytest.approx(18.5)  # 5, 10 + 7, 20, 30
    assert b["seconds_per_image"]["mean"] == pytest.approx(38.75)
    # k1 and k4 agree (m1, m1), k2 and k3 do not (manual vs m2, m2 vs draw).
    assert s["states"] == {"accepted": 2, "adjudication": 2}
    ag = s["agreement"]
    assert ag["images_with_several_votes"] == 4
    expected = fleiss_kappa(
        [{"candidate:m1": 2}, {"candidate:manual": 1, "candidate:m2": 1}]
        + [{"candidate:m2": 1, "draw": 1}, {"candidate:m1": 2}]
    )
    assert ag["fleiss_kappa"] == pytest.approx(expected)
    # k3: both votes carry the same drawn mask; k1, k4: the same candidate (Dice 1).
    assert ag["pairwise_dice"] < 1.0  # k2: the manual mask vs m2 differ
    assert report_cli.main([]) == 2
