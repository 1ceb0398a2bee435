"""Recognising storage faults (disk full, quota, file-size limit, read-only, vanished) in
whatever wrapper a library raised them, so that they end a command with one line.

Orbax/TensorStore report a full disk as a `ValueError` mentioning RESOURCE_EXHAUSTED, Python
as `OSError(ENOSPC)`; the original OSError may hide in `__cause__` / `__context__`. See
docs/reliability.md#storage-faults.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# errno -> what the user is told.
FULL_ERRNOS = {
    errno.ENOSPC: "the disk is full (ENOSPC)",
    errno.EDQUOT: "the disk quota is exceeded (EDQUOT)",
    errno.EFBIG: "the file-size limit was hit (EFBIG; see `ulimit -f`)",
}
READ_ONLY_ERRNOS = {
    errno.EROFS: "the file system is read-only (EROFS)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
}
# Messages of libraries that do not keep the errno (TensorStore / absl status strings).
_FULL_WORDS = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "file too large": errno.EFBIG,
    "resource_exhausted": errno.ENOSPC,
}
_READ_ONLY_WORDS = {
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
}


class StorageError(OSError):
    """A write failed for a storage reason; the message is the whole story (one line)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 50:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        todo += list(getattr(e, "exceptions", ()) or ())  # ExceptionGroup
    return seen


def storage_errno(exc: BaseException) -> int | None:
    """The errno of a disk-full / quota / file-size / read-only cause of `exc`, or None."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno in (*FULL_ERRNOS, *READ_ONLY_ERRNOS):
            return e.errno
    for e in chain:
        text = str(e).lower()
        for words, code in (*_FULL_WORDS.items(), *_READ_ONLY_WORDS.items()):
            if words in text:
                return code
    return None


def describe(code: int) -> str:
    """'the disk is full (ENOSPC)' etc."""
    return {**FULL_ERRNOS, **READ_ONLY_ERRNOS}.get(code, os.strerror(code))


def is_full(code: int | None) -> bool:
    return code in FULL_ERRNOS


def check_writable(directory: str | os.PathLike, what: str) -> None:
    """Raises StorageError (one line) if a file cannot be created in `directory`.

    `os.access` is not enough: it says yes to root on a read-only mount and to anyone on a
    full disk, so a real probe file is created and removed.
    """
    directory = Path(directory)
    probe = directory / f".qatacov-write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
    except OSError as e:
        code = storage_errno(e) or e.errno
        raise StorageError(
            f"cannot write {what} {directory}: {describe(code) if code else e}", code
        ) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
