"""Exported artifacts and the original Keras models vs the JAX inference path, same machine,
same run, interleaved: CPU ms/sample of each.

    .venv/bin/python benchmarks/export_speed.py --arch unet,unetpp,dla,fpn \
        --encoder densenet121 --image-size 224 --batch-size 1,8 --formats onnx --keras \
        --rounds 5 --json benchmarks/results/export_speed_onnx_cpu.json \
        --markdown benchmarks/results/export_speed_onnx_cpu.md --force

Timed, each on the same uint8 batch `(B, H, W, 1)` and each returning NumPy probabilities:

* `jax`: the inference path of scripts/infer.py (`inference.make_predict_fn`: BatchNorm
  folded, preprocessing and sigmoid inside, jitted over all local devices), fed `uint8 / 255`
  as `Predictor` feeds it;
* `stablehlo`: the `scripts/export.py --format stablehlo` artifact, reloaded with
  `jax.export.deserialize` and called under `jax.jit`;
* `savedmodel`: the `--format savedmodel` artifact loaded with `tf.saved_model.load`, its
  `serving_default` signature called (TensorFlow runs the embedded StableHLO through XLA);
* `onnx`: the `--format onnx` artifact in an `onnxruntime.InferenceSession` (CPU execution
  provider, all graph optimizations, default threads), through `export.onnx_runtime`;
* `onnx_float16`: the same with `--dtype float16` (a float16 graph, uint8 in and float32
  out); its "max abs diff vs jax" is the float16 error on these random inputs;
* `keras` (`--keras`): the original Keras model of the same decoder and encoder, built by
  benchmarks/compare_keras.py (`keras_model`: segmentation_models 1.0.1 on tf-keras, random
  weights) and called as compare_keras.py times it, `tf.function` of `model(x,
  training=False)`. It has no preprocessing inside, so it is fed the same batch as float32
  in [0, 1] repeated to 3 channels, and returns the sigmoid probabilities. Its weights are
  not ours, so it has no "max abs diff vs jax". Needs the test extra's Keras stack.

`--arch` and `--batch-size` take comma-separated lists: every (model, batch) case is timed
on its own, all runners of a case interleaved. Each round calls every runner once in turn,
so load on this shared machine hits them alike; the report gives medians (and p10-p90) per
sample. The model is randomly initialised unless `--run` names a trained run directory
(timing does not depend on the weights). Export and load/compile times are reported too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # before JAX starts its backend

import numpy as np  # noqa: E402

FORMATS = ("stablehlo", "savedmodel", "onnx", "onnx_float16")


def loaded_models(args: argparse.Namespace, label: str = "random init") -> Any:
    """The models to time: a run directory's (`--run`), or a random-init `--arch`/`--encoder`
    at `--image-size` named `label` (benchmarks/serve_load.py uses it too; here `args.arch`
    is one name of the `--arch` list)."""
    from qatacov_jax.inference.runs import LoadedModels, load_models
    from qatacov_jax.training.factory import build_model

    if args.run is not None:
        return load_models({"infection": args.run})
    from configs import default

    config = default.variant(args.arch, args.encoder)
    config.data.image_size = args.image_size
    model, prep = build_model(config, seed=0, load_weights=False)
    model.eval()
    return LoadedModels(
        {"infection": model},
        {"infection": config},
        {"infection": prep},
        {"infection": args.image_size},
        {"infection": Path(label)},
    )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained run directory (default: random init)")
    p.add_argument("--arch", default="unet", help="decoder(s), comma-separated")
    p.add_argument("--encoder", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", default="8", help="batch size(s), comma-separated")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--formats", default=",".join(FORMATS), help="artifacts to time beside jax")
    p.add_argument(
        "--keras", action="store_true",
        help="also time the original Keras model (benchmarks/compare_keras.py's graph)",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each runner")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--markdown")
    p.add_argument("--note", default="", help="a sentence for the report (e.g. machine load)")
    args = p.parse_args(argv)
    args.archs = [a for a in args.arch.split(",") if a]
    args.formats = [f for f in args.formats.split(",") if f]
    try:
        args.batch_sizes = _ints(args.batch_size)
    except ValueError:
        p.error(f"--batch-size must be comma-separated integers, got {args.batch_size!r}.")
    if args.run is None and args.image_size % 32:
        p.error(f"--image-size must be a multiple of 32, got {args.image_size}.")
    if not args.batch_sizes or min(args.batch_sizes) <= 0 or args.rounds <= 0:
        p.error("--batch-size and --rounds must be positive.")
    if bad := [f for f in args.formats if f not in FORMATS]:
        p.error(f"--formats: unknown {bad}; choose from {list(FORMATS)}.")
    if any(f.startswith("onnx") for f in args.formats) and args.dtype != "float32":
        p.error("--formats onnx / onnx_float16 convert the float32 model; leave --dtype float32.")
    if args.keras and args.dtype != "float32":
        p.error("--keras times the float32 Keras model only.")
    for path in (args.json, args.markdown):
        if path is not None and path.exists() and not args.force:
            p.error(f"{path} exists; pass --force to overwrite it or choose another path.")
    return args


def _artifact_runner(fmt: str, out: Path, manifest: dict[str, Any], x: np.ndarray) -> Any:
    """A no-argument callable running the artifact in `out` on `x` -> NumPy probabilities."""
    if fmt == "stablehlo":
        import jax

        from qatacov_jax.export import load_stablehlo

        call = jax.jit(load_stablehlo(out).call)
        images = {"infection": jax.device_put(x)}
        return lambda: np.asarray(call(images)["infection"])
    if fmt == "savedmodel":
        import tensorflow as tf

        from qatacov_jax.export import SIGNATURE

        sig = tf.saved_model.load(str(out / manifest["artifact"]["path"])).signatures[SIGNATURE]
        xt = tf.constant(x)
        return lambda: sig(infection=xt)["infection"].numpy()
    from qatacov_jax.export.onnx_runtime import OnnxServing

    model = OnnxServing.load(out)
    return lambda: model.predict({"infection": x})["infection"]


def keras_builder(args: argparse.Namespace) -> Any:
    """`build(config, image_size)` -> the original Keras model of that config (random weights).

    Imports the Keras stack through benchmarks/compare_keras.py, whose import sets
    `SM_FRAMEWORK=tf.keras` and `TF_USE_LEGACY_KERAS=1`: both are read when segmentation_models
    and TensorFlow load, so this must run before any runner imports TensorFlow. It stops with
    compare_keras.py's message if the stack is missing, before minutes of exports are spent.
    """
    from benchmarks.compare_keras import ENCODERS, _import_keras, keras_model

    sm, _ = _import_keras()

    def build(config: Any, size: int | tuple[int, int]) -> Any:
        # CheXNet is DenseNet-121 with other weights; the Keras graph is the same.
        encoder = {"chexnet": "densenet121"}.get(config.model.encoder, config.model.encoder)
        if encoder not in ENCODERS:
            raise SystemExit(f"--keras: no Keras model of encoder {encoder!r}; has {ENCODERS}.")
        h, w = (size, size) if isinstance(size, int) else size
        if h != w:
            raise SystemExit(f"--keras builds square models only; this run's input is {h}x{w}.")
        return keras_model(sm, config.model.arch, encoder, h)

    return build


def _keras_runner(km: Any, x: np.ndarray) -> Any:
    """A no-argument callable running Keras `km` on uint8 `x` -> NumPy probabilities.

    The same call as compare_keras.py times (`tf.function`, inference mode). The Keras model
    has no preprocessing inside: it gets `x / 255` as float32 on 3 channels, built once here,
    outside the timed call, like the other runners' inputs.
    """
    import tensorflow as tf

    xt = tf.constant(np.repeat(x.astype(np.float32) / 255.0, 3, axis=-1))
    call = tf.function(lambda v: km(v, training=False))
    return lambda: call(xt).numpy()


def measure_case(
    args: argparse.Namespace, loaded: Any, batch: int, keras: Any = None
) -> dict[str, Any]:
    """Times the JAX path, every `--formats` artifact of `loaded` and (given) the Keras model
    `keras` at `batch`, interleaved."""
    import jax

    from qatacov_jax.benchmarking import timing
    from qatacov_jax.export import serving_model, with_compute_dtype, write_artifact
    from qatacov_jax.inference.predictor import make_predict_fn
    from qatacov_jax.runtime.sharding import make_mesh

    serving = serving_model(loaded, dtype=args.dtype)
    (spec,) = serving.inputs
    x = np.random.default_rng(0).integers(
        0, 256, (batch, spec.height, spec.width, 1), dtype=np.uint8
    )
    info: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    models = {
        k: with_compute_dtype(m, loaded.configs[k], args.dtype) for k, m in loaded.models.items()
    }
    predict = make_predict_fn(models, make_mesh(), preprocessing=loaded.preprocessing)
    feed = {"infection": x.astype(np.float32) / 255.0}
    jax.block_until_ready(predict(feed))
    runners: dict[str, Any] = {"jax": lambda: np.asarray(predict(feed)["infection"])}
    info["jax"] = {"compile_s": time.perf_counter() - t0}

    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            out = Path(tmp) / fmt
            t0 = time.perf_counter()
            half = fmt == "onnx_float16"
            manifest = write_artifact(serving, out, fmt="onnx" if half else fmt, float16=half)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            runners[fmt] = _artifact_runner(fmt, out, manifest, x)
            runners[fmt]()  # load + compile + first run
            info[fmt] = {
                "export_s": export_s,
                "load_and_first_call_s": time.perf_counter() - t0,
                "artifact_mb": _dir_size(out) / 2**20,
            }
            print(f"exported {fmt} ({export_s:.0f} s)", file=sys.stderr, flush=True)
        if keras is not None:
            t0 = time.perf_counter()
            runners["keras"] = _keras_runner(keras, x)
            runners["keras"]()  # trace + first run
            info["keras"] = {"load_and_first_call_s": time.perf_counter() - t0}

        outputs = {name: fn() for name, fn in runners.items()}
        samples: dict[str, list[float]] = {k: [] for k in runners}
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
            load.append(os.getloadavg()[0])
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)

    ref = outputs["jax"]
    rows = []
    for name in runners:
        t = timing.Timing.from_samples(samples[name]).per_item(batch)
        rows.append(
            {
                "runner": name,
                "ms_per_sample": 1e3 * t.median,
                "timing": t.to_dict(),
                # The Keras model's weights are its own: no difference to compare.
                "max_abs_diff_vs_jax": None
                if name == "keras"
                else float(np.abs(outputs[name].reshape(ref.shape) - ref).max()),
                **info[name],
            }
        )
    config = loaded.configs["infection"]
    return {
        "model": f"{config.model.arch} {config.model.encoder}",
        "source": str(loaded.runs["infection"]),
        "image_size": [spec.height, spec.width],
        "batch_size": batch,
        # 1-minute load average of the host before and after each round (2 cores here).
        "load_average_1m": load,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    build_keras = keras_builder(args) if args.keras else None  # before TensorFlow loads
    from qatacov_jax.benchmarking import timing

    cases = []
    for arch in args.archs if args.run is None else [None]:
        one = argparse.Namespace(**{**vars(args), "arch": arch})
        loaded = loaded_models(one)
        keras = None
        if build_keras is not None:
            keras = build_keras(loaded.configs["infection"], loaded.sizes["infection"])
        for batch in args.batch_sizes:
            print(f"{arch or args.run} batch {batch}", file=sys.stderr, flush=True)
            cases.append(measure_case(args, loaded, batch, keras))
    env = timing.environment()
    for dist, key in (
        ("tensorflow-cpu", "tensorflow"),
        ("onnxruntime", "onnxruntime"),
        ("segmentation-models", "segmentation_models"),
    ):
        env[key] = _version(dist)
    env["onnxruntime_threads"] = "default (one per physical core)"
    report = {
        "environment": env,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "formats": args.formats,
        "keras": args.keras,
        "note": args.note,
        "cases": cases,
    }
    timing.publish(report, markdown(report), args.json, args.markdown)
    return 0


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    from qatacov_jax.benchmarking import timing

    env = report["environment"]
    keras = report.get("keras", False)
    lines = [
        f"Exported artifacts{' and the original Keras models' if keras else ''} vs the JAX "
        f"inference path, {report['dtype']}; JAX {env['jax']}, TensorFlow {env['tensorflow']}, "
        f"ONNX Runtime {env['onnxruntime']}"
        + (f", segmentation_models {env.get('segmentation_models')}" if keras else "")
        + f"; {env['device_count']} x {env['device_kind']} ({env['host_cpu']}, "
        f"{env['host_cores']} cores), {report['rounds']} interleaved rounds, {env['date']}. "
        f"XLA_FLAGS: `{env['xla_flags'] or '(none)'}`.",
        "",
        "| model | size | batch | runner | ms/sample (p10-p90) | vs jax "
        + ("| vs keras " if keras else "")
        + "| max abs diff vs jax | export s | load + first call s | size MB |",
        "|---|---|---:|---|---:|---:|" + ("---:|" if keras else "") + "---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        h, w = case["image_size"]
        ms = {r["runner"]: r["ms_per_sample"] for r in case["rows"]}
        for r in case["rows"]:
            diff = r["max_abs_diff_vs_jax"]
            lines.append(
                f"| {case['model']} ({case['source']}) | {h}x{w} | {case['batch_size']} | "
                f"{r['runner']} | {timing.ms_with_spread(r['timing'])} | "
                f"{r['ms_per_sample'] / ms['jax']:.2f}x | "
                + (f"{r['ms_per_sample'] / ms['keras']:.2f}x | " if keras else "")
                + f"{'-' if diff is None else f'{diff:.1e}'} | {_num(r.get('export_s'))} | "
                f"{_num(r.get('load_and_first_call_s', r.get('compile_s')))} | "
                f"{_num(r.get('artifact_mb'))} |"
            )
    lines += [
        "",
        "`jax` and the exported artifacts take the uint8 batch and run the preprocessing and "
        "the sigmoid inside. `jax`: its load + first call column is the jit compile. `vs jax` "
        "< 1 is faster than the JAX path of the same case.",
    ]
    if keras:
        lines[-1] += (
            " `keras`: the original Keras model (benchmarks/compare_keras.py's graph, random "
            "weights, `tf.function` in inference mode) has no preprocessing inside, so it gets "
            "the same batch as float32 in [0, 1] on 3 channels; its weights are not ours, so "
            "there is no difference to show; its load + first call is the trace and first run "
            "of a model already built. `vs keras` < 1 is faster than the Keras original."
        )
    lines += ["", summary(report)]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    """`median m (range a-b)` of ratios."""
    return f"median {np.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f}x)"


def summary(report: dict[str, Any]) -> str:
    """The closing paragraph: the fastest runner of each case and by how much, the ratios to
    the Keras original over all cases, and the host's load during the timed rounds."""
    per_case, wins, vs_keras = [], [], {}
    for case in report["cases"]:
        ms = {r["runner"]: r["ms_per_sample"] for r in case["rows"]}
        best = min(ms, key=ms.get)
        wins.append(best)
        others = ", ".join(f"{k} {v / ms[best]:.2f}x" for k, v in ms.items() if k != best)
        per_case.append(f"{case['model']} batch {case['batch_size']}: {best} ({others})")
        if "keras" in ms:
            for k, v in ms.items():
                if k != "keras":
                    vs_keras.setdefault(k, []).append(v / ms["keras"])
    text = (
        "Fastest per case (the other runners' median time per image as a multiple of the "
        f"fastest's): {'; '.join(per_case)}. Fastest in {len(wins)} cases: "
        + ", ".join(f"{k} {wins.count(k)}" for k in sorted(set(wins), key=wins.count, reverse=True))
        + "."
    )
    for k, ratios in vs_keras.items():
        fast = sum(r <= 0.70 for r in ratios)
        text += (
            f" {k} / keras time per image: {_spread(ratios)} over {len(ratios)} cases; "
            f"{k} took 0.70x or less of Keras' time (30% or more faster) in {fast} of them."
        )
    load = [v for case in report["cases"] for v in case.get("load_average_1m", [])]
    if load:
        cores = report["environment"]["host_cores"]
        text += (
            f" Host 1-minute load average during the timed rounds: {min(load):.1f}-"
            f"{max(load):.1f} (median {np.median(load):.1f}) on {cores} cores, this "
            "benchmark's own threads included."
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
