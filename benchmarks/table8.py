"""Table 8 of the QaTa-COV19 paper, reproduced: parameter counts, latency, throughput, training.

    python benchmarks/table8.py --params-only --json benchmarks/results/table8_params.json
    python benchmarks/table8.py --dtype float32 --batch-sizes 1 8 --repeats 3 \\
        --train-configs unet:densenet121:trainable --json benchmarks/results/table8_cpu.json \\
        --markdown benchmarks/results/table8_cpu.md          # every configuration, timed

`--params-only` builds every configuration abstractly (`nnx.eval_shape`: no weights are
allocated, takes seconds), counts trainable / non-trainable parameters in the Keras sense,
writes one JSON record per configuration and prints a Markdown table beside the paper's
printed values and the exact counts of docs/original_models.md, "Exact parameter counts". It
exits non-zero if any of the 24 paper configurations differs from its exact count.

Configurations: the paper's 24 (U-Net, UNet++, DLA x CheXNet, DenseNet-121, Inception-v3,
ResNet-50 x frozen / not) plus FPN on each encoder (not in the paper). Choose a subset with
`--configs unet:densenet121 fpn:resnet50:frozen ...` (`arch:encoder[:frozen|:trainable]`).

Without `--params-only` every configuration is also timed (see `qatacov_jax.benchmarking.timing`):
inference ms/sample at the first `--batch-sizes` entry (latency; batch 1, or one sample per
device) and at the others (throughput), samples/s, compile time, XLA's FLOPs per sample and
the achieved FLOP/s (and % of the device's dense peak where it is known); training images/s of
the full train step (`qatacov_jax.training.steps.make_train_step`: hybrid loss, Adam, donated state)
for the `--train-configs`; and, once, the end-to-end time from PNG files to infection maps.
The model is a jitted pure function (`nnx.split` once) with BatchNorm folded into the convs
(`qatacov_jax.models.folding`, exact in eval mode; `--no-fold` to time the unfolded graph), inputs
already on the device(s). Configurations with the same inference graph (CheXNet is
DenseNet-121's graph; freezing changes training only) are compiled and timed once and the
figure is shared; the JSON says which graph each figure came from.

`--devices N` runs data-parallel over the mesh of `qatacov_jax.runtime.sharding.make_mesh(N)` (on CPU,
N simulated devices are created for it). `--dtype bfloat16` computes in bfloat16 (parameters
stay float32).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.benchmarking import paper  # noqa: E402
from qatacov_jax.models import (  # noqa: E402
    ARCHS,
    ENCODERS,
    ParamCount,
    count_params,
    create_model,
    encoder_preprocessing,
    freeze,
)
from qatacov_jax.models.densenet import DenseNet121  # noqa: E402
from qatacov_jax.models.segmentation import SegmentationModel  # noqa: E402
from qatacov_jax.models.unet import UNetDecoder  # noqa: E402
from qatacov_jax.runtime.files import write_json, write_text  # noqa: E402

PAPER_ARCHS = ("unet", "unetpp", "dla")
PAPER_ENCODERS = ("chexnet", "densenet121", "inceptionv3", "resnet50")
INPUT_SHAPE = (224, 224, 3)

Config = tuple[str, str, bool]


def default_configs() -> list[Config]:
    """The paper's 24 configurations, then FPN on every encoder, frozen first as in Table 8."""
    configs = []
    for arch in (*PAPER_ARCHS, "fpn"):
        for frozen in (True, False):
            configs.extend((arch, encoder, frozen) for encoder in PAPER_ENCODERS)
    return configs


