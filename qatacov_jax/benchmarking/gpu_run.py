"""The summary of `benchmarks/gpu_run.sh`: the GPU performance targets, met or missed.

    python -m qatacov_jax.benchmarking.gpu_run slug          # the device's file-name slug
    python -m qatacov_jax.benchmarking.gpu_run summarize OUT_DIR DEV STEPS_TSV [--dry-run]

`summarize` reads `OUT_DIR/table8_DEV_{bf16,fp32}.json` (benchmarks/table8.py) and the step
list the script wrote (name, exit code, seconds, command per line) and writes
`OUT_DIR/gpu_run_DEV.md` with the targets (docs/performance.md, "GPU"):
U-Net DenseNet-121 in bfloat16 at <= 0.10 ms/sample (>= 25x the paper's 2.58 ms), every
Table 8 row >= 10x faster than the paper's time, training >= 2,000 images/s. Exit code 1 if a
step failed (a step stopped at its time limit is reported, not a failure), else 0.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from qatacov_jax.benchmarking import paper
from qatacov_jax.runtime.files import write_text

UNET_DENSENET_MS = 0.10  # ms/sample, bfloat16, U-Net DenseNet-121
SPEEDUP_VS_PAPER = 10.0  # every Table 8 row
TRAIN_IMAGES_PER_S = 2000.0
# `timeout --signal=INT --kill-after=S`: the step ran out of its time limit (124), and was
# killed when it did not stop on the interrupt within S seconds (137).
TIMED_OUT = (124, 137)


def device_slug() -> str:
    """`jax.devices()[0].device_kind` as a file-name part: 'NVIDIA H200' -> 'nvidia_h200'."""
    import jax

    kind = jax.devices()[0].device_kind
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "device"


def _largest_batch(report: dict[str, Any], graph: str) -> dict[str, Any]:
    return max(report["inference"][graph]["batches"], key=lambda b: b["batch_size"])


def check_report(report: dict[str, Any], dtype: str) -> list[str]:
    """Markdown lines: each row's speed-up over the paper and the targets for one dtype."""
    rows, lines = report.get("records", []), []
    if not rows:
        return [f"- {dtype}: no configuration finished."]
    slow, best_unet = [], None
    for r in rows:
        b = _largest_batch(report, r["inference_graph"])
        row = paper.table8_row(r["arch"], r["encoder"], r["frozen"])
        if r["arch"] == "unet" and r["encoder"] == "densenet121" and not r["frozen"]:
            best_unet = b["ms_per_sample"]
        if row is not None and row.time_ms / b["ms_per_sample"] < SPEEDUP_VS_PAPER:
            slow.append(f"{r['arch']}:{r['encoder']}{':frozen' if r['frozen'] else ''}")
    paper_rows = [r for r in rows if paper.table8_row(r["arch"], r["encoder"], r["frozen"])]
    speedups = [
        paper.table8_row(r["arch"], r["encoder"], r["frozen"]).time_ms
        / _largest_batch(report, r["inference_graph"])["ms_per_sample"]
        for r in paper_rows
    ]
    if speedups:
        verdict = "met" if not slow else f"missed by {', '.join(slow)}"
        lines.append(
            f"- {dtype}: {len(paper_rows)} Table 8 rows timed, speed-up over the paper "
            f"{min(speedups):.1f}x to {max(speedups):.1f}x (target >= {SPEEDUP_VS_PAPER:.0f}x: "
            f"{verdict})."
        )
    if best_unet is not None:
        target = (
            f" (target <= {UNET_DENSENET_MS} ms: "
            f"{'met' if best_unet <= UNET_DENSENET_MS else 'missed'})"
            if dtype == "bfloat16"
            else ""
        )
        lines.append(
            f"- {dtype}: U-Net DenseNet-121 {best_unet:.4f} ms/sample at the largest batch "
            f"= {2.58 / best_unet:.1f}x the paper's 2.58 ms{target}."
        )
    for key, t in report.get("training", {}).items():
        verdict = "met" if t["images_per_s"] >= TRAIN_IMAGES_PER_S else "missed"
        lines.append(
            f"- {dtype}: training {key} at batch {t['batch_size']}: {t['images_per_s']:.0f} "
            f"images/s (target >= {TRAIN_IMAGES_PER_S:.0f}: {verdict})."
        )
    return lines


def summarize(out_dir: Path, dev: str, steps_tsv: Path, *, dry_run: bool = False) -> int:
    """Writes `out_dir/gpu_run_DEV.md`; returns 1 if a step failed, else 0."""
    steps = [line.split("\t", 3) for line in steps_tsv.read_text().splitlines() if line.strip()]
    failed = [s[0] for s in steps if int(s[1]) != 0 and int(s[1]) not in TIMED_OUT]
    lines = [f"# GPU run on {dev}", ""]
    if dry_run:
        lines += [
            "**DRY RUN** (`QATACOV_GPU_RUN_TINY=1`: toy model, toy sizes): checks the script; "
            "the figures measure nothing.",
            "",
        ]
    lines += ["| step | exit | seconds | command |", "|---|---:|---:|---|"]
    for name, rc, secs, cmd in steps:
        note = " (time limit)" if int(rc) in TIMED_OUT else ""
        lines.append(f"| {name} | {rc}{note} | {secs} | `{cmd}` |")
    lines += ["", "## Targets", ""]
    for short, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        path = out_dir / f"table8_{dev}_{short}.json"
        if not path.exists():
            lines.append(f"- {dtype}: no report ({path.name} missing).")
            continue
        report = json.loads(path.read_text())
        n_all = len(report.get("records", []))
        lines += check_report(report, dtype)
        lines.append(f"- {dtype}: {n_all} configurations in {path.name}.")
    if failed:
        lines += ["", f"Failed steps: {', '.join(failed)} (see gpu_run_{dev}.log)."]
    write_text(out_dir / f"gpu_run_{dev}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["slug"]:
        print(device_slug())
        return 0
    if argv[:1] == ["summarize"] and len(argv) in (4, 5):
        return summarize(Path(argv[1]), argv[2], Path(argv[3]), dry_run=argv[4:] == ["--dry-run"])
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
