#!/usr/bin/env python
"""Runs every (configuration, fold) of a paper's table and gathers it beside the paper's values.

`python scripts/reproduce.py --help` lists the flags; the logic is `qatacov_jax.cli.reproduce`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout (configs/)

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start

from qatacov_jax.cli.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
