"""`scripts/export.py RUN --format {stablehlo,savedmodel,onnx} --out DIR`: a trained run as a
serialized artifact for deployment, with `manifest.json` (logic: `qatacov_jax.export`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from absl import flags

from qatacov_jax.cli.common import (
    UsageError,
    define_which_flag,
    in_unit_interval,
    parse_command,
    run_main,
)
from qatacov_jax.export.artifact import (
    FORMATS,
    PLATFORMS,
    FormatUnavailableError,
    check_format,
    export_run,
)
from qatacov_jax.export.serving import COMPUTE_DTYPES, INPUT_DTYPES

log = logging.getLogger(__name__)

PROG = "scripts/export.py"
DOC = """Exports a trained run for deployment: pixels in, probabilities out, BatchNorm folded,
preprocessing and sigmoid inside, optionally with a lung model in the same call.

    python scripts/export.py RUN --format savedmodel --out exported/ \\
        [--lung-checkpoint LUNG_RUN] [--dtype float32|bfloat16|float16] [--batch N|dynamic] \\
        [--input-dtype uint8|float32] [--platforms cpu,cuda] [--overwrite]

savedmodel: a TF SavedModel (signature 'serving_default') that serves with TensorFlow alone;
stablehlo: a serialized jax.export module (jax.export.deserialize); onnx: model.onnx (opset
17, float32) that ONNX Runtime serves alone (pip install 'qatacov-jax[onnx]'). manifest.json
beside it says what to feed, what comes out, the source run(s) and sha256 of the files."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("format", None, list(FORMATS), "artifact format", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory to create", flag_values=fv)
    flags.DEFINE_string(
        "lung-checkpoint",
        None,
        "run directory of a lung model, exported in the same call (output 'lung')",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "dtype",
        "float32",
        [*COMPUTE_DTYPES, "float16"],
        "compute dtype of the exported models (outputs stay float32); bfloat16 for the JAX "
        "formats, float16 for --format onnx",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "batch", "dynamic", "fixed batch size N, or 'dynamic' for any batch", flag_values=fv
    )
    flags.DEFINE_enum(
        "input-dtype",
        "uint8",
        list(INPUT_DTYPES),
        "pixels fed to the artifact: uint8 0..255 or float32 in [0, 1]",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "platforms",
        ["cpu"],
        f"platforms to lower for, comma-separated, from {','.join(PLATFORMS)}",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "threshold", 0.5, "infection threshold recorded in the manifest", flag_values=fv
    )
    flags.DEFINE_float(
        "lung-threshold", 0.5, "lung threshold recorded in the manifest", flag_values=fv
    )
    define_which_flag(fv)
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "replace --out if it holds an earlier export (never any other directory)",
        flag_values=fv,
    )


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch <= 0:
        raise UsageError(f"--batch must be a positive integer or 'dynamic', got {value!r}")
    return batch


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 written, 2 refused)."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        if len(rest) != 1:
            raise UsageError(f"expected one run directory, got {rest or 'none'}")
        for name in ("format", "out"):
            if v(name) is None:
                raise UsageError(f"--{name} is required")
        try:
            check_format(v("format"), v("dtype"))
        except FormatUnavailableError as e:
            raise UsageError(str(e)) from None
        export_run(
            rest[0],
            v("out"),
            fmt=v("format"),
            lung_run=v("lung-checkpoint"),
            which=v("which"),
            dtype=v("dtype"),
            input_dtype=v("input-dtype"),
            batch=_batch(v("batch")),
            threshold=in_unit_interval("threshold", v("threshold")),
            lung_threshold=in_unit_interval("lung-threshold", v("lung-threshold")),
            platforms=v("platforms"),
            overwrite=v("overwrite"),
        )
        return 0

    return run_main(body)
