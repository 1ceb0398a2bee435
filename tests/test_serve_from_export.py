"""`scripts/infer.py --model EXPORT_DIR` and `scripts/serve.py --model EXPORT_DIR`: batch
inference and the web app run from an ONNX export on ONNX Runtime, never importing JAX, and
report what the trained runs report on JAX.

Tiny run directories (infection at 32x32, lung at 64x64) are exported with their lung model
in one graph; the JAX side is the same runs through `--checkpoint`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_utils import write_tiny_export_runs

from benchmarks.serve_startup import free_port
from qatacov_jax.cli import infer as infer_cli
from qatacov_jax.cli import serve as serve_cli
from qatacov_jax.export import export_run
from qatacov_jax.export.onnx_runtime import OnnxPredictor, export_source
from qatacov_jax.inference.runs import run_source
from qatacov_jax.webapp.engine import load_export_engine

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "export_serve_child.py"
THRESHOLD = 0.5
ATOL = 1e-4  # ONNX Runtime vs XLA float32 rounding (tests/test_export_onnx.py)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_export_runs(tmp_path_factory.mktemp("export_runs"), preprocessing="unit")


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_run(runs["infection"], out, fmt="onnx", lung_run=runs["lung"], threshold=THRESHOLD)
    return out


@pytest.fixture(scope="module")
def xrays(tmp_path_factory) -> Path:
    """Three X-ray-like PNGs of different sizes and aspects (8 and 16 bit)."""
    folder = tmp_path_factory.mktemp("xrays") / "xr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(300, 280), (180, 256), (257, 257)]):
        y, x = np.mgrid[0:h, 0:w]
        img = 0.5 + 0.3 * np.sin(x / 17.0 + i) * np.cos(y / 23.0) + 0.05 * rng.random((h, w))
        if i == 2:
            Image.fromarray((img * 65535).astype(np.uint16)).save(folder / f"x{i}.png")
        else:
            Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"x{i}.png")
    return folder


def _images(folder: Path) -> list[np.ndarray]:
    from qatacov_jax.data import imageio

    return [imageio.read_xray(p) for p in sorted(folder.glob("*.png"))]


def test_onnx_predictor_matches_the_jax_predictor(runs, exported, xrays):
    """Same resize in, same maps out at each image's size: within ATOL, identical masks
    away from the threshold, the same decisions."""
    images = _images(xrays)
    onnx_pred = export_source(exported).load(2).predict_batch(images)
    jax_pred = run_source(runs["infection"], runs["lung"]).load(None).predict_batch(images)
    for got, want, img in zip(onnx_pred, jax_pred, images, strict=True):
        assert set(got) == set(want) == {"infection", "lung", "infection_grid_max", "lung_grid_max"}
        for k in ("infection", "lung"):
            assert got[k].shape == img.shape and got[k].dtype == np.float32
            np.testing.assert_allclose(got[k], want[k], atol=ATOL)
            clear = np.abs(want[k] - THRESHOLD) > ATOL
            assert ((got[k] >= THRESHOLD) == (want[k] >= THRESHOLD))[clear].all()
        assert abs(got["infection_grid_max"] - want["infection_grid_max"]) < ATOL
    maxima = [float(p["infection_grid_max"]) for p in jax_pred]
    assert min(maxima) < max(maxima)  # not a constant model: the comparison means something


def _child(args: list[str], timeout: int = 300) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(CHILD), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr[-3000:]
    return lines


def test_infer_from_export_runs_without_jax_and_reports_as_the_run(runs, exported, xrays, tmp_path):
    out_onnx, out_jax = tmp_path / "onnx", tmp_path / "jax"
    (status,) = _child(
        ["infer", "--", "--model", str(exported), str(xrays), "--out", str(out_onnx)]
    )
    assert status["code"] == 0 and status["modules"] == [], status
    argv = ["--checkpoint", str(runs["infection"]), "--lung-checkpoint", str(runs["lung"])]
    assert infer_cli.main([*argv, str(xrays), "--out", str(out_jax)]) == 0
    got = json.loads((out_onnx / "report.json").read_text())
    want = json.loads((out_jax / "report.json").read_text())
    assert got["engine"] == "onnxruntime" and want["engine"] == "jax"
    assert got["checkpoint"] == str(exported)
    assert len(got["images"]) == len(want["images"]) == 3
    for g, w in zip(got["images"], want["images"], strict=True):
        assert g["status"] == w["status"] == "ok"
        assert g["covid19"] == w["covid19"]
        assert g["max_probability"] == pytest.approx(w["max_probability"], abs=ATOL)
        assert g["severity"] == w["severity"]
        for key in ("mask", "lung_mask"):
            a, b = (np.asarray(Image.open(r[key])) for r in (g, w))
            assert (a != b).mean() < 1e-3  # pixels a rounding away from the threshold at most


def test_server_from_export_answers_without_jax(exported, xrays):
    png = sorted(xrays.glob("*.png"))[0]
    answer, status = _child(["serve", str(free_port()), str(png), "--", "--model", str(exported)])
    assert status["code"] == 0 and status["modules"] == [], status
    assert answer["status"] == "ok" and answer["height"] == 300 and answer["width"] == 280
    assert answer["checkpoint"] == answer["lung_checkpoint"] == str(exported)
    assert "ONNX export" in answer["model"] and "ONNX export" in answer["lung_model"]
    assert answer["severity"] in ("none", "mild", "moderate", "severe", "critical")


def test_export_engine_proposes_candidates_for_annotation(exported, xrays, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(exported, second)
    engine = load_export_engine(exported, candidates=[exported, second], annotate=True)
    try:
        img = _images(xrays)[0]
        demo = engine.infer.predict(img)
        cands = engine.candidates.predict(img)
        assert set(cands) == set(engine.candidate_names) == {"onnx", "second"}
        assert engine.roles == {"onnx": "infection", "second": "infection"}
        for probs in cands.values():
            np.testing.assert_array_equal(probs, demo["infection"])
        # The page learns the models run from an export (its lung hint names export.py).
        from fastapi.testclient import TestClient

        from qatacov_jax.webapp.app import create_app

        config = TestClient(create_app(engine)).get("/api/config").json()
        assert config["engine"] == "onnxruntime" and config["lung"] is True
        assert "ONNX export" in config["models"]["second"]["label"]
    finally:
        engine.close()


def test_threshold_defaults_to_the_one_exported(runs, tmp_path):
    out = tmp_path / "t07"
    export_run(runs["infection"], out, fmt="onnx", threshold=0.7)
    predictor = OnnxPredictor.load(out)
    assert predictor.serving.thresholds == {"infection": 0.7}
    fv, _ = serve_cli.parse_command(serve_cli._define, ["--model", str(out)], "serve", "")
    assert serve_cli.map_settings(fv, export_source(out))[0] == 0.7
    fv, _ = serve_cli.parse_command(
        serve_cli._define, ["--model", str(out), "--threshold", "0.4"], "serve", ""
    )
    assert serve_cli.map_settings(fv, export_source(out))[0] == 0.4


@pytest.mark.parametrize(
    "case, message",
    [
        ("run_as_model", "is a training run: pass it as --checkpoint"),
        ("export_as_checkpoint", "is an exported model, not a training run: pass it as --model"),
        ("both", "one of the two"),
        ("lung_with_model", "--lung-checkpoint apply to --checkpoint runs"),
        ("savedmodel", "export the run again with --format onnx"),
        ("edited", "does not match its sha256"),
    ],
)
def test_wrong_model_folders_are_refused_in_one_line(
    case, message, runs, exported, xrays, tmp_path, capsys
):
    model = {"--model": str(exported)}
    if case == "run_as_model":
        model = {"--model": str(runs["infection"])}
    elif case == "export_as_checkpoint":
        model = {"--checkpoint": str(exported)}
    elif case == "both":
        model = {"--model": str(exported), "--checkpoint": str(runs["infection"])}
    elif case == "lung_with_model":
        model["--lung-checkpoint"] = str(runs["lung"])
    elif case in ("savedmodel", "edited"):
        copy = tmp_path / "copy"
        shutil.copytree(exported, copy)
        model = {"--model": str(copy)}
        if case == "savedmodel":
            manifest = json.loads((copy / "manifest.json").read_text())
            manifest["format"] = "savedmodel"
            (copy / "manifest.json").write_text(json.dumps(manifest))
        else:
            with open(copy / "model.onnx", "ab") as f:
                f.write(b"\0")
    argv = [x for kv in model.items() for x in kv]
    out = tmp_path / "out"
    code = infer_cli.main([*argv, str(xrays), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (out / "report.json").exists()


def test_float16_export_serves_close_to_float32(runs, exported, xrays, tmp_path):
    """`--dtype float16 --format onnx`: a float16 graph (uint8 in, float32 out) that the
    predictor runs like any export; on the tiny models its maps stay within 1e-2 of the
    float32 export's (docs/export.md states the DenseNet figures)."""
    from qatacov_jax.cli import export as export_cli

    half = tmp_path / "half"
    argv = [str(runs["infection"]), "--lung-checkpoint", str(runs["lung"])]
    assert (
        export_cli.main([*argv, "--format", "onnx", "--dtype", "float16", "--out", str(half)]) == 0
    )
    manifest = json.loads((half / "manifest.json").read_text())
    assert manifest["compute_dtype"] == "float16"
    images = _images(xrays)
    got = export_source(half).load(None).predict_batch(images)
    want = export_source(exported).load(None).predict_batch(images)
    for g, w in zip(got, want, strict=True):
        for k in ("infection", "lung"):
            assert g[k].dtype == np.float32
            err = np.abs(g[k] - w[k])
            assert 0 < err.max() < 1e-2  # really float16, and close


