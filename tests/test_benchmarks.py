"""Benchmark harness and inference speed-ups: correctness only (no timing assertions).

Covers `qatacov_jax.benchmarking.timing` (timing statistics, peaks),
`qatacov_jax.runtime.xla_flags`, `qatacov_jax.models.folding` (exact folding; the folded
forward on 1 and 8 devices gives the model's own output), bfloat16 within a documented
tolerance of float32,
`benchmarks/table8.py` end to end on 8 simulated devices (JSON schema), and the Keras graphs
`benchmarks/compare_keras.py` rebuilds (their parameter counts are Table 8's).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qatacov_jax.benchmarking import timing as benchmarking
from qatacov_jax.models import count_params, create_encoder, create_model
from qatacov_jax.models.folding import (
    FOLDABLE,
    count_folded,
    fold_batchnorm,
    fold_conv_bn,
    make_forward,
)
from qatacov_jax.models.layers import batch_norm, conv
from qatacov_jax.runtime import xla_flags
from qatacov_jax.runtime.sharding import data_sharding, make_mesh, replicated

ROOT = Path(__file__).resolve().parents[1]

# bfloat16 vs float32 sigmoid probabilities of the same weights (U-Net DenseNet-121, 64x64,
# BatchNorm statistics perturbed): bfloat16 keeps 8 bits of mantissa, so per-pixel
# probabilities move by up to a few hundredths. This is the tolerance docs/performance.md documents.
BF16_MAX_ABS_PROB = 0.05
BF16_MEAN_ABS_PROB = 0.01


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _perturb_batch_stats(model: nnx.Module, seed: int) -> None:
    """Non-trivial running statistics, so folding has something to fold."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.BatchNorm):
            c = var.mean.get_value().shape
            var.mean.set_value(jnp.asarray(rng.normal(0, 0.1, c), jnp.float32))
            var.var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32))
            if var.bias is not None:
                var.bias.set_value(jnp.asarray(rng.normal(0, 0.1, c), jnp.float32))


# ------------------------------------------------------------------ cheap unit tests


def test_timing_statistics():
    t = benchmarking.Timing.from_samples([3.0, 1.0, 2.0, 100.0, 2.0])
    assert t.median == 2.0 and t.minimum == 1.0 and t.repeats == 5
    assert t.p10 <= t.median <= t.p90
    per = t.per_item(4)
    assert per.median == 0.5 and per.repeats == 5
    with pytest.raises(ValueError, match="repeats"):
        benchmarking.Timing.from_samples([])


def test_time_calls_counts_repeats():
    calls = []
    t = benchmarking.time_calls(lambda: calls.append(1) or jnp.zeros(()), warmup=2, repeats=3)
    assert len(calls) == 5 and t.repeats == 3


def test_peak_flops_known_and_unknown():
    assert benchmarking.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert benchmarking.peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert benchmarking.peak_flops("cpu", "float32") is None


def test_environment_records_devices_and_versions():
    env = benchmarking.environment()
    for key in ("device_kind", "device_count", "jax", "jaxlib", "xla_flags", "date"):
        assert key in env
    assert env["device_count"] == len(jax.devices())


def test_xla_flags_user_setting_wins(monkeypatch):
    merged = xla_flags.merged("--a=1 --b=2", ("--a=9", "--c=3"))
    assert merged.split() == ["--a=1", "--b=2", "--c=3"]
    monkeypatch.setenv("XLA_FLAGS", "--x=1")
    monkeypatch.setenv("QATACOV_XLA_DEFAULTS", "0")
    assert xla_flags.apply_defaults(("--y=2",)) == "--x=1 --y=2"


