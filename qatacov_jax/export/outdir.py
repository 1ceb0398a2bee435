"""Output directories of exports: never half-written, never replacing what is not ours.

An export is written into a temporary sibling of `--out` (`.NAME.tmp-XXXX`) and renamed into
place only once complete, so a failed or interrupted export leaves nothing behind under the
final name. An existing `--out` is refused unless it is empty, or `overwrite` is set *and* it
holds a `manifest.json` of ours (an earlier export): anything else is never replaced.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qatacov_jax.export.manifest import MANIFEST_FILE, read_manifest
from qatacov_jax.runtime.locking import run_dir_lock


def check_output(out: Path, overwrite: bool) -> None:
    """Raises FileExistsError (one line, naming the fix) if `out` may not be written."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(
            f"--out {out} exists and is not a directory; refusing to replace it. "
            "Choose another --out."
        )
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"--out {out} already exists; refusing to replace it. Choose another --out, or "
            "pass --overwrite to replace an earlier export."
        )
    if read_manifest(out) is None:
        raise FileExistsError(
            f"--out {out} is not an export of this project (no {MANIFEST_FILE} of ours in it); "
            "refusing to replace it even with --overwrite. Choose another --out."
        )


@contextlib.contextmanager
def staged_output(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary sibling of `out` to write into; on success renames it to
    `out` (replacing an allowed earlier one), on any error removes it.

    Raises:
      FileExistsError: `out` may not be written (`check_output`), checked before and after.
    """
    out = Path(out).absolute()
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Locked beside `out` (it is replaced as a whole): a second export into the same --out
    # is refused at once instead of racing the renames (runtime/locking.py).
    with run_dir_lock(out, purpose="export", beside=True):
        yield from _staged(out, overwrite)


def _staged(out: Path, overwrite: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        check_output(out, overwrite)  # something may have appeared while we worked
        if not out.exists():
            tmp.rename(out)
        elif not any(out.iterdir()):
            out.rmdir()
            tmp.rename(out)
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
