"""Recognising storage faults (disk full, quota, file-size limit, read-only, vanished) in
whatever wrapper a library raised them, so that they end a command with one line.

Orbax/TensorStore report a full disk as a `ValueError` mentioning RESOURCE_EXHAUSTED, Python
as `OSError(ENOSPC)`; the original OSError may hide in `__cause__` / `__context__`. See
docs/reliability.md#storage-faults.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def drop_background_storage_errors(record: logging.LogRecord) -> bool:
    """Logging filter: drops orbax's own ERROR reports of a storage fault (one per write
    thread, each with a traceback); the command ends with one line that names the fault,
    the directory and the intact checkpoint instead. Other errors are kept."""
    if record.levelno < logging.ERROR:
        return True
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and storage_errno(exc) is not None:
        return False
    # orbax's own reports, and asyncio's "Task exception was never retrieved" for orbax's
    # write tasks, name the fault only in their text.
    if any(f in record.pathname for f in ("/orbax/", "/asyncio/")):
        return storage_errno(Exception(record.getMessage())) is None
    return True


class _TracebackFilter(io.TextIOBase):
    """A stderr wrapper that drops tracebacks printed straight to stderr (not logged) whose
    last line is in `drop`: TensorStore write futures that fail after orbax closed its event
    loop (a full disk) print one "RuntimeError: Event loop is closed" each."""

    def __init__(self, stream: Any, drop: tuple[str, ...]) -> None:
        self.stream, self.drop = stream, drop
        # Per thread: the failing futures print from several threads at once.
        self.pending: dict[int, str] = {}
        self.blocks: dict[int, list[str]] = {}
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            me = threading.get_ident()
            if (
                me not in self.blocks
                and not self.pending.get(me)
                and not text.startswith("Traceback (most recent call last):")
            ):
                self.stream.write(text)  # not a traceback: through at once (progress bars)
                return len(text)
            *lines, self.pending[me] = (self.pending.get(me, "") + text).split("\n")
            for line in lines:
                self._line(me, line + "\n")
        return len(text)

    def _line(self, me: int, line: str) -> None:
        block = self.blocks.get(me)
        if block is None:
            if line.startswith("Traceback (most recent call last):"):
                self.blocks[me] = [line]
            else:
                self.stream.write(line)
            return
        block.append(line)
        if not line.startswith((" ", "\t", "Traceback")):  # the exception line ends it
            del self.blocks[me]
            if not any(line.startswith(d) for d in self.drop):
                self.stream.write("".join(block))

    def flush(self) -> None:
        with self.lock:
            me = threading.get_ident()
            if self.pending.get(me) and me not in self.blocks:
                self.stream.write(self.pending.pop(me))
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


@contextlib.contextmanager
def quiet_storage_noise() -> Iterator[None]:
    """For command-line entry points: orbax's per-thread reports of a storage fault and the
    tracebacks of its closed event loop are left out of stderr (the two filters above; the
    logging one goes on every root handler, where propagated records are filtered)."""
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(drop_background_storage_errors)
    old = sys.stderr
    if not isinstance(old, _TracebackFilter):
        sys.stderr = _TracebackFilter(old, ("RuntimeError: Event loop is closed",))
    keep = False
    try:
        yield
    except StorageError:
        # The failed writes' futures keep completing (and printing) after the command has
        # reported the fault, until the interpreter exits: the filters stay.
        keep = True
        raise
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if not keep:
            sys.stderr = old
            for h in handlers:
                h.removeFilter(drop_background_storage_errors)
