"""Training input-pipeline throughput (images/s) at 224x224 for 0..N grain worker processes.

    .venv/bin/python benchmarks/input_pipeline.py --max_workers 2 --batches 20

Builds (once, into --data_dir) a synthetic set stored at 256x256 — the storage size of the
real-dataset builders — then times `train_iterator` end to end: record read + PNG decode,
resize to 224, paper augmentation on the balancing copies, ImageNet preprocessing, batching
and `shard_batch` onto a 1-device mesh. The first batches (worker start-up) are not timed.
Use --augment all to time the worst case (every example warped).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from qatacov_jax import data
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.runtime.sharding import make_mesh


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
        t = time.perf_counter()
        for _ in range(args.batches):
            jax.block_until_ready(next(it))
        dt = time.perf_counter() - t
        it.close()
        rate = args.batches * args.batch_size / dt
        results.append({"num_workers": workers, "images_per_s": round(rate, 1)})
        print(f"num_workers={workers}: {rate:8.1f} images/s", flush=True)
    info = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "num_threads": args.num_threads,
        "cpu_count": os.cpu_count(),
        "results": results,
        "load_average": list(np.round(os.getloadavg(), 2)),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
