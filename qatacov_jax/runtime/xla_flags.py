"""XLA flags the scripts and benchmarks set before JAX starts (CPU speed; harmless on GPU).

XLA reads `XLA_FLAGS` once, when the first backend is created, so `apply_defaults()` must run
before anything calls `jax.devices()` or runs a computation (importing jax is fine). Flags the
user already put in `XLA_FLAGS` win; `QATACOV_XLA_DEFAULTS=0` turns the defaults off.
`import qatacov_jax` applies them (`apply_at_import`), so library users get them for free as
long as they import the package before JAX runs anything; if JAX's backend is already up by
then, it warns once, naming the fix. The command-line scripts also call `apply_defaults` first
thing.

What was measured (U-Net DenseNet-121, 224x224, batch 8, float32, 2-core Xeon with AVX-512,
jax/jaxlib 0.10.2; `benchmarks/compare_keras.py` and per-conv micro-benchmarks):

* jaxlib 0.10.2 hands every convolution to YNNPACK by default (`__ynn_fusion` in the
  compiled HLO). On this CPU that path was 1.7x slower than XLA's own (Eigen) convolution
  for a 3x3 conv 128->32 at 56x56 (12.7 vs 7.5 ms at batch 8) and 3-5x slower for 1x1
  convs; the whole U-Net went from 92 to 59 ms per image when it is switched off. Hence
  `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` ("-" removes one entry
  from the default list). Removing YNNPACK's other fusion types as well changed nothing
  measurable. Older jaxlibs do not know the flag (XLA aborts on an unknown flag), so it is
  only added from jaxlib 0.10 on.
* Measured and not adopted (so nobody has to measure them again blind):
  `--xla_cpu_use_onednn=true` and `--xla_cpu_experimental_onednn_custom_call=true` (outputs
  bit-identical to the default, time within noise: this build does not route convolutions
  to oneDNN); `--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY`
  and `--xla_cpu_experimental_xnn_fusion_type=individual_convolution` (no faster on the
  whole model); `--xla_cpu_experimental_xnn_fusion_type=dot`,
  `--xla_cpu_experimental_ynn_fusion_type=dot` and `--xla_cpu_prefer_vector_width=512`
  (within noise).
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib import metadata

# YNNPACK convolutions off (see the module docstring); understood from jaxlib 0.10.
YNN_CONV_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _jaxlib_version() -> tuple[int, ...]:
    """jaxlib's (major, minor) without importing jax's backend (0, 0 if unknown)."""
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def default_flags() -> tuple[str, ...]:
    """The flags `apply_defaults` adds for the installed jaxlib."""
    return (YNN_CONV_OFF,) if _jaxlib_version() >= (0, 10) else ()


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merged(existing: str, defaults: tuple[str, ...] = ()) -> str:
    """`existing` XLA_FLAGS plus every default whose flag name it does not already set."""
    have = {_name(f) for f in existing.split()}
    extra = [f for f in defaults if _name(f) not in have]
    return " ".join([*existing.split(), *extra])


def apply_defaults(extra: tuple[str, ...] = ()) -> str:
    """Adds `default_flags()` (and `extra`) to `XLA_FLAGS` unless set already; returns the result.

    Call before JAX creates its backend. With `QATACOV_XLA_DEFAULTS=0` only `extra` is added.
    Also sets `TF_CPP_MIN_LOG_LEVEL=1` unless set (TensorFlow's start-up INFO notices off).
    """
    # TensorFlow (TFDS's image codecs) prints C++ INFO notices (oneDNN) when it loads;
    # level 1 keeps its warnings and errors. Read once, at TensorFlow's import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    defaults = () if os.environ.get("QATACOV_XLA_DEFAULTS", "1") == "0" else default_flags()
    flags = merged(os.environ.get("XLA_FLAGS", ""), (*defaults, *extra))
    if flags:
        os.environ["XLA_FLAGS"] = flags
    return flags


def _backend_started() -> bool:
    """Whether JAX has created a backend (after which XLA_FLAGS is no longer read).

    Looks only at modules already imported: never imports (let alone starts) JAX itself.
    """
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:
        return False
    try:
        return bool(bridge.backends_are_initialized())
    except Exception:  # a JAX release without it: assume started, so at worst we warn
        return True


def _default_platform() -> str:
    """The started backend's platform ("cpu", "gpu", ...), "cpu" when it cannot be read."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    try:
        return str(bridge._default_backend.platform)  # type: ignore[union-attr]
    except Exception:  # private attribute moved: warn as if on CPU
        return "cpu"


def missing_defaults(flags: str | None = None) -> tuple[str, ...]:
    """The default flags whose name `flags` (default: `$XLA_FLAGS`) does not set."""
    if os.environ.get("QATACOV_XLA_DEFAULTS", "1") == "0":
        return ()
    have = {_name(f) for f in (os.environ.get("XLA_FLAGS", "") if flags is None else flags).split()}
    return tuple(f for f in default_flags() if _name(f) not in have)


def apply_at_import() -> None:
    """What `import qatacov_jax` does: `apply_defaults()` while JAX's backend has not started;
    once it has (too late for XLA_FLAGS), a one-line `RuntimeWarning` naming the fix when a
    default is missing. Never raises."""
    if not _backend_started():
        apply_defaults()
        return
    missing = missing_defaults()
    if missing and _default_platform() == "cpu":  # the defaults only concern XLA:CPU
        warnings.warn(
            "JAX started before qatacov_jax was imported, so its XLA defaults are off "
            "(CPU convolutions up to 1.7x slower); import qatacov_jax before running any JAX "
            f"code, or start Python with XLA_FLAGS='{' '.join(missing)}' "
            "(QATACOV_XLA_DEFAULTS=0 silences this).",
            RuntimeWarning,
            stacklevel=3,
        )
