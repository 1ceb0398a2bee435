"""Paper 2's model grid (smp family): our parameter counts and CPU time beside smp's own.

    python benchmarks/paper2_grid.py --size 64 --batch 1 --repeats 5 \\
        --json benchmarks/results/paper2_grid_cpu.json --markdown benchmarks/results/paper2_grid_cpu.md
    python benchmarks/paper2_grid.py --params-only     # counts only (no timing), seconds

For each (decoder, encoder) pair (`--pairs unet:resnet18 ...`, default all 15): smp 0.6 builds
the model with random weights (`encoder_weights=None`, no download), its state dict is
ported (`weights.smp_port`), and both are timed on the same random batch in eval mode:
ours as one jitted pure function (BatchNorm folded where the folding table knows the layers),
smp in PyTorch (`torch.inference_mode`). The timed calls alternate (ours, smp, ours, ...)
so load on the machine affects both alike; the figure is the median ms per sample. The
maximum output difference relative to the output's scale is recorded too.

segmentation_models_pytorch is a test/benchmark dependency (the `test` extra), never
imported by the library.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402  (before TensorFlow-using imports: torchvision + TF import order)

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from qatacov_jax.benchmarking.timing import environment  # noqa: E402
from qatacov_jax.models import SMP_ARCHS, SMP_ENCODERS, abstract_smp_model, count_params  # noqa: E402
from qatacov_jax.models.folding import make_forward  # noqa: E402
from qatacov_jax.weights.smp_port import read_smp_source  # noqa: E402

CLASSES = 2


def _ported(ref: torch.nn.Module, arch: str, encoder: str) -> nnx.Module:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pth"
        torch.save(ref.state_dict(), path)
        source = read_smp_source(path, arch, encoder)
    model = abstract_smp_model(arch, encoder, classes=CLASSES)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, source.pure))
    nnx.update(model, state)
    model.eval()
    return model


def run_pair(arch: str, encoder: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    ref = getattr(smp, SMP_ARCHS[arch][0])(encoder, encoder_weights=None, classes=CLASSES).eval()
    row = {
        "arch": arch,
        "encoder": encoder,
        "smp_class": SMP_ARCHS[arch][0],
        "smp_params": sum(p.numel() for p in ref.parameters()),
        "smp_buffers": sum(b.numel() for k, b in ref.named_buffers() if "num_batches" not in k),
    }
    counts = count_params(abstract_smp_model(arch, encoder, classes=CLASSES))
    row.update(ours_trainable=int(counts.trainable), ours_non_trainable=int(counts.non_trainable))
    row["counts_equal"] = (row["ours_trainable"], row["ours_non_trainable"]) == (
        row["smp_params"], row["smp_buffers"],
    )  # fmt: skip
    if args.params_only:
        return row
    model = _ported(ref, arch, encoder)
    forward, state = make_forward(model)
    jitted = jax.jit(forward)
    x = (
        np.random.default_rng(0)
        .normal(size=(args.batch, args.size, args.size, 3))
        .astype(np.float32)
    )
    # smp on the accelerator when PyTorch has one (a GPU run compares GPU with GPU).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = ref.to(device)
    xj = jnp.asarray(x)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    row["smp_device"] = device

    def call_ref() -> torch.Tensor:
        out = ref(xt)
        if device == "cuda":
            torch.cuda.synchronize()  # CUDA calls return before the work is done
        return out

    t0 = time.perf_counter()
    ours_out = np.asarray(jax.block_until_ready(jitted(state, xj)))
    row["ours_compile_s"] = time.perf_counter() - t0
    with torch.inference_mode():
        ref_out = call_ref().cpu().numpy().transpose(0, 2, 3, 1)
    row["max_rel_diff"] = float(np.abs(ours_out - ref_out).max() / np.abs(ref_out).max())
    ours_t, smp_t = [], []
    for _ in range(args.repeats):  # interleaved: ours, smp, ours, smp, ...
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(state, xj))
        ours_t.append(time.perf_counter() - t0)
        with torch.inference_mode():
            t0 = time.perf_counter()
            call_ref()
            smp_t.append(time.perf_counter() - t0)
    row["ours_ms_per_sample"] = 1e3 * statistics.median(ours_t) / args.batch
    row["smp_ms_per_sample"] = 1e3 * statistics.median(smp_t) / args.batch
    return row


def markdown(rows: list[dict], args: argparse.Namespace, env: dict) -> str:
    lines = [
        f"# Paper 2 grid (smp family): ours vs smp 0.6 — {args.size}x{args.size}, batch {args.batch}",
        "",
        f"{env['host_cpu']}, {env['host_cores']} cores, {env['date']}. {args.note}",
        "",
        "| model | encoder | params (ours) | params (smp) | equal | ours ms/sample | smp ms/sample | max rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = f"{r['ours_trainable']:,} + {r['ours_non_trainable']:,}"
        theirs = f"{r['smp_params']:,} + {r['smp_buffers']:,}"
        t = (
            f"{r['ours_ms_per_sample']:.1f} | {r['smp_ms_per_sample']:.1f} | {r['max_rel_diff']:.1e}"
            if "ours_ms_per_sample" in r
            else "n/a | n/a | n/a"
        )
        lines.append(
            f"| {r['smp_class']} | {r['encoder']} | {ours} | {theirs} | {r['counts_equal']} | {t} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", nargs="*", default=None, help="arch:encoder (default: all 15)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--params-only", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--note", default="", help="free text for the report (e.g. machine load)")
    args = p.parse_args(argv)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    pairs = (
        [tuple(s.split(":")) for s in args.pairs]
        if args.pairs
        else [(a, e) for e in SMP_ENCODERS for a in SMP_ARCHS]
    )
    for a, e in pairs:
        if a not in SMP_ARCHS or e not in SMP_ENCODERS:
            p.error(
                f"unknown pair {a}:{e}; archs {sorted(SMP_ARCHS)}, encoders {sorted(SMP_ENCODERS)}"
            )
    env = environment()
    rows = []
    for a, e in pairs:
        rows.append(run_pair(a, e, args))
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "environment": env,
        "size": args.size,
        "batch": args.batch,
        "note": args.note,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(rows, args, env)
    if args.markdown:
        args.markdown.write_text(md)
    print(md)
    return 0 if all(r["counts_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
