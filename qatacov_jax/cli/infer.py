"""`scripts/infer.py --checkpoint RUN FILES_OR_FOLDERS... --out DIR`: infection maps, masks,
the COVID-19 decision and severity for chest X-ray files (outputs: `inference.files`).

`--model EXPORT_DIR` runs an ONNX export (`scripts/export.py --format onnx`) on ONNX Runtime
instead, and never imports JAX (`model_source`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from absl import flags

from qatacov_jax.cli.common import (
    UsageError,
    apply_input_flags,
    define_input_flags,
    define_map_flags,
    define_model_flag,
    define_which_flag,
    map_settings,
    model_source,
    parse_command,
    positive,
    run_main,
)
from qatacov_jax.inference.files import infer_files
from qatacov_jax.inference.runs import ModelSource
from qatacov_jax.runtime.locking import run_dir_lock
from qatacov_jax.runtime.storage import check_writable

log = logging.getLogger(__name__)

PROG = "scripts/infer.py"
DOC = """COVID-19 infection maps, masks, detection and severity for chest X-rays.

    python scripts/infer.py --checkpoint RUN XRAYS_DIR a.png b.dcm --out maps/ \\
        [--lung-checkpoint LUNG_RUN] [--threshold 0.5] [--batch-size 64] [--overwrite]
    python scripts/infer.py --model EXPORT_DIR XRAYS_DIR --out maps/   # ONNX Runtime, no JAX"""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "checkpoint",
        None,
        "run directory of the infection model (train.py --workdir, or fold_k/)",
        flag_values=fv,
    )
    define_model_flag(fv)
    flags.DEFINE_string("out", None, "output folder", flag_values=fv, required=True)
    flags.DEFINE_string(
        "lung-checkpoint",
        None,
        "run directory of a lung model: adds % of lung area and severity",
        flag_values=fv,
    )
    define_map_flags(fv)
    flags.DEFINE_integer(
        "batch-size",
        None,
        "images per step over all devices (default 8 per device)",
        flag_values=fv,
    )
    define_which_flag(fv)
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "replace existing outputs (a killed run of ours is finished without it)",
        flag_values=fv,
    )
    define_input_flags(fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 all good, 1 some inputs failed, 2 refused, 65 a
    damaged run file, 74 --out cannot be written)."""

    def body() -> int:
        fv, inputs = parse_command(_define, argv, PROG, DOC)
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        if not inputs:
            raise UsageError("no image files or folders given")
        source = model_source(fv)
        threshold, lung_threshold, display_floor = map_settings(fv, source)
        batch_size = positive("batch-size", v("batch-size"))
        apply_input_flags(fv, compiles=source.engine == "jax")
        check_writable(v("out"), "the --out folder")  # exit 74 in one line, before any work
        # One writer per --out folder (runtime/locking.py): a second infer.py into the same
        # folder is refused at once, naming the first.
        with run_dir_lock(v("out"), purpose="infer"):
            rows = _infer(fv, source, inputs, threshold, lung_threshold, display_floor, batch_size)
        failed = [r for r in rows if r["status"] != "ok"]
        if failed:
            print(f"{len(failed)} input(s) failed:", file=sys.stderr)
            for r in failed:
                print(f"  {r['file']}: {r['error']}", file=sys.stderr)
            return 1
        return 0

    return run_main(body)


def _infer(
    fv: flags.FlagValues,
    source: ModelSource,
    inputs: list[str],
    threshold: float,
    lung_threshold: float,
    display_floor: float,
    batch_size: int | None,
) -> list[dict]:
    v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
    return infer_files(
        source,
        inputs,
        v("out"),
        threshold=threshold,
        lung_threshold=lung_threshold,
        display_floor=display_floor,
        batch_size=batch_size,
        which=v("which"),
        overwrite=v("overwrite"),
    )
