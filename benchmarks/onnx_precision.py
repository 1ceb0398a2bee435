"""How far an ONNX export's answers are from the trained run's, float32 and float16, on X-rays.

    .venv/bin/python benchmarks/onnx_precision.py --run runs/quickstart/train \
        --json benchmarks/results/onnx_precision_cpu.json \
        --markdown benchmarks/results/onnx_precision_cpu.md

The run (`--run`, a trained run directory; `--lung-run` adds a lung model to the same export)
is exported with `scripts/export.py`'s code as `--format onnx` and as `--format onnx --dtype
float16`; every X-ray (`--xrays DIR`, or `--num-images` synthetic ones at `--image-size` from
`data.synthetic`, seed 0) then goes through what `scripts/infer.py` runs: the JAX predictor of
the run (`--checkpoint`) and the export's ONNX Runtime predictor (`--model`), both resizing in
and out the same way (`inference.batching`). Per export and model, over all pixels of all
maps at the images' resolution: the largest and mean absolute probability difference to JAX,
the share of mask pixels that differ at the threshold, and the images whose COVID-19 decision
differs. Accuracy only, no timing (benchmarks/export_speed.py times the same exports).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # before JAX starts its backend

import numpy as np  # noqa: E402

EXPORTS = {"onnx float32": "float32", "onnx float16": "float16"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="trained run directory (infection)")
    p.add_argument("--lung-run", type=Path, help="trained lung run, exported in the same graph")
    p.add_argument("--xrays", type=Path, help="folder of X-rays (default: synthetic ones)")
    p.add_argument("--num-images", type=int, default=32, help="synthetic X-rays to generate")
    p.add_argument("--image-size", type=int, default=256, help="side of the synthetic X-rays")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    for flag, path in (("--run", args.run), ("--lung-run", args.lung_run)):
        if path is not None and not (path / "config.json").is_file():
            p.error(f"{flag} {path} is not a run directory (no config.json).")
    if args.xrays is not None and not args.xrays.is_dir():
        p.error(f"--xrays {args.xrays} is not a folder.")
    if args.num_images <= 0 or args.image_size < 32:
        p.error("--num-images must be positive and --image-size at least 32.")
    return args


def _xrays(args: argparse.Namespace) -> tuple[list[np.ndarray], str]:
    """(H, W) float [0, 1] X-rays, and what they are."""
    if args.xrays is not None:
        from qatacov_jax.data import imageio
        from qatacov_jax.inference.files import collect_inputs

        items, _ = collect_inputs([args.xrays])
        return [imageio.read_xray(it.path) for it in items], f"{len(items)} X-rays of {args.xrays}"
    from qatacov_jax.data.synthetic import generate

    images = [generate(0, i, args.image_size).image / 255.0 for i in range(args.num_images)]
    what = f"{args.num_images} synthetic X-rays (data.synthetic, seed 0) of {args.image_size} px"
    return images, what


def _compare(got: list[dict], want: list[dict], name: str, threshold: float) -> dict[str, Any]:
    """Differences of one model's maps (`name`) between two predictors' outputs."""
    diffs = [np.abs(g[name] - w[name]) for g, w in zip(got, want, strict=True)]
    flips = [
        ((g[name] >= threshold) != (w[name] >= threshold)) for g, w in zip(got, want, strict=True)
    ]
    key = f"{name}_grid_max"
    decisions = sum(
        (g[key] >= threshold) != (w[key] >= threshold) for g, w in zip(got, want, strict=True)
    )
    pixels = sum(d.size for d in diffs)
    return {
        "max_abs_diff": float(max(d.max() for d in diffs)),
        "mean_abs_diff": float(sum(d.sum() for d in diffs) / pixels),
        "mask_pixels_differing": float(sum(f.sum() for f in flips) / pixels),
        "decisions_differing": int(decisions) if name == "infection" else None,
        "images": len(diffs),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from qatacov_jax.export import export_run
    from qatacov_jax.export.onnx_runtime import export_source
    from qatacov_jax.inference.runs import run_source

    images, what = _xrays(args)
    reference = run_source(args.run, args.lung_run).load(None).predict_batch(images)
    names = ["infection"] + (["lung"] if args.lung_run else [])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, dtype in EXPORTS.items():
            out = Path(tmp) / dtype
            export_run(args.run, out, fmt="onnx", lung_run=args.lung_run, dtype=dtype)
            got = export_source(out).load(None).predict_batch(images)
            results[label] = {n: _compare(got, reference, n, args.threshold) for n in names}
    return {"run": str(args.run), "lung_run": args.lung_run and str(args.lung_run),
            "images": what, "threshold": args.threshold, "results": results}  # fmt: skip


def markdown(report: dict[str, Any], environment: dict[str, Any]) -> str:
    lines = [
        "# ONNX export vs the trained run on JAX (benchmarks/onnx_precision.py)",
        "",
        f"Run: `{report['run']}`; {report['images']}; threshold {report['threshold']}; "
        f"{environment.get('host_cpu', '')}, {environment.get('date', '')}. Maps compared at each "
        "image's resolution, as scripts/infer.py writes them.",
        "",
        "| export | model | max abs diff | mean abs diff | mask pixels differing | "
        "decisions differing |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, models in report["results"].items():
        for name, r in models.items():
            dec = (
                "-"
                if r["decisions_differing"] is None
                else f"{r['decisions_differing']} of {r['images']}"
            )
            lines.append(
                f"| {label} | {name} | {r['max_abs_diff']:.1e} | {r['mean_abs_diff']:.1e} | "
                f"{100 * r['mask_pixels_differing']:.4f}% | {dec} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from qatacov_jax.benchmarking import timing

    args = _parse(argv)
    report = measure(args)
    env = timing.environment()
    report["environment"] = env
    timing.publish(report, markdown(report, env), args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
