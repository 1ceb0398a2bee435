r"""Evaluation memory stays flat as the number of test images grows.

    .venv/bin/python benchmarks/eval_memory.py [--images 27438] [--size 224] [--batch 32]

Streams batches of random probability maps and masks (generated on the devices, so the
input pipeline is not what is measured) through the same jitted `batch_statistics` step and
host `MetricAccumulator` that `scripts/evaluate.py` uses, and records the process's resident
memory (VmRSS) after each doubling of the image count. A method that kept per-pixel scores
for an exact AUC would need 4 bytes x images x size^2 (27,438 images at 224x224: 5.5 GB);
the streaming accumulator holds 4 histograms of `num_bins` int64 counts.
Results: benchmarks/results/eval_memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from qatacov_jax.metrics import DEFAULT_NUM_BINS, MetricAccumulator, batch_statistics  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-bins", type=int, default=DEFAULT_NUM_BINS)
    args = p.parse_args()

    @jax.jit
    def step(key):
        k1, k2, k3 = jax.random.split(key, 3)
        shape = (args.batch, args.size, args.size, 1)
        probs = jax.random.uniform(k1, shape)
        masks = (jax.random.uniform(k2, shape) < 0.1).astype(jnp.float32)
        labels = jax.random.bernoulli(k3, 0.3, (args.batch,)).astype(jnp.int32)
        valid = jnp.ones((args.batch,), bool)
        return batch_statistics(probs, masks, labels, valid, num_bins=args.num_bins)

    acc = MetricAccumulator(num_bins=args.num_bins)
    key = jax.random.PRNGKey(0)
    acc.update(step(key))  # compile outside the measurement
    acc = MetricAccumulator(num_bins=args.num_bins)
    rows, next_mark, t0 = [], args.batch, time.time()
    base = rss_mib()
    while acc.num_images < args.images:
        key, sub = jax.random.split(key)
        acc.update(step(sub))
        if acc.num_images >= next_mark or acc.num_images >= args.images:
            rows.append(
                {
                    "images": acc.num_images,
                    "rss_mib": round(rss_mib(), 1),
                    "seconds": round(time.time() - t0, 2),
                }
            )
            print(
                f"{acc.num_images:>7d} images  RSS {rows[-1]['rss_mib']:8.1f} MiB  "
                f"{rows[-1]['seconds']:7.1f} s",
                flush=True,
            )
            next_mark *= 2
    growth = rows[-1]["rss_mib"] - rows[0]["rss_mib"]
    per_pixel_gib = 4 * acc.num_images * args.size**2 / 2**30
    print(
        f"RSS growth from {rows[0]['images']} to {rows[-1]['images']} images: {growth:+.1f} MiB; "
        f"keeping float32 scores would need {per_pixel_gib:.2f} GiB."
    )
    out = Path(__file__).parent / "results" / "eval_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["benchmarks/eval_memory.py", *sys.argv[1:]]),
                "device": str(jax.devices()[0]),
                "num_devices": jax.device_count(),
                "host": platform.node(),
                "size": args.size,
                "batch": args.batch,
                "num_bins": args.num_bins,
                "baseline_rss_mib": round(base, 1),
                "rows": rows,
                "rss_growth_mib": round(growth, 1),
                "float32_scores_would_need_gib": round(per_pixel_gib, 2),
                "accumulator_bytes": int(sum(h.nbytes for h in acc.hists.values())),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
