"""Reviewing a candidate store through the web API (`scripts/serve.py --review`): no model
is loaded; blind mode never shows a name; annotators vote; every outcome lands in a folder
the TFDS builders read; a restart resumes (docs/annotation.md#the-web-api)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from annotation_utils import (
    MODELS,
    decode,
    mask_url,
    review_client,
    write_candidate_store,
    write_stage1,
)
from PIL import Image

from qatacov_jax import data
from qatacov_jax.annotation import layout
from qatacov_jax.annotation.store import ACCEPTED, PROVENANCE
from qatacov_jax.cli import serve as serve_cli

KEYS = ["covid_1", "covid_2", "covid_3"]


@pytest.fixture
def stage1(tmp_path):
    """A Stage-I candidate store of three models, and the doctors' manual masks."""
    return write_stage1(tmp_path, KEYS)


def _prepared(out, target="infection"):
    """The annotation folder read by the TFDS builder of `target` (manual_dir = OUT)."""
    cfg = data.default_config()
    cfg.dataset, cfg.target = layout.DATASETS[target]
    cfg.data_dir, cfg.manual_dir = str(out.parent / f"tfds_{out.name}"), str(out)
    cfg.stored_size = 32
    source = data.prepare(cfg).as_data_source("train")
    return {source[i]["filename"].decode(): source[i] for i in range(len(source))}


def test_blind_review_never_leaks_a_name_and_records_the_truth(stage1, tmp_path):
    cands, manual, masks, manual_masks = stage1
    out = tmp_path / "out"
    c = review_client(cands, out, blind=True, reference=manual)
    texts = []

    def get(url):
        r = c.get(url)
        assert r.status_code == 200, r.text
        texts.append(r.text)
        return r.json()

    session = get("/api/annotate?items=true&annotator=dr_a")
    assert session["settings"] == {
        "mode": "review",
        "stage": "I",
        "target": "infection",
        "outcomes": ["pick", "correct", "draw", "no_infection", "exclude", "skip"],
        "votes": 1,
        "order": "name",
        "blind": True,
        "reference": True,
    }
    assert get("/api/config")["candidates"] == []
    item = get("/api/annotate/covid_1?annotator=dr_a")
    shown = [x["name"] for x in item["candidates"]]
    assert shown == ["candidate A", "candidate B", "candidate C", "candidate D"]  # 3 + manual
    assert item["disagreement"] is None and all(
        x["dice_with_models"] is None and x["probability"] is None for x in item["candidates"]
    )
    assert get("/api/annotate/covid_1?annotator=dr_a") == item  # same order on reload
    # Find which label is the doctors' mask, as only the test can, and pick it.
    label = next(
        x["name"]
        for x in item["candidates"]
        if np.array_equal(decode(x["mask"]) > 0, manual_masks["covid_1"])
    )
    body = {"annotator": "dr_a", "outcome": "pick", "candidate": label, "seconds": 3.0}
    r = c.post("/api/annotate/covid_1", json=body)
    assert r.status_code == 200, r.text
    texts.append(r.text)
    assert r.json()["saved"]["candidate"] == label
    machine = next(x["name"] for x in item["candidates"] if x["name"] != label)
    body = {"annotator": "dr_a", "outcome": "correct", "candidate": machine, "revision": 1}
    body["mask"] = mask_url(decode(item["candidates"][0]["mask"]) > 0)
    r = c.post("/api/annotate/covid_1", json=body)
    assert r.status_code == 200, r.text
    texts.append(r.text)
    texts += [get("/api/annotate/covid_1?annotator=dr_a") and c.get("/api/annotate/covid_1").text]
    texts.append(c.post("/api/annotate/covid_1", json={"annotator": "x", "candidate": "zz"}).text)
    for text in texts:
        for secret in [*MODELS, "manual", "runs/", "fold_", str(tmp_path)]:
            assert secret not in text, (secret, text[:300])
    # The server's own record keeps the real names (the report needs them).
    recs = [json.loads(x) for x in (out / PROVENANCE).read_text().splitlines()]
    assert [r["chosen"] for r in recs] == ["manual", recs[1]["chosen"]]
    assert recs[1]["chosen"] in MODELS and recs[1]["run"].startswith(f"runs/{recs[1]['chosen']}")
    assert recs[0]["candidates"] == sorted([*MODELS, "manual"]) and recs[0]["seconds"] == 3.0
    # No model: /api/predict is a clear 404.
    r = c.post("/api/predict", files={"file": ("x.png", b"123")})
    assert r.status_code == 404 and "no model" in r.json()["error"]


