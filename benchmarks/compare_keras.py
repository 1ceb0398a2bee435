"""Ours vs the original Keras models, same machine, same run, interleaved: ms/sample and ratio.

    .venv/bin/python benchmarks/compare_keras.py --archs unet unetpp dla fpn \
        --encoder densenet121 --batch-size 8 --image-size 224 --rounds 10 \
        --json benchmarks/results/compare_keras_cpu.json \
        --markdown benchmarks/results/compare_keras_cpu.md

Opt-in and installs nothing: it needs the test extra's reference frameworks
(`segmentation-models==1.0.1` on `tf-keras`, see docs/reference_frameworks.md) and stops with
a clear message if they are missing.

The Keras side is the authors' stack: `segmentation_models` 1.0.1 `Unet` and `FPN` as they
are; UNet++ (`Xnet`) and DLA (`Nestnet`) come from a fork that does not install on tf-keras,
so their decoders are rebuilt here from the same Keras layers (`UpSampling2D`, `Concatenate`,
3x3 `Conv2D` without bias + `BatchNormalization` + ReLU, a 3x3 sigmoid head) on
segmentation_models' own backbone and skip taps. Each rebuilt graph is checked against the
exact parameter counts of Table 8 before it is timed. Keras runs as `tf.function` in
inference mode (its fastest path: no `predict` loop overhead), TensorFlow's oneDNN kernels on.

Ours is the jitted pure inference function (`qatacov_jax.models.folding`: `nnx.split` once,
BatchNorm folded, the whole batch at once; XLA flags from `qatacov_jax.runtime.xla_flags`), inputs
already on the device.
Each round times one call of every model in turn, so the machine's load (this one is
shared) hits all of them alike; medians and the Keras/ours ratio (> 1: ours is faster) are
reported.

`--train` times one optimizer step instead (the paper's recipe: focal + dice loss, Adam 1e-4,
BatchNorm in training mode): Keras `train_on_batch` of the model compiled with
segmentation_models' `binary_focal_dice_loss`, against ours, the project's jitted train step
(`qatacov_jax.training.steps.make_train_step`, donated state), interleaved as above.
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

# segmentation_models reads these at import; tf-keras (Keras 2) is what it supports.
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ARCHS = ("unet", "unetpp", "dla", "fpn")
ENCODERS = ("densenet121", "inceptionv3", "resnet50")
DECODER_FILTERS = (256, 128, 64, 32, 16)


def _import_keras() -> tuple[Any, Any]:
    try:
        import segmentation_models as sm
        import tensorflow as tf
    except ImportError as e:
        raise SystemExit(
            f"compare_keras.py needs the Keras reference stack ({e}). Install the test extra "
            "(`pip install -e '.[test]'`: tensorflow-cpu, tf-keras, segmentation-models==1.0.1) "
            "and run again; this script installs nothing itself."
        ) from e
    return sm, tf


def keras_model(sm: Any, arch: str, encoder: str, image_size: int) -> Any:
    """The original Keras model of `arch` on `encoder` (random weights: timing only)."""
    shape = (image_size, image_size, 3)
    common = dict(input_shape=shape, classes=1, activation="sigmoid", encoder_weights=None)
    if arch == "unet":
        return sm.Unet(encoder, decoder_block_type="upsampling", **common)
    if arch == "fpn":
        return sm.FPN(encoder, **common)
    return _keras_nested(sm, encoder, shape, dense_skips=(arch == "unetpp"))


def _keras_nested(sm: Any, encoder: str, shape: tuple[int, ...], *, dense_skips: bool) -> Any:
    """Xnet (UNet++, dense skips) / Nestnet (DLA) rebuilt on segmentation_models' backbone."""
    from segmentation_models.backbones.backbones_factory import Backbones

    from qatacov_jax.models.nested import DEPTH, nested_grid

    # The Keras submodules segmentation_models injects into its own builders (set_framework).
    kw = {
        "backend": sm._KERAS_BACKEND,
        "layers": sm._KERAS_LAYERS,
        "models": sm._KERAS_MODELS,
        "utils": sm._KERAS_UTILS,
    }
    layers, models = kw["layers"], kw["models"]
    backbone = Backbones.get_backbone(
        encoder, input_shape=shape, weights=None, include_top=False, **kw
    )
    taps = Backbones.get_feature_layers(encoder, n=4)  # coarsest first
    skips = [
        backbone.get_layer(name=t).output
        if isinstance(t, str)
        else backbone.get_layer(index=t).output
        for t in taps
    ]
    # grid[(i, 0)]: encoder features finest (i=1, /2) to coarsest (i=5, /32).
    grid = {(i, 0): f for i, f in enumerate([*skips[::-1], backbone.output], start=1)}

    def conv_bn_relu(x: Any, filters: int, name: str) -> Any:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name + "_conv")(x)
        x = layers.BatchNormalization(name=name + "_bn")(x)
        return layers.Activation("relu", name=name + "_relu")(x)

    for i, j, node_skips in nested_grid(dense_skips):
        filters = DECODER_FILTERS[DEPTH - i - 2]  # the fork's indexing (i = 4 -> 16 filters)
        name = f"decoder_stage{i}_{j}"
        x = layers.UpSampling2D(2, name=name + "_up")(grid[(i + 1, j - 1)])
        if node_skips:
            x = layers.Concatenate(name=name + "_concat")([x, *(grid[s] for s in node_skips)])
        x = conv_bn_relu(x, filters, name + "a")
        grid[(i, j)] = conv_bn_relu(x, filters, name + "b")
    x = layers.Conv2D(1, 3, padding="same", name="final_conv")(grid[(0, DEPTH)])
    x = layers.Activation("sigmoid", name="sigmoid")(x)
    return models.Model(backbone.input, x)


