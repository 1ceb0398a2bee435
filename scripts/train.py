r"""Trains one configuration (optionally one CV fold) into a run directory.

    python scripts/train.py --config configs/quickstart.py --workdir runs/quickstart
    python scripts/train.py --config configs/unetpp_incv3.py --workdir runs/unetpp_incv3_f2 \
        --config.fold=2 --config.optim.lr=3e-4 --config.model.dtype=bfloat16

Any config field can be overridden with `--config.<path>=<value>`. Restarting with the same
`--workdir` resumes from its latest checkpoint; a workdir holding a different configuration
is refused. Multi-host: run the same command on every host with
`--config.distributed.initialize=True` (plus coordinator_address/num_processes/process_id
where the cluster is not auto-detected).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository root holds both the `qatacov_jax` package and `configs/`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qatacov_jax import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from qatacov_jax.logs import run_or_exit, start_absl_script  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, results).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    start_absl_script(argv)
    from qatacov_jax.train import train_and_evaluate

    results = run_or_exit(train_and_evaluate, _CONFIG.value, _WORKDIR.value)
    final = results["final"] or {}
    logging.info(
        "Done: held-out pixel F1 %.4f, detection sensitivity %.4f / specificity %.4f; "
        "results in %s/results.json",
        final.get("pixel_f1", float("nan")),
        final.get("detection_sensitivity", float("nan")),
        final.get("detection_specificity", float("nan")),
        _WORKDIR.value,
    )


if __name__ == "__main__":
    app.run(main)