def test_two_annotators_vote_majority_and_adjudication(stage1, tmp_path):
    cands, _, masks, _ = stage1
    out = tmp_path / "out"
    c = review_client(cands, out, votes=2)

    def vote(key, who, model, **extra):
        body = {"annotator": who, "outcome": "pick", "candidate": model, **extra}
        return c.post(f"/api/annotate/{key}", json=body)

    assert c.get("/api/annotate?annotator=a").json()["next"] == "covid_1"
    r = vote("covid_1", "a", MODELS[1], revision=0)
    assert r.status_code == 200 and r.json()["status"]["state"] == "open"
    assert r.json()["next"] == "covid_2"  # a's next; b still has covid_1 first
    assert c.get("/api/annotate?annotator=b").json()["next"] == "covid_1"
    # b's own view of an open image does not show a's vote (votes stay independent).
    seen = c.get("/api/annotate/covid_1?annotator=b").json()
    assert seen["history"] == [] and seen["status"]["tally"] is None
    assert seen["status"]["votes_cast"] == 1
    r = vote("covid_1", "b", MODELS[1], revision=0)  # another's vote in between: no conflict
    assert r.status_code == 200, r.text
    status = r.json()["status"]
    assert status == {
        "state": "accepted",
        "outcome": "pick",
        "votes_needed": 2,
        "votes_cast": 2,
        "tally": {MODELS[1]: 2},
        "reason": None,
    }
    img, m = layout.accepted_paths(out, "covid_1", "infection")
    np.testing.assert_array_equal(np.asarray(Image.open(m)) > 0, masks["covid_1"][MODELS[1]])
    # a revises with a stale revision: their own vote came since -> 409.
    assert vote("covid_1", "a", MODELS[2], revision=0).status_code == 409

    # Disagreement: listed for adjudication, nothing in the dataset until settled.
    assert vote("covid_2", "a", MODELS[0]).status_code == 200
    r = vote("covid_2", "b", MODELS[2])
    assert r.json()["status"]["state"] == "adjudication"
    assert r.json()["status"]["reason"] == "tie"
    assert not layout.accepted_paths(out, "covid_2", "infection")[1].exists()
    items = c.get("/api/annotate?items=true&annotator=a").json()
    assert [i["state"] for i in items["items"]] == ["accepted", "adjudication", "open"]
    assert items["adjudication"] == 1 and items["items"][1]["mine"] == "pick"
    r = vote("covid_2", "chief", MODELS[2], adjudicate=True)
    assert r.json()["status"]["state"] == "accepted"
    _, m2 = layout.accepted_paths(out, "covid_2", "infection")
    np.testing.assert_array_equal(np.asarray(Image.open(m2)) > 0, masks["covid_2"][MODELS[2]])
    recs = (out / PROVENANCE).read_text().splitlines()
    assert len(recs) == 5  # every decision kept, the refused one not