def test_ynn_convolutions_are_switched_off_only_where_jaxlib_knows_the_flag(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 9))
    assert xla_flags.default_flags() == ()  # older XLA aborts on a flag it does not know
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 10))
    assert xla_flags.default_flags() == (xla_flags.YNN_CONV_OFF,)
    monkeypatch.delenv("QATACOV_XLA_DEFAULTS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--x=1")
    assert xla_flags.apply_defaults() == f"--x=1 {xla_flags.YNN_CONV_OFF}"
    # A user's own setting of the same flag wins.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    assert xla_flags.apply_defaults() == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_fold_conv_bn_is_exact():
    rngs = nnx.Rngs(0)
    c = conv(5, 7, 3, rngs=rngs, strides=2, padding=((1, 1), (1, 1)))
    for use_scale in (True, False):
        bn = batch_norm(7, epsilon=1e-3, rngs=rngs, use_scale=use_scale)
        rng = np.random.default_rng(1)
        bn.mean.set_value(jnp.asarray(rng.normal(0, 1, 7), jnp.float32))
        bn.var.set_value(jnp.asarray(rng.uniform(0.1, 2, 7), jnp.float32))
        if use_scale:
            bn.scale.set_value(jnp.asarray(rng.normal(1, 0.5, 7), jnp.float32))
        bn.bias.set_value(jnp.asarray(rng.normal(0, 1, 7), jnp.float32))
        bn.eval()
        x = jnp.asarray(rng.normal(size=(2, 9, 9, 5)), jnp.float32)
        folded = fold_conv_bn(c, bn)
        np.testing.assert_allclose(folded(x), bn(c(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "encoder, expected", [("densenet121", 1 + 58), ("inceptionv3", 94), ("resnet50", 1 + 2 * 16)]
)
def test_fold_tables_name_real_conv_bn_pairs(encoder, expected):
    enc = nnx.eval_shape(lambda: create_encoder(encoder, rngs=nnx.Rngs(0)))
    pairs = list(FOLDABLE[type(enc)](enc))
    assert len(pairs) == expected
    for conv_name, bn_name in pairs:
        assert isinstance(getattr(enc, conv_name), nnx.Conv), conv_name
        assert isinstance(getattr(enc, bn_name), nnx.BatchNorm), bn_name
        assert getattr(enc, conv_name).out_features == getattr(enc, bn_name).num_features


# ------------------------------------------------------------------ compiled checks


@pytest.mark.slow
def test_folded_forward_keeps_the_output_on_1_and_8_devices():
    model = create_model("unet", "densenet121", frozen=True, rngs=nnx.Rngs(0))
    _perturb_batch_stats(model, seed=0)
    model.eval()
    x = np.random.default_rng(0).standard_normal((8, 64, 64, 3), dtype=np.float32)
    ref_def, ref_state = nnx.split(model)
    # The graph as built (an eval-mode call would fold BatchNorm itself).
    ref = np.asarray(jax.jit(lambda s, v: nnx.merge(ref_def, s).unfolded(v))(ref_state, x))
    assert np.abs(ref).max() > 1e-3  # a non-degenerate output

    folded = fold_batchnorm(model)
    assert count_folded(folded) == 59 + 10  # encoder pairs + 5 decoder blocks x 2
    fwd, state = make_forward(model, fold=True)
    np.testing.assert_allclose(jax.jit(fwd)(state, x), ref, rtol=1e-4, atol=1e-4)

    mesh = make_mesh(8)
    fwd8, state8 = make_forward(model, fold=True)
    x16 = np.concatenate([x, x[::-1]])
    ref16 = np.concatenate([ref, ref[::-1]])
    out = jax.jit(
        fwd8,
        in_shardings=(replicated(mesh), data_sharding(mesh)),
        out_shardings=data_sharding(mesh),
    )(jax.device_put(state8, replicated(mesh)), jax.device_put(x16, data_sharding(mesh)))
    np.testing.assert_allclose(out, ref16, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bfloat16_within_documented_tolerance_of_float32():
    f32 = create_model("unet", "densenet121", rngs=nnx.Rngs(0))
    _perturb_batch_stats(f32, seed=1)
    bf16 = create_model("unet", "densenet121", rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    nnx.update(bf16, nnx.state(f32))
    x = np.random.default_rng(2).standard_normal((2, 64, 64, 3), dtype=np.float32)
    probs = []
    for m in (f32, bf16):
        fwd, state = make_forward(m, fold=True)
        probs.append(np.asarray(jax.nn.sigmoid(jax.jit(fwd)(state, x))))
    assert probs[1].dtype == np.float32
    diff = np.abs(probs[0] - probs[1])
    assert diff.max() <= BF16_MAX_ABS_PROB, diff.max()
    assert diff.mean() <= BF16_MEAN_ABS_PROB, diff.mean()


@pytest.mark.slow
def test_table8_timing_run_on_8_devices(tmp_path):
    table8 = _load_script("table8")
    out_json, out_md = tmp_path / "t8.json", tmp_path / "t8.md"
    argv = [
        "--configs", "fpn:resnet50:trainable", "--image-size", "64", "--devices", "8",
        "--batch-sizes", "8", "--repeats", "1", "--e2e-images", "8",
        "--e2e-file-size", "96", "--train-configs",  # none: 8-device training is in
        # test_training_steps.py, and its compile is the slowest thing here
        "--json", str(out_json), "--markdown", str(out_md),
    ]  # fmt: skip
    assert table8.main(argv) == 0
    report = json.loads(out_json.read_text())
    env = report["environment"]
    assert env["device_count"] == 8 and env["jax"] == jax.__version__
    (rec,) = report["records"]
    counts = count_params(nnx.eval_shape(lambda: create_model("fpn", "resnet50", rngs=nnx.Rngs(0))))
    assert (rec["trainable"], rec["non_trainable"]) == tuple(counts)
    inf = report["inference"][rec["inference_graph"]]["batches"]
    assert [b["batch_size"] for b in inf] == [8]
    for b in inf:
        assert b["ms_per_sample"] > 0 and b["compile_s"] > 0 and b["flops_per_sample"] > 0
        assert b["timing"]["repeats"] == 1
    assert rec["training_graph"] is None and report["training"] == {}
    assert report["end_to_end"]["images"] == 8
    assert f"| fpn | resnet50 | no | {counts.trainable:,} |" in out_md.read_text()
    # Outputs are never silently replaced.
    with pytest.raises(SystemExit):
        table8.main(argv)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unetpp", "dla"])
def test_rebuilt_keras_nested_graphs_have_table8_counts(arch):
    compare = _load_script("compare_keras")  # sets SM_FRAMEWORK before the import below
    sm, _ = compare._import_keras()
    from qatacov_jax.benchmarking import paper

    model = compare.keras_model(sm, arch, "densenet121", 224)
    assert compare.keras_param_counts(model) == paper.EXACT_COUNTS[(arch, "densenet121", False)]


def test_compare_keras_report_rows():
    compare = _load_script("compare_keras")
    timing = {"median": 0.05, "p10": 0.04, "p90": 0.06}
    env = dict.fromkeys(("jax", "tensorflow", "segmentation_models", "device_kind"), "x")
    env.update(device_count=1, host_cpu="cpu", host_cores=2, date="today", xla_flags="")
    row = {
        "arch": "unet", "encoder": "densenet121", "keras_timing": timing,
        "ours_timing": {**timing, "median": 0.04}, "keras_over_ours": 1.25,
    }  # fmt: skip
    report = {
        "environment": env, "image_size": 224, "batch_size": 8, "rounds": 3,
        "bn_folded": True, "rows": [row],
    }  # fmt: skip
    table = [line for line in compare.markdown(report).splitlines() if line.startswith("|")]
    assert all(line.count("|") == 5 for line in table), table
    assert table[2] == "| unet densenet121 | 50.0 (40.0-60.0) | 40.0 (40.0-60.0) | 1.25x |"


def test_input_pipeline_markdown_rows():
    pipeline = _load_script("input_pipeline")
    info = {
        "image_size": 224, "batch_size": 32, "augment": "all", "num_threads": 4,
        "cpu_count": 2, "load_average": [1.0, 1.5, 2.0], "command": "python x.py",
        "results": [
            {"num_workers": 0, "images_per_s": 300.04, "images_per_cpu_second": 190.5},
            {"num_workers": 1, "images_per_s": 280.0, "images_per_cpu_second": None},
        ],
    }  # fmt: skip
    table = [line for line in pipeline.markdown(info).splitlines() if line.startswith("|")]
    assert table[2:] == ["| 0 | 300.0 | 190.5 |", "| 1 | 280.0 | - |"]


@pytest.mark.parametrize("variant", ["winograd_f2", "winograd_f4", "gemm_w3"])
def test_conv_kernels_variants_compute_the_direct_conv(variant):
    # The forms benchmarks/conv_kernels.py times against XLA's conv must be the same conv,
    # borders included (tiles of 2 and 4 on a 12x12 map), or the comparison means nothing.
    kernels = _load_script("conv_kernels")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 5), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 5, 4), dtype=np.float32))
    expected = kernels.conv_xla(x, k)
    got = jax.jit(kernels.VARIANTS[variant])(x, k)
    np.testing.assert_allclose(got, expected, atol=1e-4 * float(jnp.abs(expected).max()))


