"""The one error type of weight porting: it always names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class WeightsError(ValueError):
    """A weights file (or ported directory) cannot be used as asked.

    Attributes:
      path: the offending file or directory.
      reason: what is wrong, naming the first offending tensor where there is one, and what
        to do about it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
