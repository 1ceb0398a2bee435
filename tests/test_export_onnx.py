"""ONNX export (`--format onnx`, `export.onnx_graph` / `onnx_ops` / `onnx_export`) proven in
ONNX Runtime, and its JAX-free runtime (`export.onnx_runtime`).

Every registered encoder/decoder pair (paper 1's Keras graphs and the smp family; `chexnet`
shares DenseNet-121's graph) is translated at 64x64 and run by ONNX Runtime at batch 2
against the JAX inference path (`make_predict_fn`, what `Predictor` and scripts/infer.py
run) on the same uint8 images: probabilities within `ATOL` (or, on deep models whose float32
rounding alone moves them more, `NOISE_FACTOR` times what a one-ulp change of the input moves
the JAX path), identical masks and COVID-19 decisions away from the threshold. The models are randomly initialised, their BatchNorm statistics set from a batch
of images (as training would leave them) so activations have a trained network's scale and
the probabilities spread over [0, 1]. A second test exports tiny run directories (infection
+ lung) and serves the same `model.onnx` at batch 1 and 3 in a process that imports only
ONNX Runtime and NumPy (tests/onnx_client.py), and through `OnnxServing`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx
from train_utils import write_tiny_export_runs

from qatacov_jax import models
from qatacov_jax.cli import export as export_cli
from qatacov_jax.export import artifact, export_run, serving_model
from qatacov_jax.export.onnx_export import serving_to_onnx, to_float16
from qatacov_jax.export.onnx_graph import UnsupportedError, jaxpr_to_onnx
from qatacov_jax.export.onnx_ops import OPS
from qatacov_jax.inference.predictor import make_predict_fn
from qatacov_jax.inference.runs import LoadedModels, load_models
from qatacov_jax.runtime.sharding import make_mesh
from qatacov_jax.training.factory import build_model

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "onnx_client.py"
SIZE = 64
THRESHOLD = 0.5
# ONNX Runtime's float32 convolutions (MLAS) round differently from XLA's. On the tiny models
# that moves probabilities by < 1e-6. Deep random-init encoders amplify any rounding change to
# far more at the output (smp Inception-v4: 4e-3 from XLA's own batch splits and from moving
# every input pixel by one float32 ulp): there the bound is NOISE_FACTOR times what that
# one-ulp input change moves the JAX path. Measured, ONNX Runtime's error is 0.9-1.05x it.
ATOL = 1e-4
NOISE_FACTOR = 3.0

PAIRS = [
    *(("paper1", a, e) for a in models.ARCHS for e in ("densenet121", "inceptionv3", "resnet50")),
    *(("smp", a, e) for a in models.SMP_ARCHS for e in models.SMP_ENCODERS),
]
# One pair per decoder runs in the fast suite; the full grid is marked slow (still in CI).
FAST = {("paper1", "unet", "resnet50"), ("smp", "unetpp", "resnet18"), ("smp", "fpn", "resnet18")}


def _config(family: str, arch: str, encoder: str):
    from configs import default
    from configs.paper2 import base

    if family == "smp":
        config = base.variant("infection", arch, encoder)
    else:
        config = default.get_config()
        config.model.arch, config.model.encoder = arch, encoder
    config.data.image_size = SIZE
    return config


def _set_batchnorm_statistics(model: nnx.Module, images: jax.Array) -> None:
    """Every BatchNorm's running mean/var := the statistics of its input on `images` (what
    training converges to), via one training-mode call with momentum 0."""
    norms = [m for _, m in model.iter_modules() if isinstance(m, nnx.BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    model.train()
    model(images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def _loaded(family: str, arch: str, encoder: str) -> LoadedModels:
    config = _config(family, arch, encoder)
    model, prep = build_model(config, seed=0, load_weights=False)
    grey = np.random.default_rng(1).random((4, SIZE, SIZE, 1), dtype=np.float32)
    _set_batchnorm_statistics(model, prep(jnp.asarray(grey)))
    return LoadedModels(
        {"infection": model},
        {"infection": config},
        {"infection": prep},
        {"infection": SIZE},
        {"infection": Path(f"{family}-{arch}-{encoder}")},
    )


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def _jax_path(
    loaded: LoadedModels, images: dict[str, np.ndarray], *, ulp: bool = False
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The JAX inference path on uint8 inputs, fed as `Predictor.predict_batch` feeds it;
    with `ulp`, also its outputs with every pixel moved up by one float32 ulp (same compiled
    function), to see how far rounding moves the model."""
    predict = make_predict_fn(loaded.models, make_mesh(), preprocessing=loaded.preprocessing)
    feed = {k: v.astype(np.float32) / 255.0 for k, v in images.items()}
    run = lambda f: {k: np.asarray(v) for k, v in jax.device_get(predict(f)).items()}  # noqa: E731
    if not ulp:
        return run(feed)
    return run(feed), run({k: np.nextafter(v, np.float32(2)) for k, v in feed.items()})


