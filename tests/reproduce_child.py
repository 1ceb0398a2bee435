"""`scripts/reproduce.py` as one job-array element in a child process (tests/test_reproduce.py).

    SLURM_ARRAY_TASK_ID=I python tests/reproduce_child.py --table T --workdir W [...]

Runs the CLI (`qatacov_jax.cli.reproduce.main`) exactly as the generated array script does,
the task index coming from the environment only. With `REPRODUCE_KILL_AT_STEP=N` the process
SIGKILLs itself right after training step N, as a preempted or OOM-killed task dies (no
handler runs, no file is closed). The exit code is the CLI's.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

# XLA_FLAGS and the compilation cache are inherited from the test session, so the runs here
# compute exactly what the in-process reference run computed.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()

from qatacov_jax.cli import reproduce  # noqa: E402
from qatacov_jax.reproduce import tasks  # noqa: E402


def main() -> int:
    kill_at = os.environ.get("REPRODUCE_KILL_AT_STEP")
    if kill_at:

        def on_step(step: int) -> None:
            if step == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)

        tasks.train_and_evaluate = functools.partial(
            tasks.train_and_evaluate, step_callback=on_step
        )
    return reproduce.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
