"""Export for deployment (`qatacov_jax.export`, `scripts/export.py`): parity and refusals.

Every artifact is compared with the JAX inference path (`inference.make_predict_fn`, what
`Predictor` and scripts/infer.py run) on the same images, float32 within 1e-4 relative
(+ 1e-6 absolute) with identical COVID-19 decisions and masks: SavedModels in a separate
process that cannot import JAX (tests/export_client.py), StableHLO reloaded with
`jax.export.deserialize`, which also equals the jitted function it was exported from within
1e-6. bfloat16 SavedModels are compared with the bfloat16 JAX path. Most tests use untrained
tiny run directories (seconds); one exports the quickstart-trained U-Net DenseNet-121
(`tests/_trained_run.py`, shared with the inference and evaluation tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _trained_run import trained_run
from train_utils import tiny_config, write_tiny_export_runs

from qatacov_jax.cli import export as export_cli
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.export import (
    ONNX_MISSING,
    SAVEDMODEL_DIR,
    STABLEHLO_FILE,
    artifact,
    export_run,
    load_stablehlo,
    serving,
)
from qatacov_jax.inference.predictor import Predictor, make_predict_fn
from qatacov_jax.inference.runs import load_models
from qatacov_jax.runtime import files, locking
from qatacov_jax.runtime.sharding import make_mesh
from qatacov_jax.training import rundir

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "export_client.py"
THRESHOLD = 0.5
# float32: the same StableHLO compiled by TensorFlow's XLA instead of jaxlib's.
F32_RTOL, F32_ATOL = 1e-4, 1e-6
# bfloat16 artifacts against the bfloat16 JAX path: both round activations to 8 mantissa
# bits, but the two XLA builds may fuse (and so round) differently.
BF16_ATOL = 2e-2


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """An infection run (32x32) and a lung run of another input size (64x64)."""
    return write_tiny_export_runs(tmp_path_factory.mktemp("export_runs"))


def _images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 1) uint8 'X-rays' already at the model's input size."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def _jax_path(models: dict, preps: dict, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The JAX inference path on uint8 inputs, fed as `Predictor.predict_batch` feeds it."""
    predict = make_predict_fn(models, make_mesh(), preprocessing=preps)
    feed = {k: v.astype(np.float32) / 255.0 for k, v in images.items()}
    return {k: np.asarray(v) for k, v in jax.device_get(predict(feed)).items()}


