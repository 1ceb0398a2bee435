"""Where `scripts/infer.py` writes, and when it may: the output names, the overwrite policy
and the resumption of a killed run.

Existing outputs are never replaced without `--overwrite`, and with it only in a folder that
is recognisably ours: its report.json, or the marker of an unfinished run of ours
(`runtime.unfinished`). A rerun of a killed run with the same settings keeps the images it
finished (`resume_point`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qatacov_jax.inference.reports import REPORT_CSV, REPORT_JSON
from qatacov_jax.runtime import unfinished
from qatacov_jax.runtime.files import OutputExistsError

log = logging.getLogger(__name__)

TOOL = "scripts/infer.py"


def output_paths(key: str, out_dir: Path, with_lung: bool) -> dict[str, Path]:
    paths = {"map": out_dir / f"{key}_map.png", "mask": out_dir / f"{key}_mask.png"}
    if with_lung:
        paths["lung_mask"] = out_dir / f"{key}_lung_mask.png"
    return paths


def check_no_overwrite(
    items: Sequence[Any], out_dir: Path, with_lung: bool, overwrite: bool
) -> None:
    """Raises OutputExistsError naming the first existing output, unless `overwrite` is set
    and `out_dir` is recognisably an earlier output of ours (its report.json): an output
    name that collides with an unrelated file is never replaced."""
    candidates = [out_dir / REPORT_CSV, out_dir / REPORT_JSON]
    for item in items:
        candidates.extend(output_paths(item.key, out_dir, with_lung).values())
    existing = [p for p in candidates if p.exists()]
    if not existing:
        return
    more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
    if not overwrite:
        raise OutputExistsError(
            f"{existing[0]} already exists{more}; refusing to overwrite earlier results. "
            "Choose another --out folder or pass --overwrite."
        )
    if not _is_our_output(out_dir):
        raise OutputExistsError(
            f"{existing[0]} already exists{more} and {out_dir} is not an earlier output of "
            f"scripts/infer.py (no {REPORT_JSON} of ours in it); refusing to replace it even "
            "with --overwrite. Choose another --out folder."
        )


def _is_our_output(out_dir: Path) -> bool:
    if unfinished.load(out_dir, TOOL) is not None:
        return True  # a run of ours that did not finish
    try:
        report = json.loads((out_dir / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(report, dict)
        and isinstance(report.get("images"), list)
        and ("checkpoint" in report)
    )


def resume_point(
    items: Sequence[Any],
    out_dir: Path,
    with_lung: bool,
    overwrite: bool,
    settings: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """The report rows of an unfinished earlier run in `out_dir` to keep, by item key.

    Without a marker of ours this is `check_no_overwrite` (nothing kept). With one,
    `overwrite` starts over; the same settings keep every image the journal finished whose
    outputs exist; other settings are refused (OutputExistsError).
    """
    earlier = unfinished.load(out_dir, TOOL)
    if earlier is None:
        check_no_overwrite(items, out_dir, with_lung, overwrite)
        return {}
    if overwrite:
        return {}
    if not unfinished.same_settings(earlier.settings, settings):
        changed = sorted(k for k in settings if settings[k] != earlier.settings.get(k))
        raise OutputExistsError(
            f"{out_dir} holds an unfinished run of {TOOL} with other settings "
            f"({', '.join(changed) or 'settings'} differ); rerun it with the same settings "
            "to finish it, or pass --overwrite to start over."
        )
    kept = {}
    for it in items:
        row = earlier.done.get(it.key)
        paths = output_paths(it.key, out_dir, with_lung).values()
        if row and row.get("file") == str(it.path) and all(p.exists() for p in paths):
            kept[it.key] = row
    log.info(
        "finishing an unfinished run in %s: %d of %d images done", out_dir, len(kept), len(items)
    )
    return kept
