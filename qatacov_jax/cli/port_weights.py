"""`scripts/port_weights.py FILE --encoder NAME --out DIR`: a local Keras .h5 or PyTorch
weights file -> a qatacov-jax encoder weights directory (with its manifest)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from qatacov_jax.cli.common import UsageError, parse_command, run_main
from qatacov_jax.data.preprocessing import MODES, Preprocessing
from qatacov_jax.models import ENCODER_ARCHITECTURES
from qatacov_jax.weights import port, read_manifest

PROG = "scripts/port_weights.py"
DOC = """Ports a local Keras .h5 or PyTorch weights file into a qatacov-jax encoder checkpoint.

    python scripts/port_weights.py densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --encoder densenet121 --out weights/densenet121_imagenet

Then set `config.model.encoder_weights = "weights/densenet121_imagenet"`. Nothing is
downloaded; see README "Pretrained encoders" for where each file comes from."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum(
        "encoder", None, sorted(ENCODER_ARCHITECTURES), "encoder architecture", flag_values=fv
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 refused)."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        if len(rest) != 1:
            raise UsageError(f"expected one weights file, got {rest or 'none'}")
        for name in ("encoder", "out"):
            if fv[name].value is None:
                raise UsageError(f"--{name} is required")
        pre = Preprocessing.from_mode(fv.preprocessing) if fv.preprocessing else None
        out = port(rest[0], fv.encoder, fv.out, overwrite=fv.overwrite, preprocessing=pre)
        manifest = read_manifest(out)
        print(f"Ported {manifest.num_tensors} tensors ({manifest.num_values:,} values) to {out}")
        print(json.dumps({k: manifest.to_dict()[k] for k in ("source", "preprocessing", "notes")}))
        return 0

    return run_main(body, log_format="%(message)s")
