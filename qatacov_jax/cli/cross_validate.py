"""`scripts/cross_validate.py --config CONFIG --workdir CV_DIR [--folds=0,1]`: all K folds of
a configuration, then fold-averaged and pooled results (`training.cross_validation`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from absl import flags

from qatacov_jax.cli.common import run_main
from qatacov_jax.cli.train import config_and_workdir
from qatacov_jax.training.cross_validation import cross_validate

log = logging.getLogger(__name__)

PROG = "scripts/cross_validate.py"
DOC = """Runs all K folds of a configuration and writes the fold-averaged results.

    python scripts/cross_validate.py --config configs/unet_densenet121.py \\
        --workdir runs/unet_densenet121_cv --config.data.manual_dir=/data/QaTa-COV19

Writes WORKDIR/fold_k/ (one run directory per fold) and WORKDIR/results.json. Re-running
the same command resumes: finished folds are kept, the interrupted one resumes from its
latest checkpoint. `--folds=0,1` runs a subset (e.g. one fold per machine)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused)."""

    def body() -> int:
        def define(fv: flags.FlagValues) -> None:
            flags.DEFINE_list("folds", None, "Folds to run (default: all).", flag_values=fv)

        fv = config_and_workdir(
            argv or [], PROG, DOC, "CV directory (fold_k/ run dirs, results).", define
        )
        folds = [int(f) for f in fv.folds] if fv.folds else None
        summary = cross_validate(fv.config, fv.workdir, folds=folds)
        log.info(
            "Folds %s: pixel F1 %.4f +- %.4f, detection sensitivity %.4f, specificity %.4f; "
            "results in %s/results.json",
            summary["folds"],
            summary["mean"].get("pixel_f1", float("nan")),
            summary["std"].get("pixel_f1", float("nan")),
            summary["mean"].get("detection_sensitivity", float("nan")),
            summary["mean"].get("detection_specificity", float("nan")),
            fv.workdir,
        )
        return 0

    return run_main(body)
