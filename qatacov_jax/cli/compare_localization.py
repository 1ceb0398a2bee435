"""`scripts/compare_localization.py --segmenter RUN --classifier RUN [--split test] --out DIR`:
infection maps vs Grad-CAM / Grad-CAM++ activation maps on the same images (paper 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from qatacov_jax.cli.common import (
    UsageError,
    define_which_flag,
    in_unit_interval,
    parse_command,
    positive,
    run_main,
)
from qatacov_jax.evaluation.localization import compare_localization
from qatacov_jax.metrics import DEFAULT_NUM_BINS, DEFAULT_THRESHOLD

PROG = "scripts/compare_localization.py"
DOC = """Localisation of infection maps vs the classifier's Grad-CAM and Grad-CAM++ maps.

    python scripts/compare_localization.py --segmenter RUN --classifier RUN --split test --out DIR

--segmenter is a segmentation run (scripts/train.py --workdir), --classifier a run of
configs/classifier_*.py on the same data. DIR receives localization.json, localization.md
(pixel F1 / IoU at 0.5 and at the best threshold, pointing game, energy inside the mask,
COVID-19 detection, each with the paper's 95% CI) and figures/ (X-ray | ground truth |
Grad-CAM | Grad-CAM++ | infection map)."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("segmenter", None, "segmentation run directory", flag_values=fv)
    flags.DEFINE_string("classifier", None, "classifier run directory", flag_values=fv)
    flags.DEFINE_string("out", None, "output folder", flag_values=fv)
    flags.DEFINE_string(
        "split", "test", "'test' or 'eval' (the runs' held-out fold)", flag_values=fv
    )
    flags.DEFINE_float(
        "threshold", DEFAULT_THRESHOLD, "map / detection threshold in (0, 1]", flag_values=fv
    )
    flags.DEFINE_integer(
        "num-bins", DEFAULT_NUM_BINS, "bins for the best-threshold search", flag_values=fv
    )
    flags.DEFINE_integer(
        "batch-size", None, "images per step (default: the segmenter's)", flag_values=fv
    )
    define_which_flag(fv, "which checkpoints")
    flags.DEFINE_string("data-dir", None, "override config.data.data_dir", flag_values=fv)
    flags.DEFINE_integer(
        "num-examples", 8, "first images drawn in figures/first.png", flag_values=fv
    )
    flags.DEFINE_integer("num-worst", 4, "worst COVID-19 images drawn per method", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace earlier outputs in --out", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused)."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        if rest:
            raise UsageError(f"unexpected arguments {rest}")
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        for name in ("segmenter", "classifier", "out"):
            if v(name) is None:
                raise UsageError(f"--{name} is required")
        if v("num-bins") < 2:
            raise UsageError(f"--num-bins must be >= 2, got {v('num-bins')}")
        for name in ("num-examples", "num-worst"):
            if v(name) < 0:
                raise UsageError(f"--{name} must be >= 0, got {v(name)}")
        result = compare_localization(
            Path(v("segmenter")),
            Path(v("classifier")),
            Path(v("out")),
            split=v("split"),
            threshold=in_unit_interval("threshold", v("threshold")),
            num_bins=v("num-bins"),
            batch_size=positive("batch-size", v("batch-size")),
            which=v("which"),
            data_dir=v("data-dir"),
            num_examples=v("num-examples"),
            num_worst=v("num-worst"),
            overwrite=v("overwrite"),
        )
        for name, m in result["methods"].items():
            best = m["pixel"]["covid19"]["best"]
            print(
                "{:<14} pixel F1 {:6.2f}% (best threshold {:.3f})  pointing {:6.2f}%  "
                "energy in mask {:6.2f}%".format(
                    name,
                    _pct(best["metrics"]["f1"]["value"]),
                    best["threshold"],
                    _pct(m["pointing_game"]["value"]),
                    _pct(m["energy_inside_mask"]["value"]),
                )
            )
        print(f"results in {Path(v('out')) / 'localization.md'}")
        return 0

    return run_main(body)


def _pct(x: float | None) -> float:
    return float("nan") if x is None or not math.isfinite(x) else 100.0 * x
