"""`scripts/evaluate.py RUN [--split test] [--out DIR] ...`: metrics with 95% CIs, the
paper's tables, curves and example maps for a run, or every fold of a CV run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import flags

from qatacov_jax.cli.common import (
    UsageError,
    apply_input_flags,
    define_input_flags,
    define_which_flag,
    in_unit_interval,
    parse_command,
    positive,
    run_main,
)
from qatacov_jax.evaluation.runner import evaluate
from qatacov_jax.metrics import DEFAULT_NUM_BINS, DEFAULT_THRESHOLD

PROG = "scripts/evaluate.py"
DOC = """Segmentation and COVID-19 detection metrics (95% CI), tables and curves.

    python scripts/evaluate.py RUN [--split=test] [--threshold=0.5] [--out=DIR]

RUN is a run directory (scripts/train.py --workdir), or a CV run holding fold_k/ runs."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "split",
        None,
        "'eval' (held-out fold), 'validation' or 'test' (default: the run's eval_split, or "
        "'test' where that split chose the checkpoint; the split that chose checkpoints/best "
        "is refused, exit 2)",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "threshold", DEFAULT_THRESHOLD, "pixel decision threshold in (0, 1]", flag_values=fv
    )
    flags.DEFINE_integer(
        "num-bins",
        DEFAULT_NUM_BINS,
        "probability bins for AUC/curves (uniform in logit(p); even, so 0.5 is an edge)",
        flag_values=fv,
    )
    flags.DEFINE_integer("batch-size", None, "images per step (default: the run's)", flag_values=fv)
    define_which_flag(fv, "which checkpoint")
    flags.DEFINE_string("data-dir", None, "override config.data.data_dir", flag_values=fv)
    flags.DEFINE_string(
        "out", None, "output folder (default RUN/evaluation/<split>)", flag_values=fv
    )
    flags.DEFINE_integer(
        "num-maps", 8, "write infection maps of this many examples to <out>/maps", flag_values=fv
    )
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "replace earlier evaluation outputs (a killed evaluation of ours is finished without it)",
        flag_values=fv,
    )
    define_input_flags(fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused, 65 a damaged run file, 74 the
    output folder cannot be written)."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        if len(rest) != 1:
            raise UsageError(f"expected one run directory, got {rest or 'none'}")
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        if v("num-bins") < 3:
            raise UsageError(f"--num-bins must be >= 3, got {v('num-bins')}")
        apply_input_flags(fv)
        result = evaluate(
            Path(rest[0]),
            out_dir=v("out") and Path(v("out")),
            overwrite=v("overwrite"),
            split=v("split"),
            threshold=in_unit_interval("threshold", v("threshold")),
            num_bins=v("num-bins"),
            batch_size=positive("batch-size", v("batch-size")),
            which=v("which"),
            data_dir=v("data-dir"),
            num_maps=v("num-maps"),
        )
        det, pix = result["detection"]["metrics"], result["pixel"]["metrics"]
        print(
            "pixel F1 {:.2f}%  detection sensitivity {:.2f}%  specificity {:.2f}%".format(
                100 * (pix["f1"]["value"] or 0),
                100 * (det["sensitivity"]["value"] or 0),
                100 * (det["specificity"]["value"] or 0),
            )
        )
        return 0

    return run_main(body)
