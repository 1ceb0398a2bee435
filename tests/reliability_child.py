"""`scripts/train.py` in a child process with a real fault injected (tests/test_reliability_*.py).

    python tests/reliability_child.py FAULT STEP DATA_DIR WORKDIR

Runs the CLI (`qatacov_jax.cli.train.main`) on the tiny model and config of
tests/train_utils.py, and when training reaches step STEP makes FAULT happen for real:

    sigterm   this process receives SIGTERM (as from SLURM / Kubernetes before a kill)
    fsize     RLIMIT_FSIZE drops to 1 KiB with SIGXFSZ ignored: every write past 1 KiB fails
              with EFBIG, as on a full disk (ENOSPC) or an exhausted quota (EDQUOT)
    kill9     SIGKILL right after a periodic checkpoint save has been started (its files
              are being written asynchronously)
    none      no fault

The exit code is the CLI's; stderr is what a user would see.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

# XLA_FLAGS is inherited from the test session (the same simulated devices and CPU
# convolution path as the in-process reference run, so results compare bit for bit).
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()

from qatacov_jax.cli import train as train_cli  # noqa: E402
from qatacov_jax.training import checkpoint  # noqa: E402

CONFIG_FILE = """
import train_utils


def get_config():
    return train_utils.tiny_config({data_dir!r})
"""


def write_config(data_dir: str, directory: Path) -> Path:
    """A config file for `--config` that returns `train_utils.tiny_config(data_dir)`."""
    path = directory / "tiny_config.py"
    path.write_text(CONFIG_FILE.format(data_dir=data_dir))
    return path


def main() -> int:
    fault, at, data_dir, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

    def on_step(step: int) -> None:
        if step != at:
            return
        if fault == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif fault == "fsize":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    if fault == "kill9":
        real_save = checkpoint.CheckpointStore.save_latest

        def save_then_die(self, step, *args, **kwargs):  # type: ignore[no-untyped-def]
            real_save(self, step, *args, **kwargs)
            if step == at:
                os.kill(os.getpid(), signal.SIGKILL)  # while orbax writes in the background

        checkpoint.CheckpointStore.save_latest = save_then_die
    train_cli.train_and_evaluate = functools.partial(
        train_cli.train_and_evaluate, step_callback=on_step
    )
    config = write_config(data_dir, Path(tempfile.mkdtemp()))
    return train_cli.main(["--config", str(config), "--workdir", workdir])


if __name__ == "__main__":
    sys.exit(main())
