"""The 3x3 convolutions that decide the CPU race with Keras, in every form we tried.

    .venv/bin/python benchmarks/conv_kernels.py --rounds 7 \
        --json benchmarks/results/conv_kernels_cpu.json \
        --markdown benchmarks/results/conv_kernels_cpu.md

The CPU target: our models at <= 0.70x the Keras time. After the graph-level work
(XLA's own convolutions instead of YNNPACK, BatchNorm folding, convolving upsampled inputs on
their low-resolution grid), what is left is the convolution kernel itself. This script times,
interleaved in one process, the convs that dominate the decoders and the encoder:

* `xla`: `lax.conv_general_dilated`, NHWC, with the project's XLA flags (what the models run);
* `tf_onednn`: TensorFlow's `tf.nn.conv2d` (oneDNN), the kernel the Keras originals run on
  (skipped with a note if TensorFlow is not installed);
* `winograd_f2` / `winograd_f4`: Winograd F(2x2, 3x3) and F(4x4, 3x3) written in JAX
  (separable input/output transforms + one batched matmul over the 16 / 36 tile positions;
  2.25x / 4x fewer multiplies than the direct conv; exact up to float rounding);
* `gemm_w3`: the conv as one GEMM per kernel row (the 3 column shifts stacked as channels,
  K = 3C, N = 3 x out) and a sum of row-shifted outputs.

Every variant is checked against `xla` (relative max error printed) before it is timed. The
report says which is fastest per shape; the models keep `xla` unless another wins everywhere.

A second table times the two gradients a training step needs (input `dx` and kernel `dk`)
of the same convs and of a DenseNet 1x1 conv, XLA's (what `jax.grad` makes of the conv)
against TensorFlow's `Conv2DBackpropInput` / `Conv2DBackpropFilter`; `--no-backward` skips it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # before JAX starts its backend
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's oneDNN start-up notice says nothing new

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# (name, batch, height, width, in channels, out channels): where the time goes at 224x224.
SHAPES = (
    ("UNet++ row-0/1 node, 112x112, 192->64", 8, 112, 112, 192, 64),
    ("FPN segmentation stage /4, 56x56, 256->128", 8, 56, 56, 256, 128),
    ("DenseNet-121 dense layer, 56x56, 128->32", 8, 56, 56, 128, 32),
)
# (name, batch, height, width, in, out, kernel size) for the gradient table.
BACKWARD_SHAPES = (
    *((name, b, h, w, c, o, 3) for name, b, h, w, c, o in SHAPES),
    ("DenseNet-121 1x1 bottleneck, 56x56, 256->128", 8, 56, 56, 256, 128, 1),
)

# Winograd transform matrices (Lavin & Gray 2016): B^T (input), G (kernel), A^T (output).
_F2 = (
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32),
)
_F4 = (
    np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        np.float32,
    ),
    np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        np.float32,
    ),
    np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        np.float32,
    ),
)


def conv_xla(x: jax.Array, k: jax.Array) -> jax.Array:
    """3x3 'same' conv, `x (B, H, W, C)`, `k (3, 3, C, O)` -> `(B, H, W, O)`."""
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _rows(matrix: np.ndarray, parts: list[jax.Array]) -> list[jax.Array]:
    """`matrix @ parts` with the parts as a list (small constant matrix: plain adds)."""
    return [
        sum(float(matrix[r, i]) * parts[i] for i in range(len(parts)) if matrix[r, i] != 0)
        for r in range(matrix.shape[0])
    ]


def conv_winograd(x: jax.Array, k: jax.Array, transforms: tuple[np.ndarray, ...]) -> jax.Array:
    """Winograd F(m x m, 3 x 3) of a 3x3 'same' conv (H, W multiples of m).

    Input tiles (m + 2)^2 with stride m are transformed one axis at a time (strided slices +
    adds), multiplied by the transformed kernel as one batched matmul over the (m + 2)^2 tile
    positions, transformed back one axis at a time and interleaved into the output.
    """
    bt, g, at = transforms
    m, a = at.shape[0], bt.shape[0]
    b, h, w, c = x.shape
    o = k.shape[-1]
    th, tw = h // m, w // m
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    r = jnp.stack(_rows(bt, [xp[:, i : i + m * th : m] for i in range(a)]), 0)
    v = jnp.stack(_rows(bt, [r[:, :, :, j : j + m * tw : m] for j in range(a)]), 1)
    u = jnp.einsum("xi,ijco,yj->xyco", g, k, g).reshape(a * a, c, o)
    prod = jax.lax.dot_general(v.reshape(a * a, -1, c), u, (((2,), (1,)), ((0,), (0,))))
    prod = prod.reshape(a, a, b, th, tw, o)
    t = jnp.stack(_rows(at, [prod[:, n] for n in range(a)]), 1)
    y = jnp.stack(_rows(at, [t[i] for i in range(a)]), 0)  # (m, m, B, th, tw, O)
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(b, th * m, tw * m, o)


def conv_gemm_w3(x: jax.Array, k: jax.Array) -> jax.Array:
    """3x3 conv as one GEMM over column-shift-stacked channels, then 3 row-shifted adds."""
    b, h, w, c = x.shape
    o = k.shape[-1]
    xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, :, s : s + w] for s in range(3)], -1)  # (B, H, W, 3C)
    kk = k.transpose(1, 2, 0, 3).reshape(3 * c, 3 * o)  # (col tap, C) x (row tap, O)
    y = (cols.reshape(-1, 3 * c) @ kk).reshape(b, h, w, 3, o)
    y = jnp.pad(y, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    return sum(y[:, r : r + h, :, r] for r in range(3))


VARIANTS = {
    "xla": conv_xla,
    "winograd_f2": lambda x, k: conv_winograd(x, k, _F2),
    "winograd_f4": lambda x, k: conv_winograd(x, k, _F4),
    "gemm_w3": conv_gemm_w3,
}


def _tensorflow_or_none() -> Any:
    """TensorFlow, or None where it is not installed (its columns are then left out)."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=None, help="override every shape's batch")
    p.add_argument("--no-backward", action="store_true", help="skip the gradient table")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--markdown")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be a positive integer, got {args.rounds}.")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be a positive integer, got {args.batch_size}.")
    for path in (args.json, args.markdown):
        if path is not None and path.exists() and not args.force:
            p.error(f"{path} exists; pass --force to overwrite it or choose another path.")

    from qatacov_jax.benchmarking import timing as benchmarking

    tf = _tensorflow_or_none()
    rng = np.random.default_rng(0)
    rows = []
    for name, b, h, w, c, o in SHAPES:
        b = args.batch_size or b
        x = rng.standard_normal((b, h, w, c), dtype=np.float32)
        k = (rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c)).astype(np.float32)
        runners, errors = forward_runners(x, k, tf)
        timings = interleaved(runners, args.rounds, benchmarking)
        flop = 2 * b * h * w * 9 * c * o  # direct-conv FLOPs, the common yardstick
        row = {
            "shape": name,
            "input": [b, h, w, c],
            "out_channels": o,
            "ms": {label: 1e3 * t.median for label, t in timings.items()},
            "gflops_direct_equivalent": {
                label: flop / t.median / 1e9 for label, t in timings.items()
            },
            "rel_max_error_vs_xla": errors,
            "timing": {label: t.to_dict() for label, t in timings.items()},
        }
        rows.append(row)
        print(
            f"{name}: " + ", ".join(f"{label} {ms:.1f} ms" for label, ms in row["ms"].items()),
            file=sys.stderr,
            flush=True,
        )
    backward = [] if args.no_backward else backward_rows(tf, args, rng, benchmarking)
    env = benchmarking.environment()
    if tf is not None:
        env["tensorflow"] = tf.__version__
    report = {
        "environment": env,
        "rounds": args.rounds,
        "command": "python benchmarks/conv_kernels.py " + " ".join(sys.argv[1:]),
        "rows": rows,
        "backward": backward,
    }
    benchmarking.publish(report, markdown(report), args.json, args.markdown)
    return 0


