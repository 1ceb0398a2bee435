"""`scripts/quickstart.py --workdir runs/quickstart`: the README's main job
(`qatacov_jax.quickstart.run`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from configs import quickstart as quickstart_config  # the checkout's configs/ (on sys.path)
from qatacov_jax.cli.common import UsageError, parse_command, positive, run_main
from qatacov_jax.quickstart import QuickstartError, run

PROG = "scripts/quickstart.py"
DOC = """Trains a small model on synthetic CXRs, then writes its metrics and infection maps.

    python scripts/quickstart.py --workdir runs/quickstart [--overwrite]

Everything lands under --workdir: train/ (checkpoints, TensorBoard logs, results.json),
evaluation/ (metrics.json, tables.md, curves), samples/ (unseen X-rays) and maps/
(infection maps, masks, report.csv/json), and overview.png."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", "runs/quickstart", "folder for everything", flag_values=fv)
    flags.DEFINE_integer("num-samples", 6, "X-rays to draw maps for", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace earlier metrics and maps", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused)."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        if rest:
            raise UsageError(f"unexpected arguments {rest}")
        try:
            summary = run(
                fv.workdir,
                quickstart_config.get_config(),
                num_samples=positive("num-samples", fv["num-samples"].value),
                overwrite=fv.overwrite,
            )
        except QuickstartError as e:
            raise UsageError(str(e)) from None
        print(json.dumps(summary["test_metrics"], indent=2))
        print(f"metrics: {summary['evaluation_dir']}/tables.md   maps: {summary['maps_dir']}/")
        print(f"overview (X-rays above their infection maps): {summary['overview']}")
        return 0

    return run_main(body, log_format="%(asctime)s %(levelname)s %(message)s")
