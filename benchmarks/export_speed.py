"""Exported artifacts vs the JAX inference path, same machine, same run, interleaved: CPU
ms/sample of each.

    .venv/bin/python benchmarks/export_speed.py --arch unet --encoder densenet121 \
        --image-size 224 --batch-size 8 --rounds 10 \
        --json benchmarks/results/export_speed_cpu.json \
        --markdown benchmarks/results/export_speed_cpu.md

Timed, each on the same uint8 batch `(B, H, W, 1)` and each returning NumPy probabilities:

* `jax`: the inference path of scripts/infer.py (`inference.make_predict_fn`: BatchNorm
  folded, preprocessing and sigmoid inside, jitted over all local devices), fed `uint8 / 255`
  as `Predictor` feeds it;
* `stablehlo`: the `scripts/export.py --format stablehlo` artifact, reloaded with
  `jax.export.deserialize` and called under `jax.jit`;
* `savedmodel`: the `--format savedmodel` artifact loaded with `tf.saved_model.load`, its
  `serving_default` signature called (TensorFlow runs the embedded StableHLO through XLA).

Each round calls every runner once in turn, so load on this shared machine hits them alike;
the report gives medians (and p10-p90) per sample. The model is randomly initialised unless
`--run` names a trained run directory (timing does not depend on the weights). Export and
load/compile times are reported too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # before JAX starts its backend

import numpy as np  # noqa: E402

FORMATS = ("stablehlo", "savedmodel")


def loaded_models(args: argparse.Namespace, label: str = "random init") -> Any:
    """The models to time: a run directory's (`--run`), or a random-init `--arch`/`--encoder`
    at `--image-size` named `label` (benchmarks/serve_load.py uses it too)."""
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained run directory (default: random init)")
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each runner")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--markdown")
    args = p.parse_args(argv)
    if args.run is None and args.image_size % 32:
        p.error(f"--image-size must be a multiple of 32, got {args.image_size}.")
    if args.batch_size <= 0 or args.rounds <= 0:
        p.error("--batch-size and --rounds must be positive.")
    for path in (args.json, args.markdown):
        if path is not None and path.exists() and not args.force:
            p.error(f"{path} exists; pass --force to overwrite it or choose another path.")

    import jax
    import tensorflow as tf

    from qatacov_jax.benchmarking import timing
    from qatacov_jax.export import (
        SIGNATURE,
        load_stablehlo,
        serving_model,
        with_compute_dtype,
        write_artifact,
    )
    from qatacov_jax.inference.predictor import make_predict_fn
    from qatacov_jax.runtime.sharding import make_mesh

    loaded = loaded_models(args)
    serving = serving_model(loaded, dtype=args.dtype)
    (spec,) = serving.inputs
    x = np.random.default_rng(0).integers(
        0, 256, (args.batch_size, spec.height, spec.width, 1), dtype=np.uint8
    )
    info: dict[str, dict[str, Any]] = {}
    runners: dict[str, Any] = {}

    t0 = time.perf_counter()
    models = {
        k: with_compute_dtype(m, loaded.configs[k], args.dtype) for k, m in loaded.models.items()
    }
    predict = make_predict_fn(models, make_mesh(), preprocessing=loaded.preprocessing)
    feed = {"infection": x.astype(np.float32) / 255.0}
    jax.block_until_ready(predict(feed))
    runners["jax"] = lambda: np.asarray(predict(feed)["infection"])
    info["jax"] = {"compile_s": time.perf_counter() - t0}

    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            out = Path(tmp) / fmt
            t0 = time.perf_counter()
            manifest = write_artifact(serving, out, fmt=fmt)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            if fmt == "stablehlo":
                call = jax.jit(load_stablehlo(out).call)
                images = {"infection": jax.device_put(x)}
                runners[fmt] = lambda c=call, i=images: np.asarray(c(i)["infection"])
            else:
                sig = tf.saved_model.load(str(out / manifest["artifact"]["path"])).signatures[
                    SIGNATURE
                ]
                xt = tf.constant(x)
                runners[fmt] = lambda s=sig, v=xt: s(infection=v)["infection"].numpy()
            runners[fmt]()  # load + compile + first run
            info[fmt] = {
                "export_s": export_s,
                "load_and_first_call_s": time.perf_counter() - t0,
                "artifact_mb": _dir_size(out) / 2**20,
            }
            print(f"exported {fmt} ({export_s:.0f} s)", file=sys.stderr, flush=True)

        outputs = {name: fn() for name, fn in runners.items()}
        samples: dict[str, list[float]] = {k: [] for k in runners}
        for r in range(args.rounds):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)

    ref = outputs["jax"]
    rows = []
    for name in runners:
        t = timing.Timing.from_samples(samples[name]).per_item(args.batch_size)
        rows.append(
            {
                "runner": name,
                "ms_per_sample": 1e3 * t.median,
                "timing": t.to_dict(),
                "max_abs_diff_vs_jax": float(np.abs(outputs[name].reshape(ref.shape) - ref).max()),
                **info[name],
            }
        )
    env = timing.environment()
    env["tensorflow"] = tf.__version__
    config = loaded.configs["infection"]
    report = {
        "environment": env,
        "model": f"{config.model.arch} {config.model.encoder}",
        "source": str(loaded.runs["infection"]),
        "image_size": [spec.height, spec.width],
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "rows": rows,
    }
    timing.publish(report, markdown(report), args.json, args.markdown)
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    h, w = report["image_size"]
    jax_ms = next(r["ms_per_sample"] for r in report["rows"] if r["runner"] == "jax")
    lines = [
        f"Exported artifacts vs the JAX inference path: {report['model']} "
        f"({report['source']}), {h}x{w}, batch {report['batch_size']}, {report['dtype']}, "
        f"uint8 input, preprocessing + sigmoid inside; JAX {env['jax']}, TensorFlow "
        f"{env['tensorflow']}; {env['device_count']} x {env['device_kind']} "
        f"({env['host_cpu']}, {env['host_cores']} cores), {report['rounds']} interleaved "
        f"rounds, {env['date']}. XLA_FLAGS: `{env['xla_flags'] or '(none)'}`.",
        "",
        "| runner | ms/sample (p10-p90) | vs jax | max abs diff vs jax | export s "
        "| load + first call s | size MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        t = r["timing"]
        lines.append(
            f"| {r['runner']} | {1e3 * t['median']:.1f} ({1e3 * t['p10']:.1f}-"
            f"{1e3 * t['p90']:.1f}) | {r['ms_per_sample'] / jax_ms:.2f}x | "
            f"{r['max_abs_diff_vs_jax']:.1e} | {_num(r.get('export_s'))} | "
            f"{_num(r.get('load_and_first_call_s', r.get('compile_s')))} | "
            f"{_num(r.get('artifact_mb'))} |"
        )
    lines.append("")
    lines.append(
        "`jax`: its load + first call column is the jit compile. ONNX is not exported (see "
        "docs/export.md)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
