"""What every entry point shares: flag parsing into a fresh FlagValues, `--help`, and
turning the errors that already name the setting or file to fix into one line + exit 2."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from qatacov_jax.data import image_limits
from qatacov_jax.data.features import DataError
from qatacov_jax.export.manifest import read_manifest
from qatacov_jax.export.onnx_runtime import export_source
from qatacov_jax.inference.infection_map import DEFAULT_DISPLAY_FLOOR
from qatacov_jax.inference.runs import CorruptRunError, ModelSource, run_source
from qatacov_jax.runtime.compile_cache import enable_compilation_cache
from qatacov_jax.runtime.console import setup_cli_logging
from qatacov_jax.runtime.locking import DirectoryLockedError
from qatacov_jax.runtime.storage import StorageError, describe, quiet_storage_noise, storage_errno
from qatacov_jax.training.run_files import CHECKPOINT_CHOICES

# Errors whose message is the whole story (it names the file or setting and the fix): the
# user sees the message, not a traceback. ValueError covers `rundir.RunDirMismatchError` and
# `weights.WeightsError`, which are not imported here: their modules load JAX, and
# `infer.py --model` / `serve.py --model` run an ONNX export without it.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DirectoryLockedError,
    FileNotFoundError,
    FileExistsError,
    DataError,
    ValueError,
)


# Exit codes beyond 0 (done), 1 (some inputs failed) and 2 (refused): see
# docs/reliability.md#exit-codes and docs/troubleshooting.md.
EXIT_CORRUPT = 65  # EX_DATAERR: a run's file (config, preprocessing, checkpoint) is damaged
EXIT_STORAGE = 74  # EX_IOERR: an output cannot be written (full, read-only, a mount point)
EXIT_INTERRUPTED = 75  # TrainingInterrupted.EXIT_CODE, EX_TEMPFAIL: stopped by a signal
EXIT_KEYBOARD = 130  # a second Ctrl-C / signal outside a step boundary


class UsageError(Exception):
    """Bad command line: the message says which flag and what to do."""


class HelpPrinted(Exception):
    """`--help` was printed: `run_main` ends the command with exit code 0."""


def new_flags() -> flags.FlagValues:
    """A fresh flag registry with `--help`, for one parse."""
    fv = flags.FlagValues()
    flags.DEFINE_boolean("help", False, "Show this help and exit.", flag_values=fv)
    return fv


def parse(fv: flags.FlagValues, argv: Sequence[str], prog: str, doc: str) -> list[str] | None:
    """Parses `argv` (without the program name) into `fv`.

    Returns:
      The positional arguments, or None when `--help` was printed.

    Raises:
      UsageError: an unknown flag, a bad value or a missing required flag.
    """
    if "--help" in argv or "-h" in argv:
        # Before parsing: absl checks required flags while parsing, so `--help` alone
        # would be refused for the very flags it is meant to explain.
        print(doc.strip() + "\n\n" + fv.get_help())
        return None
    try:
        rest = fv([prog, *argv])[1:]
    except flags.Error as e:
        raise UsageError(f"{e}. Run `python {prog} --help` for the options.") from None
    if fv["help"].value:
        print(doc.strip() + "\n\n" + fv.get_help())
        return None
    return rest


def parse_command(
    define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None, prog: str, doc: str
) -> tuple[flags.FlagValues, list[str]]:
    """Defines a command's flags (`define(fv)`) on a fresh registry and parses `argv`.

    Returns:
      (flag values, positional arguments).

    Raises:
      HelpPrinted: `--help` was given (and printed).
      UsageError: an unknown flag, a bad value or a missing required flag.
    """
    fv = new_flags()
    define(fv)
    rest = parse(fv, list(argv or []), prog, doc)
    if rest is None:
        raise HelpPrinted
    return fv, rest


def run_main(
    body: Callable[[], int | None], *, log_format: str = "%(levelname)s %(message)s"
) -> int:
    """Runs a command's body with console logging; `UsageError` and `USER_ERRORS` end it
    with `error: <message>` on stderr and exit code 2 instead of a traceback; a storage
    fault with exit code 74 and a signal-requested stop with 75 (both one line)."""
    try:
        setup_cli_logging(log_format)
        with quiet_storage_noise():  # one line for a full disk, not a pile of tracebacks
            code = body()
    except HelpPrinted:
        return 0
    except CorruptRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CORRUPT
    except _training_error("TrainingInterrupted") as e:
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STORAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_KEYBOARD
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (*USER_ERRORS, *_training_error("NonFiniteLossError")) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written, whatever wrote it
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_STORAGE
    return 0 if code is None else int(code)


def _training_error(name: str) -> tuple[type[BaseException], ...]:
    """The training exception `name` if the training code that raises it was imported, else
    nothing to catch. Importing it here would load the training loop, and with it clu's
    writers and TensorFlow (4 s of each start of serve.py / infer.py, which never train)."""
    for module in ("qatacov_jax.training.faults", "qatacov_jax.training.loop"):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return (cls,)
    return ()


def os_error_line(e: OSError) -> str:
    """One line for a failed file operation: what, where, why (no traceback)."""
    code = storage_errno(e) or e.errno
    if code == errno.EBUSY:
        why = "it is in use or a mount point (EBUSY); write to a folder inside it"
    else:
        why = describe(code) if code else (e.strerror or str(e))
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
    return f"cannot write {where}: {why}" if where else f"{why}"


def in_unit_interval(name: str, value: float) -> float:
    """`value` if in (0, 1], else a UsageError naming `--name`."""
    if not 0.0 < value <= 1.0:
        raise UsageError(f"--{name} must be in (0, 1], got {value}")
    return value


def define_map_flags(fv: flags.FlagValues) -> None:
    """--threshold, --lung-threshold, --display-floor: how probabilities become masks and
    infection maps (scripts/infer.py and scripts/serve.py); read back by `map_settings`."""
    flags.DEFINE_float(
        "threshold", 0.5, "probability at or above which a pixel is infected", flag_values=fv
    )
    flags.DEFINE_float("lung-threshold", 0.5, "the same for the lung model", flag_values=fv)
    flags.DEFINE_float(
        "display-floor",
        DEFAULT_DISPLAY_FLOOR,
        "probabilities below this show the plain X-ray",
        flag_values=fv,
    )


def define_input_flags(fv: flags.FlagValues) -> None:
    """--max-megapixels and --compilation-cache, the settings every command that reads
    X-rays and compiles a model shares (scripts/infer.py, evaluate.py, serve.py); applied
    by `apply_input_flags`."""
    flags.DEFINE_float(
        "max-megapixels",
        None,
        "refuse images of more pixels than this, read from the file's header before "
        f"decoding (default ${image_limits.MAX_MEGAPIXELS_ENV} or "
        f"{image_limits.DEFAULT_MAX_MEGAPIXELS:g})",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "compilation-cache",
        None,
        "folder of JAX's persistent compilation cache, or 'off' (default "
        "$QATACOV_COMPILATION_CACHE or ~/.cache/qatacov_jax/jax)",
        flag_values=fv,
    )


def apply_input_flags(fv: flags.FlagValues, *, compiles: bool = True) -> None:
    """Sets the process's pixel budget and compilation cache from `define_input_flags`;
    `compiles=False` (an ONNX export is served: nothing is compiled) leaves JAX unloaded."""
    mp = fv["max-megapixels"].value
    if mp is not None and not mp > 0:
        raise UsageError(f"--max-megapixels must be positive, got {mp}")
    image_limits.set_max_megapixels(mp)
    try:
        image_limits.max_pixels()  # a bad environment value is refused now, not per image
    except ValueError as e:
        raise UsageError(str(e)) from None
    if compiles:
        enable_compilation_cache(fv["compilation-cache"].value)


def define_which_flag(
    fv: flags.FlagValues, help_text: str = "which checkpoint of the run(s)"
) -> None:
    """--which: the checkpoint of each run to load (`training.rundir.CHECKPOINT_CHOICES`)."""
    flags.DEFINE_enum("which", "best", list(CHECKPOINT_CHOICES), help_text, flag_values=fv)


def map_settings(
    fv: flags.FlagValues, source: ModelSource | None = None
) -> tuple[float, float, float]:
    """(threshold, lung threshold, display floor) of `define_map_flags`, checked: a
    UsageError names the flag out of range. A threshold flag not given defaults to the one
    `source` records (an export's manifest), else 0.5."""
    recorded = source.thresholds if source is not None else {}
    values = {}
    for flag, role in (("threshold", "infection"), ("lung-threshold", "lung")):
        given = fv[flag].value if fv[flag].present or role not in recorded else recorded[role]
        values[flag] = in_unit_interval(flag, given)
    display_floor = fv["display-floor"].value
    if not 0.0 <= display_floor < 1.0:
        raise UsageError(f"--display-floor must be in [0, 1), got {display_floor}")
    return values["threshold"], values["lung-threshold"], display_floor


def define_model_flag(fv: flags.FlagValues) -> None:
    """--model EXPORT_DIR: an ONNX export run on ONNX Runtime instead of a --checkpoint run
    (`model_source`)."""
    flags.DEFINE_string(
        "model",
        None,
        "an ONNX export (scripts/export.py --format onnx) to run on ONNX Runtime without JAX, "
        "instead of --checkpoint; its lung model and thresholds come with it",
        flag_values=fv,
    )


def model_source(fv: flags.FlagValues) -> ModelSource:
    """The models of `--checkpoint RUN [--lung-checkpoint LUNG_RUN] [--which]`, or of
    --model EXPORT_DIR; a UsageError for a mix, or for a folder given to the wrong flag."""
    v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
    if (v("checkpoint") is None) == (v("model") is None):
        raise UsageError(
            "give --checkpoint RUN (a training run) or --model EXPORT_DIR (an ONNX export), "
            "one of the two"
        )
    if v("model") is not None:
        clash = [f"--{f}" for f in ("lung-checkpoint", "which") if fv[f].present]
        if clash:
            raise UsageError(
                f"{' and '.join(clash)} apply to --checkpoint runs; an export holds the "
                "checkpoint and lung model it was exported with (scripts/export.py)"
            )
        return export_source(v("model"))
    if read_manifest(v("checkpoint")) is not None:
        raise UsageError(
            f"--checkpoint {v('checkpoint')} is an exported model, not a training run: pass it "
            "as --model"
        )
    return run_source(v("checkpoint"), v("lung-checkpoint"), v("which"))


def positive(name: str, value: Any) -> Any:
    if value is not None and value <= 0:
        raise UsageError(f"--{name} must be a positive integer, got {value}")
    return value
