#!/usr/bin/env python
"""Infection maps, masks, COVID-19 decision and severity for chest X-ray files.

    python scripts/infer.py --checkpoint runs/quickstart XRAYS_DIR a.png b.dcm --out maps/ \
        [--lung-checkpoint runs/lung] [--threshold 0.5] [--batch-size 64] [--overwrite]

All logic lives in `qatacov_jax.infer` (see its docstring for the outputs).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start

from qatacov_jax.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
