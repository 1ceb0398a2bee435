"""Ports a local Keras .h5 or PyTorch weights file into a qatacov-jax encoder checkpoint.

    python scripts/port_weights.py densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --encoder densenet121 --out weights/densenet121_imagenet

Then set `config.model.encoder_weights = "weights/densenet121_imagenet"`. Nothing is
downloaded; see README "Pretrained encoders" for where each file comes from.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Runnable from a plain checkout, like scripts/train.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qatacov_jax.preprocessing import MODES, Preprocessing  # noqa: E402
from qatacov_jax.weights import WeightsError, port, read_manifest  # noqa: E402
from qatacov_jax.weights.tables import ARCHITECTURES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="local .h5 (Keras) or .pth/.pth.tar/.pt (PyTorch) file")
    parser.add_argument("--encoder", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--out", required=True, help="directory to create")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (after success)"
    )
    parser.add_argument(
        "--preprocessing",
        choices=MODES,
        default=None,
        help="input preprocessing the weights were trained with (default: the encoder's "
        "original one, e.g. 'torch' for DenseNet/CheXNet, 'tf' for Inception-v3)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pre = Preprocessing.from_mode(args.preprocessing) if args.preprocessing else None
    try:
        out = port(args.src, args.encoder, args.out, overwrite=args.overwrite, preprocessing=pre)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = read_manifest(out)
    print(f"Ported {manifest.num_tensors} tensors ({manifest.num_values:,} values) to {out}")
    print(json.dumps({k: manifest.to_dict()[k] for k in ("source", "preprocessing", "notes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
