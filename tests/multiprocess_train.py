"""One process of the 2-process training test (run by tests/test_training_multiprocess.py).

    python tests/multiprocess_train.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR

Each process simulates 2 CPU devices, so 2 processes make a 4-device global mesh; the
same tiny model and config as the single-process reference run.
"""

from __future__ import annotations

import os
import sys

# A subprocess script, not a test: there is no `monkeypatch` here, and these must be set at
# import time, before JAX (imported by train_utils below) reads them.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_utils  # noqa: E402

from qatacov_jax.training import loop as train  # noqa: E402


def main() -> None:
    process_id, num_processes, port, data_dir, workdir = sys.argv[1:6]
    config = train_utils.tiny_config(data_dir, num_devices=None)
    config.distributed.initialize = True
    config.distributed.coordinator_address = f"localhost:{port}"
    config.distributed.num_processes = int(num_processes)
    config.distributed.process_id = int(process_id)
    train_utils.use_tiny_model()
    results = train.train_and_evaluate(config, workdir)
    import jax

    assert jax.process_count() == int(num_processes) and jax.device_count() == 4
    print("FINAL_LOSS", results["final"]["loss"], flush=True)


if __name__ == "__main__":
    main()