def _assert_parity(got: np.ndarray, want: np.ndarray, tol: float = ATOL) -> None:
    """Probabilities within `tol`; identical masks and COVID-19 decisions wherever the JAX
    probability is further than `tol` from the threshold (nearer, float32 rounding decides)."""
    assert got.shape == want.shape and got.dtype == np.float32
    err = float(np.abs(got - want).max())
    assert err <= tol, err
    clear = np.abs(want - THRESHOLD) > tol
    assert clear.mean() > 0.99
    assert np.array_equal((got >= THRESHOLD)[clear], (want >= THRESHOLD)[clear])  # masks
    top_got, top_want = got.max(axis=(1, 2, 3)), want.max(axis=(1, 2, 3))
    decided = np.abs(top_want - THRESHOLD) > tol
    assert np.array_equal((top_got >= THRESHOLD)[decided], (top_want >= THRESHOLD)[decided])


@pytest.mark.parametrize(
    "family, arch, encoder",
    [p if p in FAST else pytest.param(*p, marks=pytest.mark.slow) for p in PAIRS],
    ids=lambda v: str(v),
)
def test_every_registered_model_matches_the_jax_path(family, arch, encoder):
    loaded = _loaded(family, arch, encoder)
    model = serving_to_onnx(serving_model(loaded))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = {"infection": _images(2, SIZE, 0)}
    (got,) = session.run(None, images)
    want, nudged = (o["infection"] for o in _jax_path(loaded, images, ulp=True))
    noise = float(np.abs(nudged - want).max())
    _assert_parity(got, want, max(ATOL, NOISE_FACTOR * noise))
    # Masks are worth comparing only if both classes occur.
    assert 0.0 < float((want >= THRESHOLD).mean()) < 1.0
    # Constants are folded: no node computes on weights alone (no Sqrt of variances etc.),
    # and the batch is symbolic.
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_float16_graph_runs_in_onnx_runtime():
    """`to_float16`: weights and activations in float16, uint8 in and float32 out as before.
    Measured error against the float32 JAX path: max 4e-3 (mean 1e-3) here, up to 3e-2 on
    U-Net DenseNet-121 (docs/export.md#onnx)."""
    loaded = _loaded("smp", "fpn", "resnet18")
    model = to_float16(serving_to_onnx(serving_model(loaded)))
    assert not [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = {"infection": _images(2, SIZE, 0)}
    (got,) = session.run(None, images)
    want = _jax_path(loaded, images)["infection"]
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got - want)
    assert 0 < err.max() < 2e-2 and err.mean() < 5e-3  # float16 really computed, and close
    assert ((got >= THRESHOLD) == (want >= THRESHOLD)).mean() > 0.99


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny run directories: infection at 32x32, lung at 64x64."""
    return write_tiny_export_runs(tmp_path_factory.mktemp("onnx_runs"))


def _serve(mode: list[str], export_dir: Path, feed: dict[str, np.ndarray], tmp: Path) -> dict:
    np.savez(tmp / "in.npz", **feed)
    proc = subprocess.run(
        [
            sys.executable,
            str(CLIENT),
            *mode,
            str(export_dir),
            str(tmp / "in.npz"),
            str(tmp / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "served without jax or tensorflow" in proc.stdout
    return dict(np.load(tmp / "out.npz"))


def test_export_serves_any_batch_without_jax(tiny_runs, tmp_path):
    out = tmp_path / "onnx"
    manifest = export_run(tiny_runs["infection"], out, fmt="onnx", lung_run=tiny_runs["lung"])
    assert manifest["format"] == "onnx" and manifest["artifact"]["path"] == "model.onnx"
    assert manifest["batch"] == "dynamic" and manifest["inputs"][0]["shape"] == [None, 32, 32, 1]
    assert manifest["serving"]["output_tensors"] == {
        "infection": "infection_probability",
        "lung": "lung_probability",
    }
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["artifact"]["sha256"] == manifest["artifact"]["sha256"]

    loaded = load_models(tiny_runs)
    feed, want = {}, {}
    for n in (1, 3):  # one artifact, any batch
        images = {"infection": _images(n, 32, n), "lung": _images(n, 64, n + 10)}
        feed.update({f"{k}@{n}": v for k, v in images.items()})
        want.update({f"{k}@{n}": v for k, v in _jax_path(loaded, images).items()})
    for mode in ([], ["--runtime"]):  # plain onnxruntime, then `OnnxServing`
        got = _serve(mode, out, feed, tmp_path)
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape[0] == int(key.split("@")[1])
            _assert_parity(got[key], want[key])
    assert 0.0 < float((want["infection@3"] >= THRESHOLD).mean()) < 1.0


def test_fixed_batch_export_keeps_constants_small(tiny_runs, tmp_path):
    """A fixed batch gives static shapes; broadcast biases must still be stored once, not
    expanded to (batch, H, W, C)."""
    dynamic, fixed = tmp_path / "dynamic", tmp_path / "fixed"
    export_run(tiny_runs["lung"], dynamic, fmt="onnx")
    manifest = export_run(tiny_runs["lung"], fixed, fmt="onnx", batch=4, input_dtype="float32")
    assert manifest["batch"] == 4 and manifest["inputs"][0]["dtype"] == "float32"
    size = lambda d: (d / "model.onnx").stat().st_size  # noqa: E731
    assert size(fixed) < 1.2 * size(dynamic)
    images = _images(4, 64, 5)
    session = ort.InferenceSession(str(fixed / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"infection": images.astype(np.float32) / 255.0})
    loaded = load_models({"infection": tiny_runs["lung"]})
    _assert_parity(got, _jax_path(loaded, {"infection": images})["infection"])


def test_runtime_module_imports_without_jax():
    code = (
        "import sys, qatacov_jax.export.onnx_runtime, qatacov_jax.export\n"
        "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unsupported_primitive_is_named():
    closed = jax.make_jaxpr(lambda x: jnp.sort(x, axis=-1))(jnp.zeros((2, 5), jnp.float32))
    with pytest.raises(UnsupportedError, match="'sort'"):
        jaxpr_to_onnx(closed, ["x"], ["y"], OPS)


def test_cli_writes_onnx_and_refuses_bfloat16(tiny_runs, tmp_path, capsys, monkeypatch):
    run = tiny_runs["infection"]
    assert export_cli.main([str(run), "--format", "onnx", "--out", str(tmp_path / "a")]) == 0
    onnx.checker.check_model(str(tmp_path / "a" / "model.onnx"))
    capsys.readouterr()
    code = export_cli.main(
        [str(run), "--format", "onnx", "--dtype", "bfloat16", "--out", str(tmp_path / "b")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "exports float32 models" in err and len(err.splitlines()) == 1
    # Without the onnx package: refused with the install command, nothing written.
    monkeypatch.setattr(artifact.importlib.util, "find_spec", lambda name: None)
    code = export_cli.main([str(run), "--format", "onnx", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'qatacov-jax[onnx]'" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
