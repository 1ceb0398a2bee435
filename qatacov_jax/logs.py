"""Console logging and error reporting shared by the command-line entry points."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any


def quiet_orbax(record: logging.LogRecord) -> bool:
    """Logging filter: drops orbax's INFO chatter (it narrates every checkpoint read and
    write), keeping the console to our own progress and metrics; warnings still show."""
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def setup_cli_logging(fmt: str = "%(levelname)s %(message)s") -> None:
    """INFO logging to stderr, without orbax's INFO lines, for argparse-based scripts."""
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet_orbax)


def start_absl_script(argv: list[str]) -> None:
    """The common start of the absl entry points (train, cross_validate): refuse stray
    positional arguments, log at INFO through absl without orbax's INFO lines."""
    from absl import app
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().python_handler.addFilter(quiet_orbax)


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls `fn`; the training errors that already name the file or setting to fix (a
    workdir of another configuration, a non-finite loss, a missing file) end the script
    with that message and exit code 2 instead of a traceback."""
    from absl import logging as absl_logging

    from qatacov_jax.checkpoint import RunDirMismatchError
    from qatacov_jax.train import NonFiniteLossError

    try:
        return fn(*args, **kwargs)
    except (RunDirMismatchError, NonFiniteLossError, FileNotFoundError) as e:
        absl_logging.error("%s", e)
        sys.exit(2)