def test_conv_kernels_runs_end_to_end_and_reports_both_tables(tmp_path, monkeypatch):
    kernels = _load_script("conv_kernels")
    monkeypatch.setattr(kernels, "SHAPES", (("tiny", 1, 8, 8, 4, 4),))
    monkeypatch.setattr(kernels, "BACKWARD_SHAPES", (("tiny 1x1", 1, 8, 8, 4, 4, 1),))
    md = tmp_path / "k.md"
    assert (
        kernels.main(["--rounds", "1", "--json", str(tmp_path / "k.json"), "--markdown", str(md)])
        == 0
    )
    report = json.loads((tmp_path / "k.json").read_text())
    assert set(report["rows"][0]["ms"]) >= {"xla", "winograd_f4", "tf_onednn"}
    assert set(report["backward"][0]["ms"]) == {"xla dx", "xla dk", "tf dx", "tf dk"}
    text = md.read_text()
    assert "| tiny (batch 1) |" in text and "| tiny 1x1 (1x1, batch 1) |" in text


@pytest.mark.parametrize(
    "script, argv, option, message",
    [
        ("table8", ["--e2e-images", "-1"], "--e2e-images", "must be 0 (off) or a positive integer"),
        ("table8", ["--repeats", "0"], "--repeats", "must be a positive integer"),
        ("compare_keras", ["--image-size", "100"], "--image-size", "must be a multiple of 32"),
        ("compare_keras", ["--pause", "-1"], "--pause", "must be 0 or more seconds"),
        ("conv_kernels", ["--rounds", "0"], "--rounds", "must be a positive integer"),
        ("conv_kernels", ["--batch-size", "0"], "--batch-size", "must be a positive integer"),
        ("annotation_sim", ["--folds", "1"], "--folds", "must be at least 2"),
        ("annotation_sim", ["--size", "30"], "--size", "must be a multiple of 4"),
        ("onnx_precision", ["--run", "nowhere"], "--run", "is not a run directory"),
        ("xla_defaults", ["--rounds", "0"], "--rounds", "must be a positive integer"),
        ("xla_defaults", ["--image-size", "100"], "--image-size", "must be a multiple of 32"),
    ],
)
def test_bad_option_is_refused_naming_it(script, argv, option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_script(script).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and message in err


def test_onnx_precision_compares_both_exports_with_the_run(tmp_path):
    """benchmarks/onnx_precision.py end to end on a tiny run: float32 within the ONNX
    parity bound of JAX, float16 measurably further, both written as JSON and Markdown."""
    from train_utils import write_tiny_run

    run = write_tiny_run(tmp_path / "run", image_size=32, seed=3)
    out_json, out_md = tmp_path / "p.json", tmp_path / "p.md"
    argv = ["--run", str(run), "--num-images", "3", "--image-size", "64"]
    assert (
        _load_script("onnx_precision").main(
            [*argv, "--json", str(out_json), "--markdown", str(out_md)]
        )
        == 0
    )
    results = json.loads(out_json.read_text())["results"]
    f32, f16 = results["onnx float32"]["infection"], results["onnx float16"]["infection"]
    assert f32["images"] == f16["images"] == 3
    assert f32["max_abs_diff"] < 1e-4 < f16["max_abs_diff"] < 1e-2
    assert "| onnx float16 | infection |" in out_md.read_text()
