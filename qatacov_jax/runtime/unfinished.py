"""Output folders that a batch job (`scripts/infer.py`, `scripts/evaluate.py`) is still
writing, so that a killed job (kill -9, a node failure) can be rerun.

Before its first output a job writes a marker, `MARKER`, naming the tool and the settings
of the run; each finished unit (an image, a fold) is then appended to a journal,
`JOURNAL`, one JSON line each; the job removes both once its reports are written. A rerun
that finds the marker knows the folder is its own unfinished output: with the same
settings it keeps the units of the journal whose files exist and redoes the rest; with
`--overwrite` it starts over. The temporary files a killed atomic write leaves
(`runtime.files.write_atomic`: `.name.tmp.png`) are removed by `remove_temporaries`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qatacov_jax.runtime.files import json_ready, write_json

MARKER = ".qatacov-unfinished.json"
JOURNAL = ".qatacov-unfinished.jsonl"


def temporary_of(path: Path) -> Path:
    """The name `write_atomic` writes `path` under before renaming it."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def remove_temporaries(paths: Iterable[Path]) -> int:
    """Removes the temporary siblings of `paths` that a killed write left; returns how many."""
    removed = 0
    for p in paths:
        tmp = temporary_of(Path(p))
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def remove_temporaries_under(out_dir: Path) -> int:
    """Removes every `.name.tmp.ext` file below `out_dir` (a folder our marker claims)."""
    removed = 0
    for p in Path(out_dir).rglob(".*.tmp.*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


@dataclasses.dataclass
class Unfinished:
    """An output folder's marker and journal.

    Attributes:
      out_dir: the folder.
      tool: the job that writes it ("scripts/infer.py", ...).
      settings: what the outputs depend on; a rerun with other settings does not resume.
      done: unit name -> what the journal recorded for it.
    """

    out_dir: Path
    tool: str
    settings: dict[str, Any]
    done: dict[str, Any] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def record(self, unit: str, value: Any = None) -> None:
        """Appends a finished unit to the journal (thread-safe; flushed at once, so a kill
        loses at most the line being written, which `load` skips)."""
        line = json.dumps({"unit": unit, "value": json_ready(value)}) + "\n"
        with self._lock:
            with open(self.out_dir / JOURNAL, "a", encoding="utf-8") as f:
                f.write(line)
            self.done[unit] = value

    def finish(self) -> None:
        """The job completed: its reports mark the folder as ours from now on."""
        for name in (JOURNAL, MARKER):
            try:
                (self.out_dir / name).unlink()
            except FileNotFoundError:
                pass


def load(out_dir: str | os.PathLike, tool: str) -> Unfinished | None:
    """The unfinished output of `tool` in `out_dir`, or None (no marker, or another tool's,
    or a marker that is not ours)."""
    out_dir = Path(out_dir)
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("tool") != tool:
        return None
    done: dict[str, Any] = {}
    try:
        lines = (out_dir / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
            done[str(entry["unit"])] = entry.get("value")
        except (ValueError, KeyError, TypeError):
            continue  # the line a kill cut short
    return Unfinished(out_dir, tool, marker.get("settings") or {}, done)


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal once both are in their JSON form (tuples as lists, paths as strings)."""
    return json.dumps(json_ready(a), sort_keys=True) == json.dumps(json_ready(b), sort_keys=True)


def begin(
    out_dir: str | os.PathLike, tool: str, settings: dict[str, Any], keep: dict[str, Any]
) -> Unfinished:
    """Writes the marker (before any output) and a journal holding `keep`, the units of an
    earlier attempt that stay valid."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    write_json(out_dir / MARKER, {"tool": tool, "settings": settings, "started": started})
    journal = "".join(
        json.dumps({"unit": k, "value": json_ready(v)}) + "\n" for k, v in keep.items()
    )
    (out_dir / JOURNAL).write_text(journal, encoding="utf-8")
    return Unfinished(out_dir, tool, json_ready(settings), dict(keep))
