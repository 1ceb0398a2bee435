#!/usr/bin/env python
"""The report of an annotation folder: machine-vs-manual preference, rejections, agreement, time.

`python scripts/annotation_report.py --help` lists the flags; the logic is `qatacov_jax.cli.annotation_report`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout (configs/)

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start

from qatacov_jax.cli.annotation_report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