def keras_param_counts(model: Any) -> tuple[int, int]:
    """(trainable, non-trainable) the way `model.summary()` counts them."""
    import tf_keras

    count = tf_keras.backend.count_params
    return (
        int(sum(count(w) for w in model.trainable_weights)),
        int(sum(count(w) for w in model.non_trainable_weights)),
    )


def our_predict(arch: str, encoder: str, x: Any, *, fold: bool) -> tuple[Any, Any, Any]:
    """Our model's jitted, compiled inference function, its state and the on-device batch."""
    import jax
    from flax import nnx

    from qatacov_jax.models import count_params, create_model
    from qatacov_jax.models.folding import make_forward

    model = create_model(arch, encoder, rngs=nnx.Rngs(0))
    counts = count_params(model)
    model.eval()
    forward, state = make_forward(model, fold=fold)
    xj = jax.device_put(x)
    compiled = jax.jit(forward).lower(state, xj).compile()
    return (lambda: compiled(state, xj)), counts, xj


def our_train_step(arch: str, encoder: str, x: Any, y: Any) -> tuple[Any, Any]:
    """One compiled optimizer step of ours (a closure feeding its donated state back)."""
    import jax
    import optax
    from flax import nnx

    from qatacov_jax.models import TRAINABLE, count_params, create_model
    from qatacov_jax.runtime.sharding import make_mesh, replicate, shard_batch
    from qatacov_jax.training.losses import LossSpec
    from qatacov_jax.training.steps import make_train_step

    model = create_model(arch, encoder, rngs=nnx.Rngs(0))
    counts = count_params(model)
    model.train()
    opt = nnx.Optimizer(model, optax.adam(1e-4), wrt=TRAINABLE)  # the paper's optimizer
    mesh = make_mesh(1)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(opt)
    holder = {"state": replicate({"model": model_state, "opt": opt_state}, mesh)}
    batch = shard_batch({"image": x, "mask": y}, mesh)
    step = make_train_step(model_def, opt_def, LossSpec(), mesh)
    compiled = step.lower(holder["state"], batch).compile()

    def run() -> Any:
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    jax.block_until_ready(run())  # first call
    return run, counts