def interleaved(runners: dict[str, Any], rounds: int, benchmarking: Any) -> dict[str, Any]:
    """One warm call each, then `rounds` rounds calling every runner in turn: label -> Timing."""
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for fn in runners.values():
        fn()
    for _ in range(rounds):
        for label, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - t0)
    return {label: benchmarking.Timing.from_samples(s) for label, s in samples.items()}


def forward_runners(x: np.ndarray, k: np.ndarray, tf: Any) -> tuple[dict, dict[str, float]]:
    """label -> a call of that forward variant; label -> its max error relative to `xla`."""
    xj, kj = jax.device_put(x), jax.device_put(k)
    ref = np.asarray(jax.jit(conv_xla)(xj, kj))
    runners, errors = {}, {}
    for label, fn in VARIANTS.items():
        compiled = jax.jit(fn).lower(xj, kj).compile()
        errors[label] = float(np.abs(np.asarray(compiled(xj, kj)) - ref).max() / np.abs(ref).max())
        runners[label] = lambda f=compiled: jax.block_until_ready(f(xj, kj))
    if tf is not None:
        xt, kt = tf.constant(x), tf.constant(k)
        tconv = tf.function(lambda: tf.nn.conv2d(xt, kt, 1, "SAME"))
        errors["tf_onednn"] = float(np.abs(tconv().numpy() - ref).max() / np.abs(ref).max())
        runners["tf_onednn"] = lambda: tconv().numpy()
    return runners, errors


