"""`scripts/train.py --config CONFIG --workdir RUN [--config.<field>=value ...]`: trains one
configuration (optionally one CV fold) into a run directory, resuming if it holds one."""

from __future__ import annotations

import logging
import re
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

Any config field can be overridden with `--config.<path>=<value>` (`=None` for None, e.g.
`--config.fold=None` for the dataset's own splits). Restarting with the same
`--workdir` resumes from its latest checkpoint; a workdir holding a different configuration
is refused. Multi-host: run the same command on every host with
`--config.distributed.initialize=True`.

Exit codes: 0 done, 2 refused (bad setting, workdir of another config or in use by another
process), 74 disk full / read-only while writing, 75 stopped by SIGTERM/SIGINT after saving
a checkpoint (rerun to resume)."""


# Exactly the Python literal: lower-case "none" is a real value of some string fields
# (config.data.augment="none").
NONE_WORDS = ("None",)


def _split_none_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Takes `--config.<path>=None` out of `argv` (absl parses it as the field's type, so
    an int field such as `fold` could never be set to None); returns (rest, paths)."""
    rest, paths = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name.startswith("--config.") and eq and value in NONE_WORDS:
            paths.append(name[len("--config.") :])
        elif (name.startswith("--config.") and not eq and i + 1 < len(argv)) and argv[
            i + 1
        ] in NONE_WORDS:
            paths.append(name[len("--config.") :])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, paths


def _config_file(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.partition("=")[2]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return "?"


def _config_error(e: BaseException, argv: Sequence[str], prog: str) -> UsageError:
    """One line for an error raised while loading the config file or applying overrides."""
    text = str(e).strip().strip("'\"").replace("\\'", "'")
    if isinstance(e, AttributeError | KeyError):
        # ml_collections: '\'lrr\'\nDid you mean "lr" instead of "lrr"?' or 'Key "lrr" does
        # not exist ...': name the override that holds the unknown key.
        key = re.search(r"""^['"]?(?:Key ")?([\w-]+)""", text)
        hint = re.search(r'Did you mean "([\w-]+)"', text)
        overrides = [a.partition("=")[0] for a in argv if a.startswith("--config.")]
        culprit = [o for o in overrides if key and key.group(1) in o[len("--config.") :].split(".")]
        where = culprit[0] if culprit else (f"config key {key.group(1)!r}" if key else text)
        return UsageError(
            f"{where}: no such setting in --config {_config_file(argv)}"
            + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
            + f". Run `python {prog} --help` for how to override settings."
        )
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errnos = [line for line in lines if "Errno" in line]
    cause = errnos[0] if errnos else (lines[0] if lines else type(e).__name__)
    return UsageError(
        f"--config {_config_file(argv)}: cannot load the config ({cause}). Pass an existing "
        "configs/*.py file."
    )


def config_and_workdir(
    argv: Sequence[str],
    prog: str,
    doc: str,
    workdir_help: str,
    define: Callable[[flags.FlagValues], None] | None = None,
) -> flags.FlagValues:
    """Parses `--config FILE [--config.x=y ...] --workdir DIR` (+ what `define(fv)` adds).

    `--config.<field>=None` sets a field to None (e.g. `--config.fold=None`: the dataset's
    own splits). Errors loading the config file or applying an override (an unknown file,
    a typo in a field name) end in one line naming it (exit 2), not a traceback.

    Raises:
      HelpPrinted: `--help` was given (and printed); `run_main` exits 0.
      UsageError: a stray argument, a missing --config / --workdir, or a bad value.
    """
    argv, none_paths = _split_none_overrides(list(argv))

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

    try:
        fv, rest = parse_command(define_all, argv, prog, doc)
        if fv["config"].value is not None:
            fv["config"].value.keys()  # a file that failed to load raises only when used
    except (OSError, AttributeError, KeyError, TypeError, ValueError, SyntaxError) as e:
        raise _config_error(e, argv, prog) from None
    if rest:
        raise UsageError(f"unexpected arguments {rest}")
    for name in ("config", "workdir"):
        if fv[name].value is None:
            raise UsageError(f"--{name} is required")
    for path in none_paths:
        *parents, leaf = path.split(".")
        node = fv.config
        try:
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(leaf)
            node[leaf] = None
        except (KeyError, AttributeError, TypeError) as e:
            raise _config_error(KeyError(f'Key "{leaf}"'), [f"--config.{path}", *argv], prog) from e
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
