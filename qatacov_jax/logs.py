"""Console logging shared by the command-line entry points."""

from __future__ import annotations

import logging
import sys


def quiet_orbax(record: logging.LogRecord) -> bool:
    """Logging filter: drops orbax's INFO chatter (it narrates every checkpoint read and
    write), keeping the console to our own progress and metrics; warnings still show."""
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def setup_cli_logging(fmt: str = "%(levelname)s %(message)s") -> None:
    """INFO logging to stderr, without orbax's INFO lines, for argparse-based scripts."""
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet_orbax)
