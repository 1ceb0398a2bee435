"""`scripts/annotation_report.py OUT [--out DIR]`: the report of an annotation folder
(`annotation.report`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from absl import flags

from qatacov_jax.cli.common import UsageError, parse_command, run_main

log = logging.getLogger(__name__)

PROG = "scripts/annotation_report.py"
DOC = """What an annotation folder's decisions say, per stage and annotator: how often a
machine mask was preferred over the doctors' own (paper 1: 3 of 5), how often all
candidates were rejected (paper 1: under 5%), inter-annotator agreement (Fleiss' kappa of
the picks, pairwise Dice of the masks) and time per image.

    python scripts/annotation_report.py OUT [--out REPORT_DIR]

Writes annotation_report.{md,json,png} into OUT/report/ (or --out) and prints the tables."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "report folder (default: OUT/report)", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 done, 2 refused."""

    def body() -> int:
        from qatacov_jax.annotation.report import markdown, write_report

        fv, rest = parse_command(_define, argv, PROG, DOC)
        if len(rest) != 1:
            raise UsageError("give one annotation folder (the --annotations OUT of a server)")
        report = write_report(rest[0], fv["out"].value)
        print(markdown(report))
        return 0

    return run_main(body)
