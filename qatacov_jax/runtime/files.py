"""Atomic writes: a reader (or a crash) never sees half a file under its final name.

Every JSON, CSV, text and PNG output of the project goes through these functions: the
content is written to a temporary sibling and renamed over the target, which is atomic on
POSIX file systems.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class OutputExistsError(FileExistsError):
    """An output (file or run directory) exists and overwriting was not asked for; raised
    before any work is done so earlier results are never half-replaced."""


def json_ready(obj: Any) -> Any:
    """A structure `json.dumps` accepts: NumPy / JAX scalars and arrays become Python
    numbers and lists, paths strings, bytes `{"__bytes__": hex}`, and non-finite floats
    `None` (an undefined rate, e.g. precision with no positive prediction; strict JSON
    readers reject NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, bytes):
        return {"__bytes__": obj.hex()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__array__") or isinstance(obj, np.generic):
        return json_ready(np.asarray(obj).tolist())
    if hasattr(obj, "items"):  # Mapping-like (ConfigDict, nnx.State, MappingProxyType)
        return {str(k): json_ready(v) for k, v in obj.items()}
    raise TypeError(f"Cannot write {type(obj).__name__} to JSON")


def from_json_ready(obj: Any) -> Any:
    """Undoes the bytes encoding of `json_ready` (grain iterator states may hold bytes)."""
    if isinstance(obj, dict):
        if set(obj) == {"__bytes__"}:
            return bytes.fromhex(obj["__bytes__"])
        return {k: from_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_ready(v) for v in obj]
    return obj


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp)` on a temporary sibling of `path`, then renames it to `path`.

    The temporary name keeps the suffix (`x.tmp.png`), so writers that pick a format by
    suffix (PIL) still work. On failure the temporary file is removed and `path` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def replace_dir(out_dir: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Builds a directory with `fill(tmp)` in a hidden sibling, then renames it over `out_dir`.

    Readers never see a half-written directory, and an existing `out_dir` (whether it may be
    replaced is the caller's decision) is removed only once the new one is complete; if
    anything fails, the new one is deleted and the previous one put back.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        fill(tmp)
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.rename(old, out_dir)  # put the previous one back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically writes `text` (UTF-8)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Atomically writes `obj` as indented JSON (see `json_ready` for what is converted)."""
    return write_text(path, json.dumps(json_ready(obj), indent=2, sort_keys=sort_keys) + "\n")


# zlib level for every PNG we write. Pillow's default (6) spent 197 ms encoding one 1024x1024
# infection map, four times the model's own time per image on a 2-core CPU; level 1 took
# 54 ms for a file 1.3x the size (level 0: 23 ms but 4x the size). PNG stays lossless at any
# level, so only size and time change.
PNG_COMPRESS_LEVEL = 1


def save_png(
    path: str | os.PathLike, array: np.ndarray, *, compress_level: int = PNG_COMPRESS_LEVEL
) -> Path:
    """Atomically writes a (H, W) or (H, W, 3) uint8 array as PNG (zlib `compress_level`)."""
    return write_atomic(
        path,
        lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=compress_level),
    )
