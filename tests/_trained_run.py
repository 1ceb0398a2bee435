"""Quickstart-trained run directories shared by several tests.

`trained_run`: the real quickstart config (U-Net DenseNet-121 on synthetic CXRs) shrunk to a
couple of steps, for the evaluation and inference tests: the point is a genuine checkpoint
written by `train_and_evaluate`, not a good model. `learned_run`: the quickstart config
itself, stopped after 2 of its 3 epochs, a model that has learned to segment (the learning
test checks it; the localisation comparison uses it as the segmenter). With pytest-xdist the
workers share one copy of each (file lock), so each is trained once per session.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import filelock

ROOT = Path(__file__).resolve().parents[1]


def quickstart_config(data_dir: Path):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from configs import quickstart

    config = quickstart.get_config()
    config.data.data_dir = str(data_dir)
    config.data.synthetic.num_train = 24
    config.data.synthetic.num_test = 12
    config.data.synthetic.image_size = 64
    config.data.num_threads = 2
    config.num_epochs = 1
    config.steps_per_epoch = 2
    config.batch_size = 8
    return config


def trained_run(tmp_path_factory) -> Path:
    """Path of the run directory (trained on first use, then reused)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    run = shared / "quickstart_run"
    with filelock.FileLock(str(shared / "quickstart_run.lock")):
        if not (run / "results.json").exists():
            from qatacov_jax.training.loop import train_and_evaluate

            train_and_evaluate(quickstart_config(shared / "tfds"), run)
            json.loads((run / "results.json").read_text())
    return run


def _shared_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


def learned_config(data_dir: Path):
    """`configs/quickstart.py` with 2 epochs instead of 3 (the same model, data, optimizer
    and constant lr, stopped one evaluation earlier), its data in `data_dir`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from configs import quickstart

    config = quickstart.get_config()
    config.data.data_dir = str(data_dir)
    config.num_epochs = 2
    # One device, as the quickstart runs on a CPU machine: the session's 8 simulated devices
    # (conftest) would split each batch of 8 into 8 per-device batches of 1, several times
    # slower on 2 cores. Multi-device training has its own tests.
    config.num_devices = 1
    return config


def learned_run(tmp_path_factory) -> Path:
    """Path of the 2-epoch quickstart run (trained on first use, then reused); its data
    lives in `learned_data_dir(tmp_path_factory)`."""
    shared = _shared_dir(tmp_path_factory)
    run = shared / "quickstart_learned"
    with filelock.FileLock(str(shared / "quickstart_learned.lock")):
        if not (run / "results.json").exists():
            from qatacov_jax.training.loop import train_and_evaluate

            train_and_evaluate(learned_config(learned_data_dir(tmp_path_factory)), run)
    return run


def learned_data_dir(tmp_path_factory) -> Path:
    return _shared_dir(tmp_path_factory) / "tfds_quickstart"
