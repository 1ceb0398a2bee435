r"""Runs all K folds of a configuration and writes the fold-averaged results.

    python scripts/cross_validate.py --config configs/unet_densenet121.py \
        --workdir runs/unet_densenet121_cv --config.data.manual_dir=/data/QaTa-COV19

Writes WORKDIR/fold_k/ (one run directory per fold) and WORKDIR/results.json (per-fold
metrics, mean and std over folds, and pooled confusion-matrix metrics with 95% CIs).
Re-running the same command resumes: finished folds are kept, the interrupted one resumes
from its latest checkpoint. `--folds=0,1` runs a subset (e.g. one fold per machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qatacov_jax import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from qatacov_jax.logs import run_or_exit, start_absl_script  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "CV directory (fold_k/ run dirs, results).")
_FOLDS = flags.DEFINE_list("folds", None, "Folds to run (default: all config.data.num_folds).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    start_absl_script(argv)
    from qatacov_jax.cv import cross_validate

    folds = [int(f) for f in _FOLDS.value] if _FOLDS.value else None
    summary = run_or_exit(cross_validate, _CONFIG.value, _WORKDIR.value, folds=folds)
    logging.info(
        "Folds %s: pixel F1 %.4f +- %.4f, detection sensitivity %.4f, specificity %.4f; "
        "results in %s/results.json",
        summary["folds"],
        summary["mean"].get("pixel_f1", float("nan")),
        summary["std"].get("pixel_f1", float("nan")),
        summary["mean"].get("detection_sensitivity", float("nan")),
        summary["mean"].get("detection_specificity", float("nan")),
        _WORKDIR.value,
    )


if __name__ == "__main__":
    app.run(main)
