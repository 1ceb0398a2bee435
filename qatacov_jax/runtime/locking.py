"""One writer per output directory: `with run_dir_lock(path, purpose="train"): ...`.

Two writers in one run directory (a double submit, a scheduler re-queue while the first job
is alive) corrupt each other's checkpoints. Every command that writes a directory of ours
(train, cross-validate, evaluate, infer, export, port_weights) holds this lock while it
writes; readers (loading a model, reading results) never take it.

The lock is an OS advisory lock (`filelock.FileLock`: `flock` on POSIX) on a hidden file in
the directory (or beside it, for outputs that are renamed into place). The kernel drops it
when the holding process dies, however it dies (kill -9 included), so a stale lock of a dead
process never blocks a resume. The holder's host, pid, start time and purpose are written to
a second file next to the lock so that a refused writer can say who holds it. See
docs/reliability.md#run-directory-lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

LOCK_NAME = ".qatacov.lock"
OWNER_SUFFIX = ".owner.json"


class DirectoryLockedError(RuntimeError):
    """Another live process writes the directory; the message names it and the holder."""


def lock_file(path: str | os.PathLike, *, beside: bool = False) -> Path:
    """The lock file of `path`: `path/.qatacov.lock`, or `path/../.NAME.qatacov.lock` when
    `beside` (for outputs written elsewhere and renamed into place as a whole)."""
    path = Path(path).absolute()
    if beside:
        return path.parent / f".{path.name}{LOCK_NAME}"
    return path / LOCK_NAME


def read_owner(path: str | os.PathLike, *, beside: bool = False) -> dict[str, Any] | None:
    """The recorded holder of `path`'s lock (host, pid, started, purpose), if any."""
    owner = Path(str(lock_file(path, beside=beside)) + OWNER_SUFFIX)
    try:
        return json.loads(owner.read_text())
    except (OSError, ValueError):
        return None


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process (no owner record)"
    return (
        f"{owner.get('purpose', '?')} on host {owner.get('host', '?')}, pid {owner.get('pid', '?')}"
        f", started {owner.get('started', '?')}"
    )


@contextlib.contextmanager
def run_dir_lock(
    path: str | os.PathLike, *, purpose: str, beside: bool = False, enabled: bool = True
) -> Iterator[Path]:
    """Holds the write lock of directory `path` (created if missing) for the `with` body.

    Args:
      path: the directory written (a run directory, an --out folder).
      purpose: what the holder does ("train", "evaluate", ...), shown to refused writers.
      beside: put the lock next to `path` instead of inside it (see `lock_file`).
      enabled: False makes this a no-op (multi-host runs: only process 0 writes and locks).

    Yields:
      The lock file's path.

    Raises:
      DirectoryLockedError: a live process holds the lock (refused at once, no waiting).
    """
    lock_path = lock_file(path, beside=beside)
    if not enabled:
        yield lock_path
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: the loop's signal handlers and orbax threads share the process's
    # hold; is_singleton=False: a second acquisition in this process is refused too.
    lock = filelock.FileLock(lock_path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DirectoryLockedError(
            f"{Path(path).absolute()} is in use by {_describe(read_owner(path, beside=beside))}"
            "; refusing to write it at the same time. Wait for that process to end (or stop it)"
            f", or choose another directory. Lock file: {lock_path}"
        ) from None
    owner_path = Path(str(lock_path) + OWNER_SUFFIX)
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "purpose": purpose,
    }
    try:
        owner_path.write_text(json.dumps(owner) + "\n")
        yield lock_path
    finally:
        # The record goes first: a record without a held lock would name a wrong holder.
        with contextlib.suppress(OSError):
            if read_owner(path, beside=beside) == owner:
                owner_path.unlink()
        lock.release()
