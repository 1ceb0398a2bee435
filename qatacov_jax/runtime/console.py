"""Console logging of the command-line entry points: INFO to stderr, library noise off."""

from __future__ import annotations

import logging
import sys

from absl import logging as absl_logging

# (path fragment of the logging module, lowest level that still shows). Below it these
# libraries only narrate routine work: orbax every checkpoint read and write; TFDS every
# dataset-info load, that a builder config is "custom" (ours always are) and that OpenCV
# would decode faster; TensorFlow every SavedModel write (assets, fingerprint, sharding
# timings); JAX that it found no TPU.
_QUIET_BELOW = (
    ("/orbax/", logging.WARNING),
    ("/tensorflow_datasets/", logging.ERROR),
    ("/tensorflow/", logging.WARNING),
    ("/jax/_src/xla_bridge.py", logging.WARNING),
)
# Warnings that only restate what we asked for: orbax on checkpoints opened read-only
# (evaluation and inference never write into a run).
_EXPECTED_WARNINGS = ("read_only=True", "is read only")


def quiet_libraries(record: logging.LogRecord) -> bool:
    """Logging filter: keeps our own progress and metrics and every real library warning."""
    for fragment, level in _QUIET_BELOW:
        if fragment in record.pathname and record.levelno < level:
            return False
    if "/orbax/" in record.pathname and record.levelno == logging.WARNING:
        return not any(s in record.getMessage() for s in _EXPECTED_WARNINGS)
    return True


def setup_cli_logging(fmt: str = "%(levelname)s %(message)s") -> None:
    """INFO logging to stderr in one format, without the libraries' routine chatter.

    absl's logger (used by the training loop, as in Flax's examples) propagates to the root
    handler set here, so every module logs through one handler with one format. `force`
    replaces a handler an imported library may already have put on the root logger.
    """
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet_libraries)
    absl_logging.set_verbosity(absl_logging.INFO)
