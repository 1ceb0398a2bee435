"""Inference: the jitted multi-device predictor and scripts/infer.py end to end."""

import csv
import json

import jax
import numpy as np
import pytest
from _trained_run import trained_run
from data_fakes import write_dicom_pixels
from PIL import Image
from train_utils import tiny_model

from qatacov_jax.cli import infer as infer_cli
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.inference import files as infer
from qatacov_jax.inference.predictor import Predictor, make_predict_fn
from qatacov_jax.inference.reports import write_reports
from qatacov_jax.runtime.files import OutputExistsError
from qatacov_jax.runtime.sharding import make_mesh


def test_predict_fn_matches_eager_and_pads():
    model = tiny_model(0)
    model.eval()
    mesh = make_mesh()  # 8 simulated devices
    prep = Preprocessing.from_mode("torch")
    predict = make_predict_fn(model, mesh, preprocessing=prep, batch_size=8)
    x = np.random.default_rng(0).random((5, 16, 16, 1)).astype(np.float32)
    got = predict(x)
    assert got.shape == (5, 16, 16, 1)
    np.testing.assert_allclose(got, jax.nn.sigmoid(model(prep(x))), atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        make_predict_fn(model, mesh, batch_size=6)


def test_predictor_runs_two_models_at_original_resolution():
    mesh = make_mesh()
    a, b = tiny_model(0), tiny_model(1)
    a.eval()
    b.eval()
    unit = Preprocessing.from_mode("unit")
    p = Predictor(
        {"infection": a, "lung": b},
        {"infection": unit, "lung": unit},
        {"infection": 16, "lung": (32, 24)},
        mesh,
        batch_size=8,
    )
    imgs = [
        np.random.default_rng(i).random(s).astype(np.float32)
        for i, s in enumerate([(40, 30), (17, 60), (16, 16)])
    ]
    out = list(p.predict_all(imgs))
    assert [o["infection"].shape for o in out] == [(40, 30), (17, 60), (16, 16)]
    assert [o["lung"].shape for o in out] == [(40, 30), (17, 60), (16, 16)]
    # The 16x16 image is already at model size: its map is the model's own output.
    ref = jax.nn.sigmoid(a(np.round(imgs[2] * 255)[None, ..., None].repeat(3, -1) / 255))
    np.testing.assert_allclose(out[2]["infection"], np.asarray(ref)[0, ..., 0], atol=1e-5)
    assert not np.allclose(out[0]["infection"], out[0]["lung"])


def test_collect_inputs_and_refusal(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "sub" / "a.png")
    (tmp_path / "in" / "notes.txt").write_text("ignored in folders")
    items, errors = infer.collect_inputs(
        [tmp_path / "in", tmp_path / "empty", tmp_path / "missing.png"]
    )
    assert [i.key for i in items] == ["in/a", "in/sub/a"]
    assert [
        (e.path.name, "no image files" in e.reason or "no such" in e.reason) for e in errors
    ] == [("empty", True), ("missing.png", True)]
    out = tmp_path / "out"
    (out / "in").mkdir(parents=True)
    (out / "in" / "a_mask.png").write_bytes(b"earlier result")
    with pytest.raises(OutputExistsError, match="a_mask.png already exists"):
        infer.check_no_overwrite(items, out, False, overwrite=False)
    # --overwrite replaces only an earlier output of ours (its report.json).
    with pytest.raises(OutputExistsError, match="not an earlier output"):
        infer.check_no_overwrite(items, out, False, overwrite=True)
    write_reports([], out, {"checkpoint": "run"})
    infer.check_no_overwrite(items, out, False, overwrite=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.mark.slow
def test_infer_end_to_end_on_quickstart_checkpoint(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "xrays"
    (src / "dicom").mkdir(parents=True)
    Image.fromarray((rng.random((90, 120)) * 255).astype(np.uint8)).save(src / "grey.png")
    Image.fromarray((rng.random((70, 50, 3)) * 255).astype(np.uint8)).save(src / "colour.jpg")
    Image.fromarray((rng.random((80, 64)) * 65535).astype(np.uint16)).save(src / "deep16.png")
    ramp = np.tile(np.linspace(0, 4095, 48), (40, 1))
    write_dicom_pixels(src / "dicom" / "mono2.dcm", ramp, "MONOCHROME2", window=(2048, 4096))
    write_dicom_pixels(src / "dicom" / "rsna_mono1", ramp, "MONOCHROME1")  # no suffix, DICM magic
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (src / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(run_dir),
        str(src),
        str(tmp_path / "empty"),
        "--out",
        str(out),
        "--batch-size",
        "8",
    ]
    code = infer_cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1  # some inputs failed
    assert "broken.png" in err and "text.jpg" in err and "empty" in err
    rows = list(csv.DictReader(open(out / "report.csv")))
    by_name = {r["file"].split("/")[-1]: r for r in rows}
    ok = ["grey.png", "colour.jpg", "deep16.png", "mono2.dcm", "rsna_mono1"]
    for name in ok:
        r = by_name[name]
        assert r["status"] == "ok", r
        mp = np.asarray(Image.open(r["map"]))
        mask = np.asarray(Image.open(r["mask"]))
        assert mp.shape == (int(r["height"]), int(r["width"]), 3)
        assert mask.shape == mp.shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert r["covid19"] == str(float(r["max_probability"]) >= 0.5)
        assert float(r["infected_percent_of_image"]) == pytest.approx(100 * (mask > 0).mean())
    assert by_name["grey.png"]["height"] == "90" and by_name["grey.png"]["width"] == "120"
    for name in ("broken.png", "text.jpg", "empty"):
        assert by_name[name]["status"] == "error" and by_name[name]["error"]
    report = json.loads((out / "report.json").read_text())
    assert len(report["images"]) == len(rows) == 8 and report["threshold"] == 0.5

    # Nothing is overwritten without --overwrite: refused up front, naming a file.
    before = (out / "report.csv").read_bytes()
    assert infer_cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "report.csv").read_bytes() == before

    # With a lung model (here the same run) the report gains lung % and a severity grade;
    # both models run in the same jitted call.
    out2 = tmp_path / "out2"
    code = infer_cli.main(
        [
            "--checkpoint",
            str(run_dir),
            "--lung-checkpoint",
            str(run_dir),
            str(src / "grey.png"),
            "--out",
            str(out2),
            "--batch-size",
            "8",
        ]
    )
    assert code == 0
    (row,) = list(csv.DictReader(open(out2 / "report.csv")))
    assert row["severity"] in ("none", "mild", "moderate", "severe", "critical", "unknown")
    assert (out2 / "grey_lung_mask.png").exists()


def test_run_inference_reports_per_file_and_keeps_going(tmp_path):
    # The prediction is a fixed pattern (left half infected, lung = middle rows) so every
    # number in the report is known; the real model path is the slow end-to-end test.
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((20, 40), 100, np.uint8)).save(src / "a.png")
    (src / "b.png").write_bytes(b"garbage")
    Image.fromarray(np.full((10, 10), 50, np.uint8)).save(src / "c.jpg")
    items, errors = infer.collect_inputs([src])
    assert not errors

    def predict_batch(images):
        out = []
        for img in images:
            h, w = img.shape
            inf = np.zeros((h, w), np.float32)
            inf[:, : w // 2] = 0.9
            lung = np.zeros((h, w), np.float32)
            lung[h // 4 : 3 * h // 4] = 0.8
            out.append({"infection": inf, "lung": lung})
        return out

    out = tmp_path / "out"
    rows = infer.run_inference(items, predict_batch, out, batch_size=2, with_lung=True)
    write_reports(rows, out, {"threshold": 0.5})
    by = {r["file"].split("/")[-1]: r for r in rows}
    assert by["b.png"]["status"] == "error" and "not a readable image" in by["b.png"]["error"]
    a = by["a.png"]
    assert a["status"] == "ok" and a["covid19"] is True
    assert a["max_probability"] == pytest.approx(0.9)
    assert a["infected_percent_of_image"] == pytest.approx(50.0)
    assert a["lung_percent_of_image"] == pytest.approx(50.0)
    assert a["infected_percent_of_lung"] == pytest.approx(50.0)
    assert (a["severity_grade"], a["severity"]) == (2, "moderate")
    mp = np.asarray(Image.open(a["map"]))
    assert mp.shape == (20, 40, 3)
    np.testing.assert_array_equal(mp[:, 20:], 100)  # p = 0 side: the plain X-ray
    assert (mp[:, :20, 0] > mp[:, :20, 2]).all()  # p = 0.9: red-dominant jet colour
    lung = np.asarray(Image.open(out / "in" / "a_lung_mask.png"))
    assert lung.sum() == 255 * 10 * 40
    rows_csv = list(csv.DictReader(open(out / "report.csv")))
    assert [r["status"] for r in rows_csv] == [r["status"] for r in rows]
    assert json.loads((out / "report.json").read_text())["images"][0]["file"].endswith("a.png")
