"""JAX's persistent compilation cache for the commands that restart often.

`scripts/serve.py`, `scripts/infer.py` and `scripts/evaluate.py` compile the same
functions on every start (the server one per batch bucket): on a 2-core CPU that is most of
the 47 s the quickstart model's server took to answer its first request. With the cache,
XLA's executables are written to disk once and read back on the next start, keyed by the
function, its shapes, the JAX/XLA version and the device, so a changed model or a JAX
upgrade simply compiles anew.

Where: `--compilation-cache DIR`, else `$QATACOV_COMPILATION_CACHE`, else
`$XDG_CACHE_HOME/qatacov_jax/jax` (`~/.cache/qatacov_jax/jax`). `off` (either way)
disables it. The folder may be deleted at any time; it only costs the next start its
compilations.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "QATACOV_COMPILATION_CACHE"
OFF = ("off", "none", "0", "false", "no")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qatacov_jax" / "jax"


def resolve_cache_dir(setting: str | None = None) -> Path | None:
    """The cache folder for `setting` (a flag's value; None/"" defers to the environment
    variable, then the default), or None when switched off."""
    value = (setting or os.environ.get(CACHE_ENV, "")).strip()
    if value.lower() in OFF:
        return None
    return Path(value).expanduser() if value else default_cache_dir()


def enable_compilation_cache(setting: str | None = None) -> Path | None:
    """Turns JAX's persistent compilation cache on (before the first compilation).

    Every executable is cached, however quick its compilation: on a loaded CPU even the
    small ones add up at start-up. A folder that cannot be created leaves the cache off
    with a warning: the command still runs, compiling as before.

    Returns:
      The cache folder, or None when off.
    """
    path = resolve_cache_dir(setting)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("compilation cache off: cannot create %s (%s)", path, e.strerror or e)
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
