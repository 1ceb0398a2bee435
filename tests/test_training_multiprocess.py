"""2 processes on localhost through `jax.distributed` (CPU, gloo) == 1 process.

The two processes are started the two ways the launch files start them (launch/): rank 0
with its rank in `--config.distributed.*` (launch/train-k8s.yaml), rank 1 with only the
SLURM_* environment `srun` sets under launch/train.sbatch, so it finds its rank, the process
count and the coordinator through jax.distributed's SLURM detection. One run covers both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import train_utils
from flax import nnx

from qatacov_jax.training import loop as train
from qatacov_jax.training import rundir

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _params(run_dir: Path) -> dict:
    model, _, _ = rundir.load_model(run_dir, which="latest")
    return jax.device_get(nnx.state(model).to_pure_dict())


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    # Reference: 1 process, 4 of the session's 8 simulated devices, the same global batch.
    ref = train.train_and_evaluate(
        train_utils.tiny_config(data_dir, num_devices=4), tmp_path / "one"
    )

    port = _free_port()
    # The children's environment (a copy: this process's own is left alone); each child
    # sets its own device count before importing JAX.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    script, workdir = str(HERE / "multiprocess_train.py"), str(tmp_path / "two")
    # launch/train.sbatch: QATACOV_DISTRIBUTED=1, and what srun sets for task 1 of 2 on one
    # node (the coordinator's port from JAX_COORDINATOR_PORT instead of the job id).
    slurm_env = {
        **env,
        "QATACOV_DISTRIBUTED": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "JAX_COORDINATOR_PORT": str(port),
    }
    commands = [
        ([script, "0", "2", str(port), data_dir, workdir], env),  # rank given explicitly
        ([script, "slurm", data_dir, workdir], slurm_env),  # rank detected
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for argv, child_env in commands
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=540)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
        assert f"RANK {i} FINAL_LOSS" in out, out[-2000:]

    multi = rundir.read_config(tmp_path / "two")
    assert multi.distributed.num_processes == 2
    import json

    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["num_processes"] == 2 and two["num_devices"] == 4
    # Gradients are all-reduced across processes in another order than within one
    # process, so agreement is to float round-off, not bitwise.
    np.testing.assert_allclose(two["final"]["loss"], ref["final"]["loss"], rtol=1e-4)
    assert two["final"]["pixel_tp"] == pytest.approx(ref["final"]["pixel_tp"], abs=2)
    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5, err_msg=jax.tree_util.keystr(path))