def parse_config(text: str) -> list[Config]:
    """`arch:encoder[:frozen|:trainable]` -> configurations (both freezings if omitted)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--configs entry {text!r} is not 'arch:encoder[:frozen|:trainable]'.")
    arch, encoder = parts[:2]
    if arch not in ARCHS:
        raise ValueError(
            f"--configs entry {text!r}: unknown arch {arch!r}; valid: {sorted(ARCHS)}."
        )
    if encoder not in ENCODERS:
        raise ValueError(
            f"--configs entry {text!r}: unknown encoder {encoder!r}; valid: {sorted(ENCODERS)}."
        )
    if len(parts) == 2:
        return [(arch, encoder, True), (arch, encoder, False)]
    if parts[2] not in ("frozen", "trainable"):
        raise ValueError(f"--configs entry {text!r}: the third field must be frozen or trainable.")
    return [(arch, encoder, parts[2] == "frozen")]


@functools.cache
def _abstract_counts(arch: str, encoder: str) -> dict[bool, ParamCount]:
    """Counts of one (arch, encoder) graph, not frozen and frozen, from a single abstract build.

    Tracing a full model costs seconds of CPU, so the frozen count is taken by freezing the
    same abstract model's encoder (what `create_model(frozen=True)` does) instead of building
    it again; tests pin that both paths agree.
    """
    model = nnx.eval_shape(lambda: create_model(arch, encoder, rngs=nnx.Rngs(0)))
    counts = {False: count_params(model)}
    freeze(model.encoder)
    counts[True] = count_params(model)
    return counts


def measure_params(arch: str, encoder: str, frozen: bool) -> dict[str, Any]:
    """Keras-sense parameter counts of one configuration, built abstractly (no allocation).

    CheXNet shares DenseNet-121's graph (only its weights differ), so their counts come from
    the same build."""
    graph_encoder = "densenet121" if ENCODERS[encoder] is ENCODERS["densenet121"] else encoder
    counts = _abstract_counts(arch, graph_encoder)[frozen]
    return {
        "arch": arch,
        "encoder": encoder,
        "frozen": frozen,
        "trainable": counts.trainable,
        "non_trainable": counts.non_trainable,
        "input_shape": list(INPUT_SHAPE),
    }


def check_exact(record: dict[str, Any]) -> bool | None:
    """True/False if the configuration is one of the paper's 24 (exact count known), else None."""
    exact = paper.EXACT_COUNTS.get((record["arch"], record["encoder"], record["frozen"]))
    if exact is None:
        return None
    return exact == (record["trainable"], record["non_trainable"])


