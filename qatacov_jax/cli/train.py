"""`scripts/train.py --config CONFIG --workdir RUN [--config.<field>=value ...]`: trains one
configuration (optionally one CV fold) into a run directory, resuming if it holds one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from absl import flags
from ml_collections import config_flags

from qatacov_jax.cli.common import UsageError, parse_command, run_main
from qatacov_jax.training.loop import train_and_evaluate

log = logging.getLogger(__name__)

PROG = "scripts/train.py"
DOC = """Trains one configuration (optionally one CV fold) into a run directory.

    python scripts/train.py --config configs/quickstart.py --workdir runs/quickstart
    python scripts/train.py --config configs/unetpp_incv3.py --workdir runs/unetpp_incv3_f2 \\
        --config.fold=2 --config.optim.lr=3e-4 --config.model.dtype=bfloat16

Any config field can be overridden with `--config.<path>=<value>`. Restarting with the same
`--workdir` resumes from its latest checkpoint; a workdir holding a different configuration
is refused. Multi-host: run the same command on every host with
`--config.distributed.initialize=True`."""


def config_and_workdir(
    argv: Sequence[str],
    prog: str,
    doc: str,
    workdir_help: str,
    define: Callable[[flags.FlagValues], None] | None = None,
) -> flags.FlagValues:
    """Parses `--config FILE [--config.x=y ...] --workdir DIR` (+ what `define(fv)` adds).

    Raises:
      HelpPrinted: `--help` was given (and printed); `run_main` exits 0.
      UsageError: a stray argument, a missing --config / --workdir, or a bad value.
    """
    argv = list(argv)

    def define_all(fv: flags.FlagValues) -> None:
        config_flags.DEFINE_config_file(
            "config",
            None,
            "Training config file (configs/*.py).",
            flag_values=fv,
            lock_config=True,
            sys_argv=[prog, *argv],
        )
        flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
        if define is not None:
            define(fv)

    fv, rest = parse_command(define_all, argv, prog, doc)
    if rest:
        raise UsageError(f"unexpected arguments {rest}")
    for name in ("config", "workdir"):
        if fv[name].value is None:
            raise UsageError(f"--{name} is required")
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused)."""

    def body() -> int:
        fv = config_and_workdir(
            argv or [], PROG, DOC, "Run directory (checkpoints, logs, results)."
        )
        results = train_and_evaluate(fv.config, fv.workdir)
        final = results["final"] or {}
        if "pixel_f1" not in final:  # a classifier: image-level detection only
            log.info(
                "Done: held-out detection sensitivity %.4f / specificity %.4f (accuracy %.4f); "
                "results in %s/results.json",
                final.get("detection_sensitivity", float("nan")),
                final.get("detection_specificity", float("nan")),
                final.get("detection_accuracy", float("nan")),
                fv.workdir,
            )
            return 0
        log.info(
            "Done: held-out pixel F1 %.4f, detection sensitivity %.4f / specificity %.4f; "
            "results in %s/results.json",
            final.get("pixel_f1", float("nan")),
            final.get("detection_sensitivity", float("nan")),
            final.get("detection_specificity", float("nan")),
            fv.workdir,
        )
        return 0

    return run_main(body)