def backward_runners(x: np.ndarray, k: np.ndarray, g: np.ndarray, tf: Any) -> dict[str, Any]:
    """label -> a call computing that gradient (XLA's from `jax.vjp`, TensorFlow's ops)."""
    xj, kj, gj = (jax.device_put(v) for v in (x, k, g))
    dx = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv_xla(x, k), x)[1](g)[0])
    dk = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv_xla(x, k), k)[1](g)[0])
    runners = {
        "xla dx": lambda: jax.block_until_ready(dx(xj, kj, gj)),
        "xla dk": lambda: jax.block_until_ready(dk(xj, kj, gj)),
    }
    if tf is not None:
        xt, kt, gt = tf.constant(x), tf.constant(k), tf.constant(g)
        ones = [1, 1, 1, 1]
        tdx = tf.function(
            lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=list(x.shape), filter=kt, out_backprop=gt, strides=ones, padding="SAME"
            )
        )
        tdk = tf.function(
            lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=xt, filter_sizes=list(k.shape), out_backprop=gt, strides=ones, padding="SAME"
            )
        )
        # The same gradients, checked once before timing.
        want = np.asarray(dk(xj, kj, gj))
        np.testing.assert_allclose(tdk().numpy(), want, atol=1e-4 * np.abs(want).max())
        runners["tf dx"] = lambda: tdx().numpy()
        runners["tf dk"] = lambda: tdk().numpy()
    return runners


def backward_rows(tf: Any, args: argparse.Namespace, rng: Any, benchmarking: Any) -> list[dict]:
    """Times dx and dk of each BACKWARD_SHAPES conv, XLA's against TensorFlow's, interleaved."""
    rows = []
    for name, b, h, w, c, o, ks in BACKWARD_SHAPES:
        b = args.batch_size or b
        x = rng.standard_normal((b, h, w, c), dtype=np.float32)
        k = (rng.standard_normal((ks, ks, c, o)) / np.sqrt(ks * ks * c)).astype(np.float32)
        g = rng.standard_normal((b, h, w, o), dtype=np.float32)
        timings = interleaved(backward_runners(x, k, g, tf), args.rounds, benchmarking)
        ms = {label: 1e3 * t.median for label, t in timings.items()}
        rows.append(
            {"shape": name, "input": [b, h, w, c], "out_channels": o, "kernel": ks, "ms": ms}
        )
        print(
            f"{name} (gradients): " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    labels = list(report["rows"][0]["ms"])
    lines = [
        f"3x3 'same' convolutions, float32, {env['device_count']} x {env['platform']} "
        f"({env['host_cpu']}, {env['host_cores']} cores), jax {env['jax']}"
        + (f", TensorFlow {env['tensorflow']}" if "tensorflow" in env else "")
        + f"; XLA_FLAGS `{env['xla_flags'] or '(none)'}`; medians of {report['rounds']} "
        f"interleaved rounds; {env['date']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "ms per call (GFLOP/s counting the direct conv's multiply-adds; max error relative to "
        "`xla`):",
        "",
        "| conv | " + " | ".join(labels) + " | fastest |",
        "|---|" + "---:|" * len(labels) + "---|",
    ]
    for r in report["rows"]:
        best = min(r["ms"], key=r["ms"].get)
        cells = [
            f"{r['ms'][k]:.1f} ({r['gflops_direct_equivalent'][k]:.0f}; "
            f"{r['rel_max_error_vs_xla'][k]:.0e})"
            for k in labels
        ]
        lines.append(
            f"| {r['shape']} (batch {r['input'][0]}) | " + " | ".join(cells) + f" | {best} |"
        )
    if report.get("backward"):
        labels = list(report["backward"][0]["ms"])
        lines += [
            "",
            "Gradients of the same convs (ms per call; `dx`: input gradient, `dk`: kernel gradient):",
            "",
            "| conv | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels),
        ]
        for r in report["backward"]:
            lines.append(
                f"| {r['shape']} ({r['kernel']}x{r['kernel']}, batch {r['input'][0]}) | "
                + " | ".join(f"{r['ms'][k]:.1f}" for k in labels)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