def keras_train_step(sm: Any, km: Any, x: Any, y: Any) -> Any:
    """Keras `train_on_batch` of `km` with the paper's loss and optimizer (first call done)."""
    import tf_keras

    km.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss=sm.losses.binary_focal_dice_loss)
    km.train_on_batch(x, y)  # builds the training function
    return lambda: km.train_on_batch(x, y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--encoder", default="densenet121", choices=ENCODERS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each model")
    p.add_argument(
        "--pause", type=float, default=0.0,
        help="seconds of idle before each timed call, so that one framework's worker threads "
        "have gone to sleep before the other's call starts",
    )  # fmt: skip
    p.add_argument("--no-fold", action="store_true", help="time ours without BatchNorm folding")
    p.add_argument(
        "--train", action="store_true",
        help="time one optimizer step (focal + dice, Adam) instead of inference",
    )  # fmt: skip
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--markdown")
    args = p.parse_args(argv)
    if args.image_size % 32:
        p.error(f"--image-size must be a multiple of 32, got {args.image_size}.")
    if args.pause < 0:
        p.error(f"--pause must be 0 or more seconds, got {args.pause}.")
    for path in (args.json, args.markdown):
        if path is not None and path.exists() and not args.force:
            p.error(f"{path} exists; pass --force to overwrite it or choose another path.")

    sm, tf = _import_keras()
    import jax

    from qatacov_jax.benchmarking import paper
    from qatacov_jax.benchmarking import timing as benchmarking

    x = np.random.default_rng(0).standard_normal(
        (args.batch_size, args.image_size, args.image_size, 3), dtype=np.float32
    )
    # Masks for --train: blobs covering about a third of each image.
    y = (np.random.default_rng(1).random(x.shape[:3] + (1,)) > 0.7).astype(np.float32)
    runners: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for arch in args.archs:
        t0 = time.perf_counter()
        km = keras_model(sm, arch, args.encoder, args.image_size)
        kcounts = keras_param_counts(km)
        exact = paper.EXACT_COUNTS.get((arch, args.encoder, False))
        if exact is not None and args.image_size == 224 and kcounts != exact:
            raise SystemExit(
                f"The rebuilt Keras {arch} has {kcounts} parameters, Table 8 says {exact}: the "
                "Keras graph is not the paper's; not timing it."
            )
        if args.train:
            runners[f"{arch}/keras"] = keras_train_step(sm, km, x, y)
            ours, counts = our_train_step(arch, args.encoder, x, y)
        else:
            xt = tf.constant(x)
            kfn = tf.function(lambda v, m=km: m(v, training=False))
            kfn(xt).numpy()  # trace + first run
            runners[f"{arch}/keras"] = lambda f=kfn, v=xt: f(v).numpy()
            ours, counts, _ = our_predict(arch, args.encoder, x, fold=not args.no_fold)
            jax.block_until_ready(ours())
        runners[f"{arch}/ours"] = ours
        info[arch] = {
            "keras_params": list(kcounts),
            "our_params": [counts.trainable, counts.non_trainable],
        }
        print(
            f"built {arch}: keras {kcounts[0]:,}/{kcounts[1]:,} params, ours "
            f"{counts.trainable:,}/{counts.non_trainable:,} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds):
        for name, fn in runners.items():
            time.sleep(args.pause)
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)

    rows = []
    for arch in args.archs:
        k = benchmarking.Timing.from_samples(samples[f"{arch}/keras"]).per_item(args.batch_size)
        o = benchmarking.Timing.from_samples(samples[f"{arch}/ours"]).per_item(args.batch_size)
        rows.append(
            {
                "arch": arch,
                "encoder": args.encoder,
                "keras_ms_per_sample": 1e3 * k.median,
                "ours_ms_per_sample": 1e3 * o.median,
                "keras_over_ours": k.median / o.median,
                "keras_timing": k.to_dict(),
                "ours_timing": o.to_dict(),
                **info[arch],
            }
        )
    env = benchmarking.environment()
    env["tensorflow"] = tf.__version__
    env["segmentation_models"] = getattr(sm, "__version__", "?")
    report = {
        "environment": env,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "pause_s": args.pause,
        "bn_folded": not args.no_fold,
        "mode": "train" if args.train else "inference",
        "command": "python benchmarks/compare_keras.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    benchmarking.publish(report, markdown(report), args.json, args.markdown)
    return 0


def markdown(report: dict[str, Any]) -> str:
    from qatacov_jax.benchmarking import timing

    env = report["environment"]
    train = report.get("mode") == "train"
    what = (
        "one optimizer step (focal + dice, Adam 1e-4; Keras `train_on_batch`)"
        if train
        else "inference"
    )
    lines = [
        f"{what[0].upper() + what[1:]}: "
        f"ours (JAX {env['jax']}, XLA:CPU) vs the original Keras models (TensorFlow "
        f"{env['tensorflow']}, segmentation_models {env['segmentation_models']}), "
        f"{report['image_size']}x{report['image_size']}, batch {report['batch_size']}, float32, "
        f"{env['device_count']} x {env['device_kind']} ({env['host_cpu']}, "
        f"{env['host_cores']} cores), {report['rounds']} interleaved rounds, {env['date']}.",
        f"XLA_FLAGS: `{env['xla_flags'] or '(none)'}`; "
        + ("" if train else f"BatchNorm folded: {'yes' if report['bn_folded'] else 'no'}; ")
        + "ours runs the whole batch at once."
        + (f" Command: `{report['command']}`." if report.get("command") else ""),
        "",
        "| model | Keras ms/sample (p10-p90) | ours ms/sample (p10-p90) | Keras / ours |",
        "|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['arch']} {r['encoder']} | {timing.ms_with_spread(r['keras_timing'])} | "
            f"{timing.ms_with_spread(r['ours_timing'])} | {r['keras_over_ours']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
