"""Training input-pipeline throughput (images/s) at 224x224 for 0..N grain worker processes.

    .venv/bin/python benchmarks/input_pipeline.py --max_workers 2 --batches 20

Builds (once, into --data_dir) a synthetic set stored at 256x256 — the storage size of the
real-dataset builders — then times `train_iterator` end to end: record read + PNG decode,
resize to 224, paper augmentation on the balancing copies, ImageNet preprocessing, batching
and `shard_batch` onto a 1-device mesh. The first batches (worker start-up) are not timed.
Use --augment all to time the worst case (every example warped).

Besides images/s (wall clock) each setting reports images per CPU-second of the whole process
tree (this process and its grain workers, from /proc): the "images/s per core"
that says how many cores a GPU's training speed needs (the GPU target: >= 125 per core keeps one
H100 at 2,000 images/s fed from 16 cores). On a loaded machine the wall-clock figure drops,
the per-CPU-second figure much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from qatacov_jax import data
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.runtime.files import write_json, write_text
from qatacov_jax.runtime.sharding import make_mesh


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants (the grain
    workers), read from /proc at this instant (Linux)."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, cpu seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # Fields after the ")" closing the command name: state ppid ... utime stime.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended while we looked
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent]
        tree.update(children)
        frontier += children
    return sum(stats[pid][1] for pid in tree if pid in stats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "qatacov_bench"))
    p.add_argument("--max_workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--num_threads", type=int, default=4)
    p.add_argument("--augment", default="copies", choices=("copies", "all", "none"))
    p.add_argument("--out", default=None, help="optional JSON file for the results")
    p.add_argument("--markdown", default=None, help="optional Markdown file for the results")
    args = p.parse_args()

    cfg = data.default_config()
    cfg.data_dir = args.data_dir
    cfg.image_size = args.image_size
    cfg.synthetic.image_size = 256
    cfg.synthetic.num_train = 256
    cfg.synthetic.num_test = 16
    cfg.augment = args.augment
    cfg.num_threads = args.num_threads
    t = time.perf_counter()
    data.prepare(cfg)
    print(f"dataset ready in {time.perf_counter() - t:.1f}s ({args.data_dir})", flush=True)

    mesh = make_mesh(1)
    pre = Preprocessing.from_mode("torch")
    results = []
    for workers in range(args.max_workers + 1):
        cfg.num_workers = workers
        it = data.train_iterator(
            cfg, fold=0, global_batch_size=args.batch_size, preprocessing=pre, mesh=mesh, seed=0
        )
        for _ in range(args.warmup):
            jax.block_until_ready(next(it))
        cpu0 = _tree_cpu_seconds()
        t = time.perf_counter()
        for _ in range(args.batches):
            jax.block_until_ready(next(it))
        dt = time.perf_counter() - t
        cpu = _tree_cpu_seconds() - cpu0
        it.close()
        n = args.batches * args.batch_size
        rate = n / dt
        per_core = n / cpu if cpu > 0 else None
        results.append(
            {
                "num_workers": workers,
                "images_per_s": round(rate, 1),
                "cpu_seconds": round(cpu, 2),
                "images_per_cpu_second": None if per_core is None else round(per_core, 1),
            }
        )
        print(
            f"num_workers={workers}: {rate:8.1f} images/s, "
            f"{per_core or float('nan'):8.1f} images per CPU-second",
            flush=True,
        )
    info = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "num_threads": args.num_threads,
        "cpu_count": os.cpu_count(),
        "results": results,
        "load_average": list(np.round(os.getloadavg(), 2)),
    }
    info["command"] = "python benchmarks/input_pipeline.py " + " ".join(sys.argv[1:])
    if args.out:
        write_json(args.out, info)
    if args.markdown:
        write_text(args.markdown, markdown(info) + "\n")
    print(json.dumps(info))


def markdown(info: dict) -> str:
    """The results as a Markdown table (per setting: wall-clock rate and rate per CPU-second)."""
    lines = [
        f"Training input pipeline, {info['image_size']}x{info['image_size']}, batch "
        f"{info['batch_size']}, augmentation: {info['augment']}, {info['num_threads']} read "
        f"threads, {info['cpu_count']} cores (load average at the end: "
        f"{', '.join(str(v) for v in info['load_average'])}).",
        "",
        f"Command: `{info['command']}`",
        "",
        "| grain workers | images/s (wall clock) | images per CPU-second (all processes) |",
        "|---:|---:|---:|",
    ]
    for r in info["results"]:
        per_core = r["images_per_cpu_second"]
        lines.append(
            f"| {r['num_workers']} | {r['images_per_s']:.1f} | "
            f"{'-' if per_core is None else f'{per_core:.1f}'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
