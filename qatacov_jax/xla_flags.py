"""XLA flags the scripts and benchmarks set before JAX starts (CPU speed; harmless on GPU).

XLA reads `XLA_FLAGS` once, when the first backend is created, so `apply_defaults()` must run
before anything calls `jax.devices()` or runs a computation (importing jax is fine). Flags the
user already put in `XLA_FLAGS` win; `QATACOV_XLA_DEFAULTS=0` turns the defaults off.

What was measured (U-Net DenseNet-121, 224x224, batch 8, float32, 2-core Xeon shared with
other jobs, jax/jaxlib 0.10.2; every variant compiled in one process with
`lowered.compile(compiler_options=...)` and timed interleaved): no XLA:CPU flag of this
jaxlib beat the defaults beyond the machine's noise, and the oneDNN flags produced
bit-identical outputs to the default build (so this jaxlib does not route convolutions to
oneDNN at all). `DEFAULT_FLAGS` is therefore empty; what did speed the CPU up is in
`qatacov_jax.fast_forward` (BatchNorm folding, micro-batching). The flags tried are listed in
`TRIED_FLAGS`, so nobody has to measure them again blind; the mechanism stays for the day a
flag wins.
"""

from __future__ import annotations

import os

# Applied by default (see the module docstring for how they were chosen).
DEFAULT_FLAGS: tuple[str, ...] = ()

# Measured and not adopted: flag -> what the measurement showed.
TRIED_FLAGS: dict[str, str] = {
    "--xla_cpu_use_onednn=true": "outputs bit-identical to default (not used); time within noise",
    "--xla_cpu_experimental_onednn_custom_call=true": "bit-identical outputs; time within noise",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY": "no faster",
    "--xla_cpu_experimental_xnn_fusion_type=individual_convolution": "no faster (whole model)",
    "--xla_cpu_experimental_xnn_fusion_type=dot": "single convs within noise",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution": "single convs within noise",
}


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
