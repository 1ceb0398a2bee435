"""The run's reports of `scripts/infer.py`: `report.csv` (one row per input file) and
`report.json` (the run's settings and the same rows).

Per file: status ("ok" or "error") and error, the image size, the COVID-19 decision and the
maximum probability (`inference.decision`), the infected area as % of the image and, with a
lung model, as % of the lung with a severity grade (`inference.severity`), how the file's
intensities were mapped to [0, 1], and the paths of the written map and masks.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qatacov_jax.inference.severity import DEFAULT_SCALE, SeverityScale
from qatacov_jax.runtime.files import write_json, write_text

REPORT_CSV = "report.csv"
REPORT_JSON = "report.json"
REPORT_FIELDS = (
    "file",
    "status",
    "error",
    "height",
    "width",
    "covid19",
    "max_probability",
    "infected_percent_of_image",
    "lung_percent_of_image",
    "infected_percent_of_lung",
    "severity_grade",
    "severity",
    "intensity",
    "map",
    "mask",
    "lung_mask",
)


def _finite(x: Any) -> Any:
    # NaN (e.g. % of lung when no lung was found) is written as an empty cell / JSON null.
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_settings(
    checkpoint: str | Path,
    lung_checkpoint: str | Path | None,
    threshold: float,
    lung_threshold: float,
    display_floor: float,
    scale: SeverityScale = DEFAULT_SCALE,
) -> dict[str, Any]:
    """report.json's record of the run: the run directories, thresholds and severity scale.

    Its "checkpoint" key is what marks an output folder as ours (`files.check_no_overwrite`).
    """
    return {
        "checkpoint": str(checkpoint),
        "lung_checkpoint": None if lung_checkpoint is None else str(lung_checkpoint),
        "threshold": threshold,
        "lung_threshold": lung_threshold,
        "display_floor": display_floor,
        "severity_scale": {"bounds": list(scale.bounds), "names": list(scale.names)},
    }


def write_reports(rows: Sequence[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> None:
    """report.csv (one row per file) and report.json (settings + the same rows)."""
    clean = [{k: _finite(v) for k, v in r.items()} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in clean:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in REPORT_FIELDS})
    write_text(out_dir / REPORT_CSV, buf.getvalue())
    write_json(out_dir / REPORT_JSON, {**meta, "images": clean})
