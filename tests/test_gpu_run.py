"""benchmarks/gpu_run.sh, the one-shot GPU check: dry-run on CPU (so it cannot rot), and
the summary's verdicts on the GPU performance targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qatacov_jax.benchmarking import gpu_run

ROOT = Path(__file__).resolve().parents[1]


def _report(ms_unet: float, ms_unetpp: float, train_ips: float) -> dict:
    """A table8.py report of two configurations (the shape `run_timing` writes)."""
    return {
        "records": [
            {"arch": a, "encoder": "densenet121", "frozen": False, "inference_graph": a}
            for a in ("unet", "unetpp")
        ],
        "inference": {
            "unet": {"batches": [{"batch_size": 1, "ms_per_sample": 1.0},
                                 {"batch_size": 256, "ms_per_sample": ms_unet}]},
            "unetpp": {"batches": [{"batch_size": 256, "ms_per_sample": ms_unetpp}]},
        },
        "training": {"unet:trainable": {"batch_size": 256, "images_per_s": train_ips}},
    }  # fmt: skip


def test_summary_verdicts_follow_the_targets():
    # Paper: U-Net DenseNet-121 2.58 ms, UNet++ 5.25 ms per sample.
    good = "\n".join(gpu_run.check_report(_report(0.09, 0.5, 2500.0), "bfloat16"))
    assert "target <= 0.1 ms: met" in good and "target >= 10x: met" in good
    assert "images/s (target >= 2000: met)" in good
    bad = "\n".join(gpu_run.check_report(_report(0.2, 0.6, 1500.0), "bfloat16"))
    assert "target <= 0.1 ms: missed" in bad
    assert "missed by unetpp:densenet121" in bad  # 5.25 / 0.6 < 10; U-Net's 12.9x is fine
    assert "images/s (target >= 2000: missed)" in bad
    # float32 is held to the 10x rule only, not to the bfloat16 latency target.
    assert "0.1 ms" not in "\n".join(gpu_run.check_report(_report(0.2, 0.5, 10.0), "float32"))


@pytest.mark.slow
def test_gpu_run_dry_run_on_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        QATACOV_GPU_RUN_TINY="1",
        # A fresh compilation cache: the script's default (/tmp) would let an earlier run's
        # compiled programs hide a step that no longer compiles.
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
        JAX_PLATFORMS="cpu",
        PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    out = tmp_path / "results"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,  # minutes of XLA compiling on a busy 2-core machine
    )
    log = (out / "gpu_run_cpu.log").read_text() if (out / "gpu_run_cpu.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log[-3000:]
    summary = (out / "gpu_run_cpu.md").read_text()
    assert "DRY RUN" in summary
    for short in ("bf16", "fp32"):
        report = json.loads((out / f"table8_cpu_{short}.json").read_text())
        assert report["settings"]["dry_run"] is True
        assert [r["arch"] for r in report["records"]] == ["unet"]
        # The dry run compiles one training step (float32's); the real run times both.
        assert bool(report["training"]) == (short == "fp32")
        assert "DRY RUN" in (out / f"table8_cpu_{short}.md").read_text()
        assert f"| table8_{short} | 0 |" in summary
    assert "U-Net DenseNet-121" in summary and "training" in summary
