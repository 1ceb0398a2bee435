"""One process of the 2-process training test (run by tests/test_training_multiprocess.py).

    python tests/multiprocess_train.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR
    python tests/multiprocess_train.py slurm DATA_DIR WORKDIR

The first form passes the rank explicitly as `--config.distributed.*` (what
launch/train-k8s.yaml does with JOB_COMPLETION_INDEX). The second gets nothing but the
environment `srun` sets under launch/train.sbatch (SLURM_JOB_ID, SLURM_STEP_NODELIST,
SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; with QATACOV_DISTRIBUTED=1, and
JAX_COORDINATOR_PORT for a free local port) and leaves the rank to jax.distributed's SLURM
detection. Each process simulates 2 CPU devices, so 2 processes make a 4-device global mesh;
the same tiny model and config as the single-process reference run.
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
    if sys.argv[1] == "slurm":
        data_dir, workdir = sys.argv[2:4]
        process_id, num_processes = os.environ["SLURM_PROCID"], os.environ["SLURM_NTASKS"]
        config = train_utils.tiny_config(data_dir, num_devices=None)
        assert not config.distributed.initialize  # asked by QATACOV_DISTRIBUTED=1 alone
    else:
        process_id, num_processes, port, data_dir, workdir = sys.argv[1:6]
        config = train_utils.tiny_config(data_dir, num_devices=None)
        config.distributed.initialize = True
        config.distributed.coordinator_address = f"localhost:{port}"
        config.distributed.num_processes = int(num_processes)
        config.distributed.process_id = int(process_id)
    results = train.train_and_evaluate(config, workdir)
    import jax

    assert jax.process_count() == int(num_processes) and jax.device_count() == 4
    assert jax.process_index() == int(process_id), (jax.process_index(), process_id)
    print("RANK", jax.process_index(), "FINAL_LOSS", results["final"]["loss"], flush=True)


if __name__ == "__main__":
    main()
