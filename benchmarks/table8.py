"""Table 8 of the QaTa-COV19 paper, reproduced: parameter counts (and, later, inference time).

    python benchmarks/table8.py --params-only --json benchmarks/results/table8_params.json

`--params-only` builds every configuration abstractly (`nnx.eval_shape`: no weights are
allocated, takes seconds), counts trainable / non-trainable parameters in the Keras sense,
writes one JSON record per configuration and prints a Markdown table beside the paper's
printed values and the exact counts of REFERENCE s.1. It exits non-zero if any of the 24
paper configurations differs from its exact count.

Configurations: the paper's 24 (U-Net, UNet++, DLA x CheXNet, DenseNet-121, Inception-v3,
ResNet-50 x frozen / not) plus FPN on each encoder (not in the paper). Choose a subset with
`--configs unet:densenet121 fpn:resnet50:frozen ...` (`arch:encoder[:frozen|:trainable]`).

Timing (the paper's ms/sample column) is a separate measurement to be added as its own
function; `main()` dispatches on the flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax import paper  # noqa: E402
from qatacov_jax.models import ARCHS, ENCODERS, count_params, create_model  # noqa: E402

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


def measure_params(arch: str, encoder: str, frozen: bool) -> dict[str, Any]:
    """Keras-sense parameter counts of one configuration, built abstractly (no allocation)."""
    model = nnx.eval_shape(lambda: create_model(arch, encoder, frozen=frozen, rngs=nnx.Rngs(0)))
    counts = count_params(model)
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


def write_json(path: Path, records: list[dict[str, Any]], *, force: bool) -> None:
    """Writes `records` to `path` atomically; refuses to replace an existing file unless forced."""
    if path.exists() and not force:
        raise SystemExit(
            f"{path} already exists; pass --force to overwrite it or choose another --json."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params-only", action="store_true", help="count parameters only")
    parser.add_argument("--json", type=Path, help="write the records to this JSON file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    parser.add_argument(
        "--configs", nargs="+", metavar="ARCH:ENCODER[:frozen|:trainable]",
        help="subset of configurations (default: the paper's 24 plus FPN)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.params_only:
        parser.error("only --params-only is implemented so far (timing is a separate issue).")
    try:
        configs = (
            [c for text in args.configs for c in parse_config(text)]
            if args.configs
            else default_configs()
        )
    except ValueError as e:
        parser.error(str(e))

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
        write_json(args.json, records, force=args.force)
        print(f"wrote {args.json}", file=sys.stderr)
    mismatched = [r for r in records if check_exact(r) is False]
    if mismatched:
        print(f"{len(mismatched)} configuration(s) differ from REFERENCE s.1", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
