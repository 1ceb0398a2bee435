"""Timing helpers for the benchmarks: warm-up, `block_until_ready`, repeats, median + spread,
compile time, XLA's FLOP count, and what the run was made on.

Every figure the benchmarks print comes from here, so every figure is measured the same way:
the function is compiled first (timed separately), run `warmup` times untimed, then
`repeats` times, each call synchronised with `jax.block_until_ready`; the report gives the
median and the 10th/90th percentiles (robust on a machine other processes share).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jaxlib
import numpy as np
import optax
from flax import nnx

from qatacov_jax.models import TRAINABLE
from qatacov_jax.models.folding import make_forward
from qatacov_jax.runtime import sharding
from qatacov_jax.runtime.files import write_json, write_text
from qatacov_jax.training.losses import LossSpec
from qatacov_jax.training.steps import make_train_step

# Dense (no sparsity) peak FLOP/s per device, by device kind and compute dtype, from the
# vendors' data sheets. float32 on Hopper means TF32 tensor cores, which XLA uses for float32
# matmuls/convs at JAX's default precision. CPUs are left out on purpose: their peak depends on
# clock, core count and ISA in ways a device string does not tell.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989e12, "float32": 494.5e12},  # SXM
    "NVIDIA H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "NVIDIA H100 NVL": {"bfloat16": 835e12, "float32": 418e12},
    "NVIDIA H200": {"bfloat16": 989e12, "float32": 494.5e12},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312e12, "float32": 156e12},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312e12, "float32": 156e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device of `device_kind` for `dtype`, or None if unknown."""
    for kind, peaks in PEAK_FLOPS.items():
        if device_kind == kind or device_kind.startswith(kind):
            return peaks.get(dtype)
    return None


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds per call over `repeats` synchronised calls."""

    median: float
    p10: float
    p90: float
    minimum: float
    repeats: int

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Timing:
        if not samples:
            raise ValueError("No timing samples; use repeats >= 1.")
        a = np.asarray(samples, dtype=np.float64)
        return cls(
            median=float(np.median(a)),
            p10=float(np.percentile(a, 10)),
            p90=float(np.percentile(a, 90)),
            minimum=float(a.min()),
            repeats=len(a),
        )

    def per_item(self, n: int) -> Timing:
        """The same timing divided by `n` (e.g. per sample of a batch)."""
        return Timing(self.median / n, self.p10 / n, self.p90 / n, self.minimum / n, self.repeats)

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def ms_with_spread(timing: Mapping[str, float]) -> str:
    """A report's cell for a `Timing.to_dict()` in seconds: "median (p10-p90)" in ms."""
    ms = {k: 1e3 * timing[k] for k in ("median", "p10", "p90")}
    return f"{ms['median']:.1f} ({ms['p10']:.1f}-{ms['p90']:.1f})"


def time_calls(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 10, min_time: float = 0.0
) -> Timing:
    """Times `fn()` (which must return JAX arrays, or anything `block_until_ready` accepts).

    Args:
      fn: a no-argument callable; inputs should already be on device so that only the
        computation is timed.
      warmup: untimed calls first (caches, allocator, thread pools).
      repeats: timed calls at least.
      min_time: keep calling until this many seconds have been timed too (a floor for very
        fast functions, where a fixed count would be dominated by timer noise).
    """
    for _ in range(warmup):
        jax.block_until_ready(fn())
    samples: list[float] = []
    total = 0.0
    while len(samples) < repeats or total < min_time:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        dt = time.perf_counter() - t0
        samples.append(dt)
        total += dt
    return Timing.from_samples(samples)