def params_markdown(records: list[dict[str, Any]]) -> str:
    """Our counts beside Table 8's printed values and the exact Keras counts."""
    lines = [
        "| arch | encoder | frozen | trainable | non-trainable | paper trainable "
        "| paper non-trainable | exact match |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in records:
        row = paper.table8_row(r["arch"], r["encoder"], r["frozen"])
        exact = check_exact(r)
        lines.append(
            f"| {r['arch']} | {r['encoder']} | {'yes' if r['frozen'] else 'no'} "
            f"| {r['trainable']:,} | {r['non_trainable']:,} "
            f"| {row.trainable if row else '-'} | {row.non_trainable if row else '-'} "
            f"| {'-' if exact is None else ('yes' if exact else '**NO**')} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ timing


def graph_key(arch: str, encoder: str) -> str:
    """Configurations with equal keys have the same inference graph (timed once)."""
    return f"{arch}:{ENCODERS[encoder].__name__}"


class ToyDenseNet(DenseNet121):
    """`--dry-run`'s encoder: DenseNet-121's code with one dense layer per block."""

    blocks = (1, 1, 1, 1)
    out_channels = (64, 48, 40, 36, 68)


def build(arch: str, encoder: str, frozen: bool, dtype: str, *, toy: bool = False) -> nnx.Module:
    """The configuration's model; `toy` (`--dry-run`): the same classes at toy widths (DenseNet
    with one layer per block, decoder filters /16), so the whole harness, every step, report
    and file, runs in seconds on a CPU. A toy model measures nothing."""
    import jax.numpy as jnp

    rngs, dt = nnx.Rngs(0), jnp.dtype(dtype)
    if not toy:
        return create_model(arch, encoder, frozen=frozen, rngs=rngs, dtype=dt)
    enc = ToyDenseNet(rngs=rngs, dtype=dt)
    if frozen:
        freeze(enc)
    dec = UNetDecoder(enc.out_channels, rngs=rngs, dtype=dt, decoder_filters=(16, 8, 8, 8, 8))
    return SegmentationModel(enc, dec, rngs=rngs, dtype=dt, arch=arch, encoder_name=encoder)


def time_inference(
    arch: str, encoder: str, args: argparse.Namespace, mesh: Any, peak: float | None
) -> dict[str, Any]:
    """Latency and throughput of one inference graph at every `--batch-sizes` entry."""
    from qatacov_jax.benchmarking import timing as benchmarking

    model = build(arch, encoder, False, args.dtype, toy=args.dry_run)
    model.eval()
    out: dict[str, Any] = {"graph": graph_key(arch, encoder), "batches": []}
    for batch in args.batch_sizes:
        r = benchmarking.measure_inference(
            model,
            mesh,
            batch_size=batch,
            image_size=args.image_size,
            repeats=args.repeats,
            fold=not args.no_fold,
        )
        if r["flops_per_sample"] is not None:
            r["flop_per_s"] = r["flops_per_sample"] * r["samples_per_s"]
            if peak:
                r["percent_of_peak"] = 100.0 * r["flop_per_s"] / (peak * mesh.devices.size)
        out["batches"].append(r)
    return out


def time_training(
    arch: str, encoder: str, frozen: bool, args: argparse.Namespace, mesh: Any
) -> dict[str, Any]:
    from qatacov_jax.benchmarking import timing as benchmarking

    model = build(arch, encoder, frozen, args.dtype, toy=args.dry_run)
    r = benchmarking.measure_training(
        model,
        mesh,
        batch_size=args.train_batch_size,
        image_size=args.image_size,
        repeats=args.train_repeats,
    )
    r["graph"] = f"{graph_key(arch, encoder)}:{'frozen' if frozen else 'trainable'}"
    return r


def time_end_to_end(
    arch: str, encoder: str, args: argparse.Namespace, mesh: Any, workdir: Path
) -> dict[str, Any]:
    """PNG files on disk -> infection-map and mask PNGs on disk: `scripts/infer.py`'s path.

    `inference.files.run_inference` with an `inference.Predictor`: decoding on worker threads
    ahead of the device, resize to the model's input, preprocessing + model + sigmoid jitted
    on the mesh (BatchNorm folded unless `--no-fold`), resize back to the file's size, the
    paper's HSV overlay and the PNG writes. Every file is read once per pass; each pass writes
    into its own folder. The first pass (compilation) is not timed.
    """
    import itertools

    import numpy as np
    from PIL import Image

    from qatacov_jax.benchmarking import timing as benchmarking
    from qatacov_jax.inference.files import InputItem, run_inference
    from qatacov_jax.inference.predictor import Predictor

    n, side = args.e2e_images, args.e2e_file_size
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        # Smooth random images (a CXR-like spectrum compresses and decodes like a real one).
        small = rng.integers(0, 256, (max(side // 16, 1),) * 2, dtype=np.uint8)
        path = workdir / f"cxr_{i}.png"
        Image.fromarray(small).resize((side, side), Image.BICUBIC).save(path)
        items.append(InputItem(path, f"cxr_{i}"))
    model = build(arch, encoder, False, args.dtype, toy=args.dry_run)
    model.eval()
    batch = max(args.batch_sizes)
    predictor = Predictor(
        {"infection": model},
        {"infection": encoder_preprocessing(encoder)},
        {"infection": args.image_size},
        mesh,
        batch_size=batch,
        fold=not args.no_fold,
    )
    passes = itertools.count()

    def run() -> int:
        rows = run_inference(
            items, predictor.predict_batch, workdir / f"out_{next(passes)}", batch_size=batch
        )
        bad = [r for r in rows if r["status"] != "ok"]
        if bad:
            raise RuntimeError(f"end-to-end pass failed on {bad[0]['file']}: {bad[0]['error']}")
        return len(rows)

    t0 = time.perf_counter()
    run()  # compiles
    first = time.perf_counter() - t0
    timing = benchmarking.time_calls(run, warmup=0, repeats=args.repeats)
    return {
        "config": f"{arch}:{encoder}",
        "images": n,
        "file_size": [side, side],
        "batch_size": batch,
        "folded": not args.no_fold,
        "first_pass_s": first,
        "timing": timing.to_dict(),
        "ms_per_image": 1e3 * timing.median / n,
        "images_per_s": n / timing.median,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def timing_markdown(report: dict[str, Any]) -> str:
    env, st = report["environment"], report["settings"]
    batches = st["batch_sizes"]
    head = [
        f"Device: {env['device_count']} x {env['device_kind']} ({env['platform']}; host "
        f"{env['host_cpu']}, {env['host_cores']} cores); jax {env['jax']} / jaxlib "
        f"{env['jaxlib']}; XLA_FLAGS `{env['xla_flags'] or '(none)'}`; {env['date']}.",
        f"{st['image_size']}x{st['image_size']}, {st['dtype']}, BatchNorm folded: "
        f"{'no' if st['no_fold'] else 'yes'}, "
        f"{st['repeats']} timed repeats per figure "
        "(median; p10-p90 in the JSON). Paper: RTX 2080 Ti, TensorFlow, per-sample time.",
        "",
        "| arch | encoder | frozen | trainable | non-trainable | paper ms | "
        + " | ".join(f"ms/sample @{b}" for b in batches)
        + f" | samples/s @{batches[-1]} | GFLOP/sample | GFLOP/s | % peak | compile s "
        "| train img/s |",
        "|---|---|---|---:|---:|---:|" + "---:|" * (len(batches) + 6),
    ]
    if st.get("dry_run"):
        head[:0] = [
            "**DRY RUN** (`--dry-run`: a toy DenseNet with one layer per block, tiny sizes): "
            "checks the harness end to end; the figures below measure nothing.",
            "",
        ]
    lines = list(head)
    for r in report["records"]:
        inf = report["inference"][r["inference_graph"]]["batches"]
        tr = report["training"].get(r.get("training_graph") or "")
        row = paper.table8_row(r["arch"], r["encoder"], r["frozen"])
        last = inf[-1]
        lines.append(
            f"| {r['arch']} | {r['encoder']} | {'yes' if r['frozen'] else 'no'} "
            f"| {r['trainable']:,} | {r['non_trainable']:,} "
            f"| {_fmt(row.time_ms if row else None, '.2f')} | "
            + " | ".join(f"{b['ms_per_sample']:.2f}" for b in inf)
            + f" | {last['samples_per_s']:.1f} "
            f"| {_fmt(last['flops_per_sample'] and last['flops_per_sample'] / 1e9, '.2f')} "
            f"| {_fmt(last.get('flop_per_s') and last['flop_per_s'] / 1e9, '.1f')} "
            f"| {_fmt(last.get('percent_of_peak'), '.1f')} | {last['compile_s']:.1f} "
            f"| {_fmt(tr and tr['images_per_s'], '.1f')} |"
        )
    if report.get("end_to_end"):
        e = report["end_to_end"]
        own = next(
            (
                b["ms_per_sample"]
                for r in report["records"]
                if f"{r['arch']}:{r['encoder']}" == e["config"]
                for b in report["inference"][r["inference_graph"]]["batches"]
                if b["batch_size"] == e["batch_size"]
            ),
            None,
        )
        ratio = "" if not own else f" = {e['ms_per_image'] / own:.2f}x the model's own time"
        lines += [
            "",
            f"End to end ({e['config']}): {e['images']} PNG files of {e['file_size'][0]}x"
            f"{e['file_size'][1]} -> infection-map and mask PNGs on disk (decode, resize, "
            f"preprocessing + model on the device(s) at batch {e['batch_size']}, resize back, "
            f"HSV overlay, PNG encode; `scripts/infer.py`'s path): "
            f"{e['ms_per_image']:.1f} ms/image, {e['images_per_s']:.1f} images/s{ratio}.",
        ]
    return "\n".join(lines)


def run_timing(
    args: argparse.Namespace, configs: list[Config], on_update: Any = None
) -> dict[str, Any]:
    """Times `configs`; `on_update(report)` is called after each one (partial reports are
    written as the run goes, so a long run that is stopped keeps what it measured)."""
    import tempfile

    import jax

    from qatacov_jax.benchmarking import timing as benchmarking
    from qatacov_jax.runtime.sharding import make_mesh

    mesh = make_mesh(args.devices)
    n_dev = mesh.devices.size
    for b in (*args.batch_sizes, args.train_batch_size):
        if b % n_dev:
            raise SystemExit(
                f"Batch size {b} does not divide over {n_dev} devices; use multiples of {n_dev} "
                "in --batch-sizes / --train-batch-size (the latency figure then means one "
                "sample per device)."
            )
    env = benchmarking.environment()
    env["device_count"] = n_dev
    peak = benchmarking.peak_flops(env["device_kind"], args.dtype)
    train_set = set(configs) if args.train_configs is None else set(args.train_configs)
    report: dict[str, Any] = {
        "environment": env,
        "settings": {
            "dtype": args.dtype,
            "image_size": args.image_size,
            "batch_sizes": list(args.batch_sizes),
            "train_batch_size": args.train_batch_size,
            "repeats": args.repeats,
            "train_repeats": args.train_repeats,
            "no_fold": args.no_fold,
            "dry_run": args.dry_run,
            "peak_flops_per_device": peak,
            "command": "python benchmarks/table8.py " + " ".join(sys.argv[1:]),
        },
        "records": [],
        "inference": {},
        "training": {},
    }
    start = time.perf_counter()
    for i, (arch, encoder, frozen) in enumerate(configs, start=1):
        rec = measure_params(arch, encoder, frozen)
        key = graph_key(arch, encoder)
        if key not in report["inference"]:
            report["inference"][key] = time_inference(arch, encoder, args, mesh, peak)
        rec["inference_graph"] = key
        rec["training_graph"] = None
        if (arch, encoder, frozen) in train_set:
            tkey = f"{key}:{'frozen' if frozen else 'trainable'}"
            if tkey not in report["training"]:
                report["training"][tkey] = time_training(arch, encoder, frozen, args, mesh)
            rec["training_graph"] = tkey
        report["records"].append(rec)
        inf = report["inference"][key]["batches"]
        print(
            f"[{i}/{len(configs)}] {arch} {encoder} frozen={frozen}: "
            + ", ".join(f"{b['ms_per_sample']:.2f} ms/sample @{b['batch_size']}" for b in inf)
            + f" ({time.perf_counter() - start:.0f} s elapsed)",
            file=sys.stderr,
            flush=True,
        )
        jax.clear_caches()  # compiled graphs of earlier configs are not needed again
        if on_update is not None:
            report["elapsed_s"] = time.perf_counter() - start
            on_update(report)
    if args.e2e_images:
        arch, encoder, _ = configs[0]
        with tempfile.TemporaryDirectory() as d:
            report["end_to_end"] = time_end_to_end(arch, encoder, args, mesh, Path(d))
    report["elapsed_s"] = time.perf_counter() - start
    return report


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a positive integer, got {text}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params-only", action="store_true", help="count parameters only")
    parser.add_argument("--json", type=Path, help="write the records to this JSON file")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report to this file")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument(
        "--configs", nargs="+", metavar="ARCH:ENCODER[:frozen|:trainable]",
        help="subset of configurations (default: the paper's 24 plus FPN)",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--devices", type=_positive, default=1, help="data-parallel devices")
    parser.add_argument(
        "--batch-sizes", type=_positive, nargs="+", default=[1, 8],
        help="global batch sizes; the first is the latency figure, the rest throughput",
    )  # fmt: skip
    parser.add_argument("--image-size", type=_positive, default=INPUT_SHAPE[0])
    parser.add_argument("--repeats", type=_positive, default=10, help="timed calls per figure")
    parser.add_argument(
        "--train-configs", nargs="*", metavar="ARCH:ENCODER[:frozen|:trainable]",
        help="configurations whose training step is timed (default: all timed ones; "
        "give none to skip training)",
    )  # fmt: skip
    parser.add_argument("--train-batch-size", type=_positive, default=8)
    parser.add_argument("--train-repeats", type=_positive, default=3)
    parser.add_argument("--no-fold", action="store_true", help="do not fold BatchNorm")
    parser.add_argument(
        "--e2e-images", type=_non_negative, default=16,
        help="PNG files for the end-to-end figure (0: skip)",
    )  # fmt: skip
    parser.add_argument("--e2e-file-size", type=_positive, default=1024)
    parser.add_argument(
        "--dry-run", action="store_true",
        help="toy DenseNet encoder (one layer per block): runs everything in seconds on a "
        "CPU to check the harness (benchmarks/gpu_run.sh's tiny mode); measures nothing",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32 (five stride-2 stages), got "
                     f"{args.image_size}.")  # fmt: skip
    for path in (args.json, args.markdown):
        if path is not None and path.exists() and not args.force:
            parser.error(f"{path} already exists; pass --force to overwrite it or choose another.")

    # XLA reads its flags when the backend starts: set them before anything touches a device.
    from qatacov_jax.runtime import xla_flags

    extra = () if args.devices == 1 else (f"--xla_force_host_platform_device_count={args.devices}",)
    xla_flags.apply_defaults(extra)
    try:
        configs = (
            [c for text in args.configs for c in parse_config(text)]
            if args.configs
            else default_configs()
        )
        if args.train_configs is not None:
            args.train_configs = [c for t in args.train_configs for c in parse_config(t)]
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        if args.params_only:
            parser.error("--dry-run times a toy model; it does not go with --params-only.")
        wrong = sorted({f"{a}:{e}" for a, e, _ in configs} - {"unet:densenet121", "unet:chexnet"})
        if wrong:
            parser.error(
                "--dry-run builds a toy U-Net DenseNet; choose unet:densenet121 or unet:chexnet "
                f"configurations (got {', '.join(wrong)})."
            )

    if not args.params_only:

        def save(report: dict[str, Any]) -> None:
            # The existence check above guards what was there before this run; from here on
            # the files are this run's own partial reports, replaced as it goes.
            if args.json:
                write_json(args.json, report)
            if args.markdown:
                write_text(args.markdown, timing_markdown(report) + "\n")

        report = run_timing(args, configs, on_update=save)
        save(report)
        print(timing_markdown(report))
        for path in (args.json, args.markdown):
            if path:
                print(f"wrote {path}", file=sys.stderr)
        # Counts are those of the real graphs (measure_params builds them abstractly), so
        # the exact-count check holds in a dry run too.
        mismatched = [r for r in report["records"] if check_exact(r) is False]
        return 1 if mismatched else 0

    start = time.perf_counter()
    records = []
    for i, (arch, encoder, frozen) in enumerate(configs, start=1):
        records.append(measure_params(arch, encoder, frozen))
        print(
            f"[{i}/{len(configs)}] {arch} {encoder} frozen={frozen}: "
            f"{records[-1]['trainable']:,} / {records[-1]['non_trainable']:,}",
            file=sys.stderr,
            flush=True,
        )
    print(params_markdown(records))
    print(
        f"\n{len(records)} configurations in {time.perf_counter() - start:.1f} s", file=sys.stderr
    )
    if args.json:
        write_json(args.json, records)
        print(f"wrote {args.json}", file=sys.stderr)
    mismatched = [r for r in records if check_exact(r) is False]
    if mismatched:
        print(
            f"{len(mismatched)} configuration(s) differ from the exact counts in "
            "docs/original_models.md",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
