"""`scripts/port_weights.py FILE --encoder NAME --out DIR`: a local Keras .h5 or PyTorch
weights file -> a qatacov-jax encoder weights directory (with its manifest); with
`--family smp --arch ARCH`, a whole smp model's state dict -> a run directory."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import flags

from qatacov_jax.cli.common import UsageError, parse_command, run_main
from qatacov_jax.data.preprocessing import MODES, Preprocessing
from qatacov_jax.models import (
    ENCODER_ARCHITECTURES,
    FAMILIES,
    SMP_ARCHS,
    SMP_ENCODERS,
    encoder_preprocessing,
)
from qatacov_jax.runtime.files import OutputExistsError
from qatacov_jax.training.ported_run import write_ported_run
from qatacov_jax.weights import WeightsError, port, read_manifest
from qatacov_jax.weights.manifest import sha256_of
from qatacov_jax.weights.smp_port import port_smp_encoder, read_smp_source

PROG = "scripts/port_weights.py"
DOC = """Ports a local Keras .h5 or PyTorch weights file into a qatacov-jax encoder checkpoint,
or a whole segmentation_models.pytorch (smp) model into a run directory.

    python scripts/port_weights.py densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --encoder densenet121 --out weights/densenet121_imagenet
    python scripts/port_weights.py densenet121-a639ec97.pth --family smp --arch unetpp \\
        --encoder densenet121 --out weights/smp_densenet121
    python scripts/port_weights.py my_smp_unetpp.pth --family smp --arch unetpp \\
        --encoder densenet121 --task infection --out runs/ported_unetpp

Encoder weights: set `config.model.encoder_weights` to the output. A whole smp model
(torch.save(model.state_dict())) becomes a run directory for scripts/evaluate.py,
scripts/infer.py and scripts/export.py, configured by configs/paper2/TASK_ARCH_ENCODER.py
(or --config). Nothing is downloaded; see docs/pretrained.md."""

REPO = Path(__file__).resolve().parents[2]


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("family", "paper1", list(FAMILIES), "model family", flag_values=fv)
    flags.DEFINE_string(
        "encoder",
        None,
        f"encoder: paper1 {sorted(ENCODER_ARCHITECTURES)}; smp {sorted(SMP_ENCODERS)}",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "arch", None, sorted(SMP_ARCHS), "smp only: the model's decoder", flag_values=fv
    )
    flags.DEFINE_enum(
        "task",
        "infection",
        ["infection", "lung"],
        "smp whole models: which paper-2 config the run directory gets",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "config",
        None,
        "smp whole models: config file for the run directory (default "
        "configs/paper2/TASK_ARCH_ENCODER.py)",
        flag_values=fv,
    )
    flags.DEFINE_string("out", None, "directory to create", flag_values=fv)
    flags.DEFINE_boolean(
        "overwrite", False, "replace --out if it exists (after success)", flag_values=fv
    )
    flags.DEFINE_enum(
        "preprocessing",
        None,
        list(MODES),
        "input preprocessing the weights were trained with (default: the encoder's original "
        "one, e.g. 'torch' for DenseNet/CheXNet, 'tf' for Inception-v3)",
        flag_values=fv,
    )


def _load_config(path: Path) -> ml_collections.ConfigDict:
    if not path.is_file():
        raise UsageError(f"config file {path} not found; pass --config FILE")
    spec = importlib.util.spec_from_file_location(f"_port_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _port_smp(fv: flags.FlagValues, src: str) -> int:
    if fv.encoder not in SMP_ENCODERS:
        raise UsageError(
            f"--encoder {fv.encoder!r} is not an smp encoder; valid: {sorted(SMP_ENCODERS)}"
        )
    if fv.arch is None:
        raise UsageError(f"--arch is required with --family smp; valid: {sorted(SMP_ARCHS)}")
    out = Path(fv.out)
    if out.exists() and not fv.overwrite:
        raise UsageError(f"{out} already exists; choose another --out or pass --overwrite")
    source = read_smp_source(src, fv.arch, fv.encoder)
    if not source.whole:
        out = port_smp_encoder(src, source, fv.encoder, out, overwrite=fv.overwrite)
        print(
            f"Ported {source.num_tensors} encoder tensors ({source.num_values:,} values) to {out}"
        )
        print(json.dumps(read_manifest(out).to_dict()["notes"]))
        return 0
    config_path = Path(
        fv.config or REPO / "configs" / "paper2" / f"{fv.task}_{fv.arch}_{fv.encoder}.py"
    )
    config = _load_config(config_path)
    m = config.model
    if (m.get("family"), m.arch, m.encoder) != ("smp", fv.arch, fv.encoder):
        raise UsageError(
            f"{config_path} configures {m.get('family')} {m.arch} {m.encoder}, not smp "
            f"{fv.arch} {fv.encoder}; pass a matching --config"
        )
    config.model.classes = source.classes
    config.model.encoder_weights = None
    if source.merge_policy is not None:  # the file's FPN decides, whatever the config said
        config.model.decoder_merge_policy = source.merge_policy
    pre = (
        Preprocessing.from_mode(fv.preprocessing)
        if fv.preprocessing
        else encoder_preprocessing(fv.encoder, "smp")
    )
    provenance = {
        "framework": "torch",
        "library": "segmentation_models_pytorch",
        "file_name": Path(src).name,
        "path": str(Path(src).absolute()),
        "sha256": sha256_of(Path(src)),
        "arch": fv.arch,
        "encoder": fv.encoder,
        "classes": source.classes,
        "decoder_merge_policy": source.merge_policy,
        "num_tensors": source.num_tensors,
        "num_values": source.num_values,
        "config_file": str(config_path),
    }
    try:
        out = write_ported_run(out, config, source.pure, pre, provenance, overwrite=fv.overwrite)
    except OutputExistsError as e:
        raise UsageError(str(e)) from None
    print(
        f"Ported smp {SMP_ARCHS[fv.arch][0]} {fv.encoder} ({source.classes} classes, "
        f"{source.num_tensors} tensors, {source.num_values:,} values) to run directory {out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused)."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        if len(rest) != 1:
            raise UsageError(f"expected one weights file, got {rest or 'none'}")
        for name in ("encoder", "out"):
            if fv[name].value is None:
                raise UsageError(f"--{name} is required")
        if fv.family == "smp":
            return _port_smp(fv, rest[0])
        if fv.encoder not in ENCODER_ARCHITECTURES:
            raise UsageError(
                f"--encoder {fv.encoder!r} is not a paper1 encoder; valid: "
                f"{sorted(ENCODER_ARCHITECTURES)} (smp encoders need --family smp)"
            )
        pre = Preprocessing.from_mode(fv.preprocessing) if fv.preprocessing else None
        out = port(rest[0], fv.encoder, fv.out, overwrite=fv.overwrite, preprocessing=pre)
        manifest = read_manifest(out)
        print(f"Ported {manifest.num_tensors} tensors ({manifest.num_values:,} values) to {out}")
        print(json.dumps({k: manifest.to_dict()[k] for k in ("source", "preprocessing", "notes")}))
        return 0

    return run_main(body, log_format="%(message)s")


__all__ = ["WeightsError", "main"]
