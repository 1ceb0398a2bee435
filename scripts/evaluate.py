#!/usr/bin/env python
"""Segmentation and COVID-19 detection metrics with 95% CIs, Markdown tables and curves.

    python scripts/evaluate.py runs/quickstart [--split test] [--threshold 0.5] [--out DIR]
    python scripts/evaluate.py runs/unet_densenet121_cv      # all fold_k/ + cumulative

All logic lives in `qatacov_jax.evaluate` (see its docstring for the outputs).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start

from qatacov_jax.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