def compile_timed(jitted: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Lowers and compiles `jitted(*args)` ahead of time.

    Returns:
      (compiled executable, seconds spent tracing + lowering + compiling).
    """
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def flop_count(compiled: Any) -> float | None:
    """XLA's FLOP estimate for one call of a compiled executable (None if XLA gives none).

    On a multi-device executable XLA reports the per-device (SPMD partition) count.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it; the report then says "n/a"
        return None
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per partition
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def publish(
    report: dict[str, Any], markdown: str, json_path: Any = None, markdown_path: Any = None
) -> None:
    """Prints a benchmark's Markdown report and writes it (and the JSON) where asked, atomically."""
    print(markdown)
    if json_path:
        write_json(json_path, report)
    if markdown_path:
        write_text(markdown_path, markdown + "\n")


def environment() -> dict[str, Any]:
    """What a benchmark figure was measured on: devices, versions, flags, host, date."""
    devices = jax.devices()
    return {
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_cpu": _cpu_name(),
        "host_cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------ model measurements


def _random_batch(shape: tuple[int, ...], sharding: Any, seed: int = 0) -> jax.Array:
    # Inputs are placed on the devices before timing: only the computation is measured.
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return jax.device_put(x, sharding)


def measure_inference(
    model: Any,
    mesh: Any,
    *,
    batch_size: int,
    image_size: int,
    repeats: int,
    warmup: int = 1,
    fold: bool = True,
) -> dict[str, Any]:
    """Times the model's forward pass as a jitted pure function on a batch already on device.

    The model is split once (`models.folding.make_forward`: BatchNorm folded unless `fold`
    is False); `jax.jit` compiles the pure function with the
    state replicated and the batch `(batch_size, image_size, image_size, 3)` split over the
    mesh's `data` axis. The model must be in eval mode (BatchNorm running statistics).

    Returns:
      `batch_size`, `compile_s`, `timing` (per batch, seconds), `ms_per_sample` (median),
      `samples_per_s`, `flops_per_sample` (XLA's count, None if unknown).
    """
    n_dev = mesh.devices.size
    forward, state = make_forward(model, fold=fold)
    state = sharding.replicate(state, mesh)
    x = _random_batch((batch_size, image_size, image_size, 3), sharding.data_sharding(mesh))

    jitted = jax.jit(
        forward,
        in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
        out_shardings=sharding.data_sharding(mesh),
    )
    compiled, compile_s = compile_timed(jitted, state, x)
    timing = time_calls(lambda: compiled(state, x), warmup=warmup, repeats=repeats)
    flops = flop_count(compiled)
    # cost_analysis counts one SPMD partition (the batch is n_dev of them).
    return {
        "batch_size": batch_size,
        "compile_s": compile_s,
        "timing": timing.to_dict(),
        "ms_per_sample": 1e3 * timing.median / batch_size,
        "samples_per_s": batch_size / timing.median,
        "flops_per_sample": None if flops is None else flops * n_dev / batch_size,
    }


def measure_training(
    model: Any,
    mesh: Any,
    *,
    batch_size: int,
    image_size: int,
    repeats: int,
    warmup: int = 1,
) -> dict[str, Any]:
    """Times the project's full training step (hybrid loss, Adam on the trainable variables,
    BatchNorm in training mode, donated state) from `qatacov_jax.training.steps.make_train_step`.

    Returns:
      `batch_size`, `compile_s`, `timing` (per step, seconds), `images_per_s`,
      `flops_per_sample` (XLA's count for forward + backward + update, None if unknown).
    """
    model.train()
    # The paper's optimizer (Adam, lr 1e-4); the timing does not depend on the values.
    opt = nnx.Optimizer(model, optax.adam(1e-4), wrt=TRAINABLE)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(opt)
    state = sharding.replicate({"model": model_state, "opt": opt_state}, mesh)
    dat = sharding.data_sharding(mesh)
    shape = (batch_size, image_size, image_size)
    batch = {
        "image": _random_batch((*shape, 3), dat),
        "mask": jax.device_put(
            (np.random.default_rng(1).random((*shape, 1)) > 0.7).astype(np.float32), dat
        ),
    }
    step = make_train_step(model_def, opt_def, LossSpec(), mesh)
    compiled, compile_s = compile_timed(step, state, batch)
    flops = flop_count(compiled)
    holder = {"state": state}

    def one_step() -> Any:
        # The step donates its input state, so each call must feed the previous output back.
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    timing = time_calls(one_step, warmup=warmup, repeats=repeats)
    model.eval()
    n_dev = mesh.devices.size
    return {
        "batch_size": batch_size,
        "compile_s": compile_s,
        "timing": timing.to_dict(),
        "images_per_s": batch_size / timing.median,
        "flops_per_sample": None if flops is None else flops * n_dev / batch_size,
    }