def test_float16_is_refused_for_the_jax_formats(runs, tmp_path, capsys):
    from qatacov_jax.cli import export as export_cli

    out = tmp_path / "sm"
    argv = [str(runs["infection"]), "--format", "stablehlo", "--dtype", "float16"]
    assert export_cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--dtype float16 is for --format onnx" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_fixed_batch_export_takes_any_number_of_images(runs, exported, xrays, tmp_path):
    """`export.py --batch 2`: the predictor feeds 2 at a time (padding the last call), so 3
    images give the dynamic export's maps."""
    fixed = tmp_path / "fixed"
    export_run(runs["infection"], fixed, fmt="onnx", lung_run=runs["lung"], batch=2)
    predictor = export_source(fixed).load(8)
    assert predictor.batch_size == 2
    images = _images(xrays)
    got = predictor.predict_batch(images)
    want = export_source(exported).load(None).predict_batch(images)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        for k in ("infection", "lung"):
            np.testing.assert_allclose(g[k], w[k], atol=1e-6)


def test_a_server_takes_runs_or_exports_as_candidates_not_both(
    runs, exported, xrays, tmp_path, capsys
):
    base = ["--annotate", str(xrays), "--annotations", str(tmp_path / "a")]
    mixed = [*base, "--checkpoint", str(runs["infection"]), "--candidates", str(exported)]
    assert serve_cli.main(mixed) == 2
    err = capsys.readouterr().err.strip()
    assert "is an exported model; serve exports with --model" in err, err
    wrong = [*base, "--model", str(exported), "--candidates", str(runs["infection"])]
    assert serve_cli.main(wrong) == 2
    assert "is a training run: pass it as --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
