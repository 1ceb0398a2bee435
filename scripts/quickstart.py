r"""Trains a small model on synthetic CXRs, then writes its metrics and infection maps.

    python scripts/quickstart.py --workdir runs/quickstart [--overwrite]

Everything lands under --workdir: train/ (checkpoints, TensorBoard logs, results.json),
evaluation/ (metrics.json, tables.md, curves), samples/ (unseen X-rays) and maps/
(infection maps, masks, report.csv/json). See qatacov_jax/quickstart.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `configs` lives at the root

from qatacov_jax import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # CPU speed flags; must precede JAX's backend start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--num-samples", type=int, default=6, help="X-rays to draw maps for")
    p.add_argument("--overwrite", action="store_true", help="replace earlier metrics and maps")
    args = p.parse_args()
    from qatacov_jax.logs import setup_cli_logging
    from qatacov_jax.quickstart import QuickstartError, run

    setup_cli_logging("%(asctime)s %(levelname)s %(message)s")

    try:
        summary = run(args.workdir, num_samples=args.num_samples, overwrite=args.overwrite)
    except QuickstartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary["test_metrics"], indent=2))
    print(f"metrics: {summary['evaluation_dir']}/tables.md   maps: {summary['maps_dir']}/")
    print(f"overview (X-rays above their infection maps): {summary['overview']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