def _serve_without_jax(jobs: list[tuple[Path, dict[str, np.ndarray]]], tmp: Path) -> list[dict]:
    """Runs each SavedModel export on its inputs in a subprocess that cannot import JAX."""
    argv = []
    for k, (export_dir, feed) in enumerate(jobs):
        np.savez(tmp / f"in{k}.npz", **feed)
        argv += [str(export_dir), str(tmp / f"in{k}.npz"), str(tmp / f"out{k}.npz")]
    proc = subprocess.run(
        [sys.executable, str(CLIENT), *argv], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "served without jax" in proc.stdout
    return [dict(np.load(tmp / f"out{k}.npz")) for k in range(len(jobs))]


def _assert_f32_parity(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    err = np.abs(got - want)
    assert np.all(err <= F32_RTOL * np.abs(want) + F32_ATOL), float(err.max())
    assert np.array_equal(got >= THRESHOLD, want >= THRESHOLD)  # masks
    assert np.array_equal(
        (got >= THRESHOLD).any(axis=(1, 2, 3)), (want >= THRESHOLD).any(axis=(1, 2, 3))
    )  # COVID-19 decisions


def test_stablehlo_reloads_and_matches_the_jax_path(tiny_runs, tmp_path):
    out = tmp_path / "hlo"
    manifest = export_run(tiny_runs["infection"], out, fmt="stablehlo", lung_run=tiny_runs["lung"])
    loaded = load_models(tiny_runs)
    exported = load_stablehlo(out)
    assert exported.calling_convention_version == manifest["serving"]["calling_convention_version"]
    same_fn = jax.jit(serving.serving_model(loaded).closed())
    for n in (3, 5):  # one artifact, any batch
        images = {"infection": _images(n, 32, n), "lung": _images(n, 64, n + 10)}
        got = jax.device_get(exported.call(images))
        exact = jax.device_get(same_fn(images))
        want = _jax_path(loaded.models, loaded.preprocessing, images)
        for k in images:
            assert got[k].shape == (n, *images[k].shape[1:])
            np.testing.assert_allclose(got[k], exact[k], rtol=0, atol=1e-6)
            _assert_f32_parity(got[k], want[k])
    # Decisions are meaningful only if some probabilities reach the threshold.
    assert 0.0 < float((want["infection"] >= THRESHOLD).mean()) < 1.0

    assert manifest["format"] == "stablehlo" and manifest["artifact"]["path"] == STABLEHLO_FILE
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["artifact"]["sha256"] == manifest["artifact"]["sha256"]
    assert [i["name"] for i in saved["inputs"]] == ["infection", "lung"]
    assert saved["inputs"][0]["shape"] == [None, 32, 32, 1]
    assert saved["inputs"][0]["dtype"] == "uint8" and saved["batch"] == "dynamic"
    assert saved["models"]["infection"]["preprocessing"]["mode"] == "torch"
    assert saved["models"]["lung"]["run"] == str(tiny_runs["lung"].absolute())
    assert saved["models"]["infection"]["threshold"] == 0.5
    assert {"jax", "jaxlib", "tensorflow", "qatacov-jax"} <= set(saved["versions"])
    assert saved["compute_dtype"] == "float32" and saved["platforms"] == ["cpu"]


def test_savedmodel_serves_without_jax_float32_and_bfloat16(tiny_runs, tmp_path):
    f32, bf16 = tmp_path / "f32", tmp_path / "bf16"
    export_run(tiny_runs["infection"], f32, fmt="savedmodel", lung_run=tiny_runs["lung"])
    export_run(
        tiny_runs["infection"],
        bf16,
        fmt="savedmodel",
        dtype="bfloat16",
        batch=4,
        input_dtype="float32",
    )
    images = {"infection": _images(3, 32, 0), "lung": _images(3, 64, 1)}
    bf16_images = _images(4, 32, 2)
    got_f32, got_bf16 = _serve_without_jax(
        [(f32, images), (bf16, {"infection": bf16_images.astype(np.float32) / 255.0})], tmp_path
    )

    loaded = load_models(tiny_runs)
    want = _jax_path(loaded.models, loaded.preprocessing, images)
    for k in images:
        _assert_f32_parity(got_f32[k], want[k])

    model = loaded.models["infection"]
    model_bf16 = serving.with_compute_dtype(model, loaded.configs["infection"], "bfloat16")
    want_bf16 = _jax_path(
        {"infection": model_bf16},
        {"infection": loaded.preprocessing["infection"]},
        {"infection": bf16_images},
    )["infection"]
    got = got_bf16["infection"]
    assert got.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(got, want_bf16, rtol=0, atol=BF16_ATOL)
    # bfloat16 really computed in bfloat16: it differs from float32 somewhere.
    want_f32 = _jax_path(
        {"infection": model},
        {"infection": loaded.preprocessing["infection"]},
        {"infection": bf16_images},
    )["infection"]
    assert float(np.abs(want_bf16 - want_f32).max()) > 0


@pytest.mark.slow
def test_quickstart_model_exports_in_every_working_format(tmp_path_factory, tmp_path):
    """The quickstart-trained U-Net DenseNet-121 (64x64): both formats against `Predictor`."""
    run = trained_run(tmp_path_factory)
    for fmt in ("savedmodel", "stablehlo"):
        export_run(run, tmp_path / fmt, fmt=fmt)
    images = _images(6, 64, 7)
    (got_tf,) = _serve_without_jax([(tmp_path / "savedmodel", {"infection": images})], tmp_path)
    got_hlo = jax.device_get(load_stablehlo(tmp_path / "stablehlo").call({"infection": images}))

    loaded = load_models({"infection": run})
    predictor = Predictor(
        loaded.models, loaded.preprocessing, loaded.sizes, make_mesh(), batch_size=8
    )
    want = np.stack([m["infection"] for m in predictor.predict_batch(list(images[..., 0]))])
    want = want[..., None]
    # XLA:CPU rounds float32 convolutions differently with other batch splits (Predictor:
    # 8 devices) or weights as constants (StableHLO): ~2e-5 here, well within 1e-4.
    _assert_f32_parity(got_tf["infection"], want)
    _assert_f32_parity(got_hlo["infection"], want)


# ------------------------------------------------------------------ refusals


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = export_cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _leftovers(parent: Path) -> list[str]:
    # The writer's lock file beside --out stays (runtime/locking.py); anything else hidden
    # would be a leftover of a failed export.
    return sorted(
        p.name
        for p in parent.iterdir()
        if p.name.startswith(".") and not p.name.endswith(locking.LOCK_NAME)
    )


def test_refuses_a_run_without_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rundir.check_or_write_config(run, tiny_config(str(tmp_path / "tfds")))
    files.write_json(run / rundir.PREPROCESSING_FILE, Preprocessing.from_mode("unit").to_dict())
    code, err = _cli([run, "--format", "stablehlo", "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert "No 'best' checkpoints" in err
    code, err = _cli(
        [tmp_path / "nowhere", "--format", "savedmodel", "--out", tmp_path / "o"], capsys
    )
    assert code == 2 and "config.json not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--format", "tflite"], "flag --format=tflite: value should be one of"),
        (["--format", "onnx", "--dtype", "bfloat16"], "--format onnx exports float32 models"),
        (["--format", "savedmodel", "--dtype", "float16"], "--dtype float16 is for --format onnx"),
        (["--format", "savedmodel", "--dtype", "int8"], "flag --dtype=int8"),
        (["--format", "savedmodel", "--batch", "0"], "--batch must be a positive integer"),
        (["--format", "savedmodel", "--batch", "eight"], "--batch must be a positive integer"),
        (["--format", "stablehlo", "--platforms", "cpu,gpu"], "Unsupported platform(s) ['gpu']"),
        (["--format", "stablehlo", "--threshold", "0"], "--threshold must be in (0, 1]"),
    ],
)
def test_refuses_bad_flags_before_any_work(flags, message, tiny_runs, tmp_path, capsys):
    code, err = _cli([tiny_runs["infection"], "--out", tmp_path / "out", *flags], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_onnx_without_the_package_names_the_extra():
    """--format onnx works (tests/test_export_onnx.py); without the onnx package it is
    refused naming the extra to install."""
    assert "pip install 'qatacov-jax[onnx]'" in ONNX_MISSING


def test_output_directory_rules(tiny_runs, tmp_path, capsys):
    run = tiny_runs["infection"]
    # An existing directory that is not ours: refused, with or without --overwrite.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        code, err = _cli([run, "--format", "stablehlo", "--out", foreign, *extra], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert ("not an export of this project" if extra else "already exists") in err
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]

    # An empty directory is free to use; an earlier export only goes with --overwrite.
    out = tmp_path / "out"
    out.mkdir()
    assert _cli([run, "--format", "stablehlo", "--out", out], capsys)[0] == 0
    first = json.loads((out / "manifest.json").read_text())
    code, err = _cli([run, "--format", "savedmodel", "--out", out], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert json.loads((out / "manifest.json").read_text()) == first
    assert _cli([run, "--format", "savedmodel", "--out", out, "--overwrite"], capsys)[0] == 0
    second = json.loads((out / "manifest.json").read_text())
    assert second["format"] == "savedmodel" and not (out / STABLEHLO_FILE).exists()
    assert (out / SAVEDMODEL_DIR / "saved_model.pb").exists()
    assert _leftovers(tmp_path) == []


def test_a_failed_export_leaves_nothing_behind(tiny_runs, tmp_path, monkeypatch):
    def half_write(serving_model, directory, platforms):
        (directory / STABLEHLO_FILE).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setitem(artifact.WRITERS, "stablehlo", half_write)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(tiny_runs["infection"], out, fmt="stablehlo")
    assert not out.exists() and _leftovers(tmp_path) == []

    # The same failure while replacing an earlier export keeps the earlier one intact.
    monkeypatch.undo()
    export_run(tiny_runs["infection"], out, fmt="stablehlo")
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setitem(artifact.WRITERS, "stablehlo", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(tiny_runs["infection"], out, fmt="stablehlo", overwrite=True)
    assert (out / "manifest.json").read_bytes() == before
    assert load_stablehlo(out).calling_convention_version > 0
    assert _leftovers(tmp_path) == []


def test_export_help_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "export.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "--format" in proc.stdout and "--lung-checkpoint" in proc.stdout