def test_outcomes_skip_revise_and_restart(stage1, tmp_path):
    cands, manual, masks, _ = stage1
    out = tmp_path / "out"
    c = review_client(cands, out, reference=manual)
    post = lambda key, **body: c.post(f"/api/annotate/{key}", json={"annotator": "a", **body})  # noqa: E731
    # A name is required; an empty canvas is not a decision.
    assert "annotator" in c.post("/api/annotate/covid_1", json={"outcome": "skip"}).json()["error"]
    empty = mask_url(np.zeros((40, 48), bool))
    r = post("covid_1", outcome="draw", mask=empty)
    assert r.status_code == 422 and "no_infection" in r.json()["error"]
    for bad in (
        {"outcome": "accept", "candidate": MODELS[0]},  # a lung outcome
        {"outcome": "pick"},  # which candidate?
        {"outcome": "pick", "candidate": "consensus", "mask": empty},
        {"outcome": "draw", "mask": mask_url(np.ones((8, 8), bool))},  # wrong size
    ):
        assert post("covid_1", **bad).status_code == 422, bad
    # Skip: recorded, the image stays open, the next one comes first, it comes back last.
    r = post("covid_1", outcome="skip")
    assert r.status_code == 200 and r.json()["next"] == "covid_2"
    assert post("covid_2", outcome="no_infection").json()["next"] == "covid_3"
    drawn = np.zeros((40, 48), bool)
    drawn[5:15, 10:30] = True
    assert post("covid_3", outcome="draw", mask=mask_url(drawn)).json()["next"] == "covid_1"
    assert post("covid_1", outcome="pick", candidate="consensus").status_code == 200
    # Revise covid_3: the accepted mask changes, the old one goes to history/.
    item = c.get("/api/annotate/covid_3?annotator=a").json()
    assert item["mine"]["outcome"] == "draw" and item["revision"] == 1
    np.testing.assert_array_equal(decode(item["mask"]) > 0, drawn)
    assert post("covid_3", outcome="pick", candidate="manual", revision=1).status_code == 200
    assert (out / "history" / "covid_3.r1.mask.png").is_file()
    assert c.get("/api/annotate").json()["done"] == 3

    # The folder is a QaTa-COV19 v1 dataset: "no visible infection" stays a COVID-19
    # X-ray with an all-black mask; nothing is filed as a control.
    exs = _prepared(out)
    assert sorted(exs) == ["covid_1.png", "covid_2.png", "covid_3.png"]
    assert all(int(e["label"]) == 1 for e in exs.values())  # covid19
    assert not exs["covid_2.png"]["mask"].any() and exs["covid_3.png"]["mask"].any()
    assert not (out / "controls").exists()

    # Restart after a crash that lost the accepted files: re-derived from the decisions.
    _, m3 = layout.accepted_paths(out, "covid_3", "infection")
    m3.unlink()
    (out / ACCEPTED).unlink()
    c2 = review_client(cands, out, reference=manual)
    assert m3.is_file()
    p = c2.get("/api/annotate?annotator=a").json()
    assert (p["total"], p["done"], p["pending"], p["next"]) == (3, 3, 0, None)
    ref = np.asarray(Image.open(manual / layout.QATA_DIR / "Ground-truths" / "mask_covid_3.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(m3)) > 0, ref > 0)


def test_lung_review_accept_reject_unsure_exclude(tmp_path):
    keys = ["lung_1", "lung_2", "lung_3", "lung_4"]
    masks = write_candidate_store(tmp_path / "cands", keys, ["lungnet"], target="lung")
    out = tmp_path / "out"
    c = review_client(tmp_path / "cands", out)
    post = lambda key, **body: c.post(f"/api/annotate/{key}", json={"annotator": "r", **body})  # noqa: E731
    assert post("lung_1", outcome="no_infection").status_code == 422  # infection only
    assert post("lung_1", outcome="accept").status_code == 200  # the one candidate
    fixed = masks["lung_2"]["lungnet"].copy()
    fixed[:, :5] = True
    assert post("lung_2", outcome="reject").status_code == 422  # needs the corrected mask
    assert post("lung_2", outcome="reject", mask=mask_url(fixed)).status_code == 200
    r = post("lung_3", outcome="unsure", note="consolidation at the base")
    assert r.json()["status"] == {
        "state": "adjudication",
        "outcome": None,
        "votes_needed": 1,
        "votes_cast": 1,
        "tally": {"unsure": 1},
        "reason": "unsure",
    }
    assert post("lung_4", outcome="exclude").json()["status"]["state"] == "excluded"
    p = c.get("/api/annotate").json()
    assert (p["done"], p["adjudication"], p["excluded"]) == (3, 1, 1)
    # The accepted lung masks are a COVID-QU-Ex lung dataset (train split).
    exs = _prepared(out, "lung")
    assert sorted(exs) == ["COVID-19/lung_1.png", "COVID-19/lung_2.png"]
    lung2 = np.asarray(exs["COVID-19/lung_2.png"]["lung_mask"])[..., 0] > 0
    assert lung2[:, :2].all()  # the correction (resized to 32x32)


def test_order_and_command_line(tmp_path, capsys):
    keys = ["k1", "k2", "k3", "k4"]
    write_candidate_store(tmp_path / "cands", keys, ["m1", "m2"])  # image i agrees less
    c = review_client(tmp_path / "cands", tmp_path / "out", order="disagreement")
    assert [i["key"] for i in c.get("/api/annotate?items=true").json()["items"]] == keys[::-1]
    base = ["--review", str(tmp_path / "cands"), "--annotations", str(tmp_path / "o")]
    for extra, msg in (
        (["--checkpoint", "x"], "--review loads no model"),
        (["--votes", "0"], "--votes"),
    ):
        assert serve_cli.main([*base, *extra]) == 2
        assert msg in capsys.readouterr().err
    assert serve_cli.main(["--checkpoint", "x", "--order", "entropy"]) == 2
    assert "--review" in capsys.readouterr().err
    assert serve_cli.main(["--review", str(tmp_path / "nope"), "--annotations", "o"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_drawing_without_a_model(tmp_path, monkeypatch, capsys):
    """`serve.py --annotate XRAYS` alone: no candidates, the doctors draw (Stage I's first
    masks)."""
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config.app.state))
    from fastapi.testclient import TestClient
    from webapp_fixtures import write_xray

    from qatacov_jax.webapp.annotation import AnnotationSession, LiveCandidates
    from qatacov_jax.webapp.app import Settings, create_app

    write_xray(tmp_path / "first" / "x.png", 40, 48)
    session = AnnotationSession(LiveCandidates(tmp_path / "first", (), 0.5), tmp_path / "manual")
    c = TestClient(create_app(None, Settings(), session))
    item = c.get("/api/annotate/first__x").json()
    assert item["candidates"] == [] and item["disagreement"] is None
    drawn = np.zeros((40, 48), bool)
    drawn[10:30, 5:20] = True
    body = {"annotator": "md", "outcome": "draw", "mask": mask_url(drawn)}
    assert c.post("/api/annotate/first__x", json=body).status_code == 200
    assert (
        c.post("/api/annotate/first__x", json={"annotator": "md", "outcome": "pick"}).status_code
        == 422
    )
    assert layout.read_masks(tmp_path / "manual", "infection")["first__x"].image is not None
    assert c.post("/api/predict", files={"file": ("x.png", b"1")}).status_code == 404
    # The command line starts it with no model loaded; --candidates needs a model.
    argv = ["--annotate", str(tmp_path / "first"), "--annotations", str(tmp_path / "m2")]
    assert serve_cli.main(argv) == 0
    assert served[0].engine is None and served[0].store.source.models == ()
    assert serve_cli.main([*argv, "--candidates", "run"]) == 2
    assert "--candidates needs" in capsys.readouterr().err
