"""Do the XLA flags `import qatacov_jax` sets (`runtime.xla_flags`) still pay on this CPU?

    .venv/bin/python benchmarks/xla_defaults.py --arch unet,unetpp,dla,fpn --rounds 3 \
        --json benchmarks/results/xla_defaults_cpu.json \
        --markdown benchmarks/results/xla_defaults_cpu.md

XLA reads its flags once per process, so each setting runs in its own child process:
`defaults` (what every script and `import qatacov_jax` use: YNNPACK convolutions off,
`xla_flags.YNN_CONV_OFF`) and `jaxlib` (`QATACOV_XLA_DEFAULTS=0`: jaxlib's own choice, which
hands convolutions to YNNPACK). Rounds alternate the two settings (defaults, jaxlib,
defaults, ...), so drifting load hits both alike; each child times the inference of every
`--arch` on DenseNet-121 (random init, BatchNorm folded, jitted: `benchmarking.timing.
measure_inference`) at `--image-size` and `--batch-size`. Reported: per model the median over
rounds of each setting's ms/image, and jaxlib / defaults (> 1: the defaults are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

SETTINGS = {"defaults": "1", "jaxlib": "0"}  # -> QATACOV_XLA_DEFAULTS


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="unet,fpn", help="decoders on DenseNet-121, comma-separated")
    p.add_argument("--encoder", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="child processes per setting")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per model and child")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--note", default="", help="a sentence for the report (machine, load)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.archs = [a for a in args.arch.split(",") if a]
    for name in ("rounds", "repeats", "batch_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.image_size % 32:
        p.error(f"--image-size must be a multiple of 32, got {args.image_size}")
    return args


def child(args: argparse.Namespace) -> dict[str, Any]:
    """In this process (its flags fixed at start): ms/image of every arch, and the flags."""
    from qatacov_jax.runtime import xla_flags

    xla_flags.apply_defaults()  # a no-op under QATACOV_XLA_DEFAULTS=0
    from configs import default
    from qatacov_jax.benchmarking import timing
    from qatacov_jax.runtime.sharding import make_mesh
    from qatacov_jax.training.factory import build_model

    out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "ms_per_image": {}}
    for arch in args.archs:
        config = default.variant(arch, args.encoder)
        config.data.image_size = args.image_size
        model, _ = build_model(config, seed=0, load_weights=False)
        model.eval()
        r = timing.measure_inference(
            model,
            make_mesh(1),
            batch_size=args.batch_size,
            image_size=args.image_size,
            repeats=args.repeats,
        )
        out["ms_per_image"][arch] = r["ms_per_sample"]
    return out


def _run_child(setting: str, argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, "QATACOV_XLA_DEFAULTS": SETTINGS[setting]}
    env.pop("XLA_FLAGS", None)  # each setting's flags are its own, not the caller's
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--child"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {setting} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# XLA defaults vs jaxlib's own flags (benchmarks/xla_defaults.py)",
        "",
        f"{report['cpu']}, {report['cores']} cores; DenseNet-121 encoder, "
        f"{report['image_size']}x{report['image_size']}, batch {report['batch_size']}, float32, "
        f"BatchNorm folded; {report['rounds']} alternating child processes per setting. "
        f"`defaults`: XLA_FLAGS `{report['flags']['defaults']}`; `jaxlib`: "
        f"`{report['flags']['jaxlib'] or '(none)'}`.",
        "",
        "| model | defaults ms/image | jaxlib ms/image | jaxlib / defaults |",
        "|---|---:|---:|---:|",
    ]
    for arch, r in report["results"].items():
        lines.append(f"| {arch} | {r['defaults']:.1f} | {r['jaxlib']:.1f} | {r['ratio']:.2f}x |")
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    from qatacov_jax.runtime.files import write_json, write_text

    passes: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    child_argv = _without_values(argv, ("--json", "--markdown", "--note"))
    for r in range(args.rounds):
        for setting in SETTINGS:
            passes[setting].append(_run_child(setting, child_argv))
            print(f"round {r + 1}/{args.rounds}: {setting} done", file=sys.stderr, flush=True)
    results = {}
    for arch in args.archs:
        med = {s: statistics.median(p["ms_per_image"][arch] for p in passes[s]) for s in SETTINGS}
        results[arch] = {**med, "ratio": med["jaxlib"] / med["defaults"]}
    from qatacov_jax.benchmarking import timing

    report = {
        "cpu": timing.environment()["host_cpu"],
        "cores": os.cpu_count(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "flags": {s: passes[s][0]["xla_flags"] for s in SETTINGS},
        "passes": passes,
        "results": results,
        "note": args.note,
    }
    text = markdown(report)
    print(text)
    if args.json:
        write_json(args.json, report)
    if args.markdown:
        write_text(args.markdown, text + "\n")
    return 0


def _without_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` without the options `names` and their values (`--x v` or `--x=v`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(f"{n}=" for n in names)):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
