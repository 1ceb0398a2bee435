"""The annotation folder: every decision, and the accepted dataset derived from them.

`AnnotationStore` is the one writer of an annotation folder (layout in
docs/annotation.md#output-folder-annotations-out). A decision is kept in three steps, each
atomic, so that a crash anywhere leaves a folder a restart repairs:

1. the mask it implies goes to `decisions/<key>.<n>.png` (every decision's mask is kept);
2. its record is appended to `annotations.jsonl` (flushed to disk);
3. the image's votes are resolved (`decisions.resolve`) and its accepted files in the
   builder layout (`layout.accepted_paths`) made to match; what they replace goes to
   `history/`; `accepted.json` notes which decision the files hold.

On start, step 3 is redone for every image whose files do not match its decisions. A "no
visible infection" image is accepted as a COVID-19 X-ray with an all-black mask. Folders
written by the earlier store (no-infection X-rays filed under `controls/`) are read as
decisions and converted on start.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qatacov_jax.annotation import decisions as dec
from qatacov_jax.annotation.candidates import read_mask
from qatacov_jax.annotation.layout import (
    DEFAULT_CLASS,
    accepted_paths,
    check_target,
    prepare_lung_tree,
)
from qatacov_jax.runtime.files import json_ready, save_png, write_json

log = logging.getLogger(__name__)

PROVENANCE = "annotations.jsonl"
ACCEPTED = "accepted.json"
DECISIONS = "decisions"
HISTORY = "history"
CONTROLS = "controls"  # the earlier store's "no infection" folder (converted on start)


class ConflictError(RuntimeError):
    """A decision would silently override one saved since the client loaded (HTTP 409)."""


class UnknownImageError(KeyError):
    """No such image in this annotation session (HTTP 404)."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """An image to decide: shown name (`image`), original file, COVID-QU-Ex class folder."""

    image: str
    source: str | None = None
    klass: str = DEFAULT_CLASS


class AnnotationStore:
    """Decisions on the images of `catalog`, written to `out_dir`.

    Args:
      out_dir: the annotation folder (created).
      catalog: key -> `ImageInfo` of the images of this session (others already in the
        folder, e.g. an earlier stage's, are kept untouched).
      read_xray: key -> (H, W) float [0, 1] X-ray (to write accepted files on a restart).
      target: `infection` or `lung` (which builder layout, which outcomes).
      votes: final votes an image needs (`--votes`).
      stage: recorded with every decision (`I`, `II`, or None for live annotation).
    """

    def __init__(
        self,
        out_dir: str | Path,
        catalog: Mapping[str, ImageInfo],
        read_xray: Callable[[str], np.ndarray],
        *,
        target: str = "infection",
        votes: int = 1,
        stage: str | None = None,
    ) -> None:
        if votes < 1:
            raise ValueError(f"--votes must be at least 1, got {votes}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FileExistsError(f"--annotations {self.out_dir} exists and is not a folder.")
        self.catalog = dict(catalog)
        self.target, self.votes, self.stage = check_target(target), int(votes), stage
        self._read_xray = read_xray
        self._lock = threading.RLock()
        self._records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self._accepted: dict[str, dict[str, Any]] = {}
        # Resolutions by key, dropped when the key gets a decision: progress asks for every
        # image's state on each request (tens of thousands in paper 2's Stage III).
        self._status: dict[str, dec.Resolution] = {}
        self._load()
        self._check_sources()
        if target == "lung":
            prepare_lung_tree(self.out_dir)
        for key in self.catalog:
            if key in self._records:
                self._apply(key)

    # ------------------------------------------------------------------ reading

    def _load(self) -> None:
        path = self.out_dir / PROVENANCE
        if path.exists():
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = dec.from_legacy_record(json.loads(line))
                    self._records[str(rec["key"])].append(rec)
                except (json.JSONDecodeError, KeyError, TypeError):
                    # Only a crash mid-append leaves a bad line (the last).
                    log.warning("%s:%d: unreadable decision line skipped", path, i)
        state = self.out_dir / ACCEPTED
        if state.exists():
            self._accepted = json.loads(state.read_text())

    def _check_sources(self) -> None:
        for key, info in self.catalog.items():
            other = next(
                (
                    r["source"]
                    for r in self._records.get(key, [])
                    if info.source and r.get("source") not in (None, info.source)
                ),
                None,
            )
            if other is not None:
                raise ValueError(
                    f"{self.out_dir / PROVENANCE} already holds {key} from {other}, not "
                    f"{info.source}; give the new X-rays a folder of another name or use another "
                    "--annotations folder."
                )

    def check_key(self, key: str) -> ImageInfo:
        if key not in self.catalog:
            raise UnknownImageError(key)
        return self.catalog[key]

    def records(self, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records.get(key, [])]

    def revision(self, key: str) -> int:
        """The image's final decisions so far (skips do not count)."""
        return sum(1 for r in self._records.get(key, []) if r["outcome"] != dec.SKIP)

    def status(self, key: str) -> dec.Resolution:
        with self._lock:
            if key not in self._status:
                self._status[key] = dec.resolve(self._records.get(key, []), self.votes)
            return self._status[key]

    def accepted_mask(self, key: str) -> np.ndarray | None:
        """(H, W) bool of the accepted mask of `key`, or None when it has none."""
        _, mask_path = accepted_paths(self.out_dir, key, self.target, self.check_key(key).klass)
        if self.status(key).state != dec.ACCEPTED or not mask_path.is_file():
            return None
        return read_mask(mask_path)

    def progress(self, order: Sequence[str], annotator: str | None = None) -> dict[str, Any]:
        """Counts by state and the next image for `annotator` (docs/annotation.md)."""
        with self._lock:
            states = collections.Counter(self.status(k).state for k in self.catalog)
            return {
                "total": len(self.catalog),
                "done": states[dec.ACCEPTED] + states[dec.EXCLUDED],
                "pending": states[dec.OPEN],
                "adjudication": states[dec.ADJUDICATION],
                "excluded": states[dec.EXCLUDED],
                "next": self.next_key(order, annotator),
            }

    def next_key(self, order: Sequence[str], annotator: str | None = None) -> str | None:
        """The first open image `annotator` has neither voted on nor skipped, then the ones
        they skipped (oldest skip first); without `annotator`, the first open image."""
        with self._lock:
            open_keys = [k for k in order if self.status(k).state == dec.OPEN]
            if annotator is None:
                return open_keys[0] if open_keys else None
            skipped: list[tuple[str, str]] = []
            for k in open_keys:
                mine = [r for r in self._records.get(k, []) if r.get("annotator") == annotator]
                if not mine:
                    return k
                if all(r["outcome"] == dec.SKIP for r in mine):
                    skipped.append((str(mine[-1].get("saved_at")), k))
            return min(skipped)[1] if skipped else None

    def mine(self, key: str, annotator: str | None) -> dict[str, Any] | None:
        recs = [r for r in self.records(key) if annotator and r.get("annotator") == annotator]
        return recs[-1] if recs else None

    # ------------------------------------------------------------------ writing

    def decide(
        self,
        key: str,
        *,
        annotator: str,
        outcome: str,
        xray: np.ndarray,
        mask: np.ndarray | None,
        chosen: str | None = None,
        revision: int | None = None,
        adjudicate: bool = False,
        fields: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Records one decision on image `key` and updates the accepted files.

        Args:
          annotator: who decided (their latest decision is their vote).
          outcome: one of `decisions.OUTCOMES[target]` (checked by the caller with the
            candidates it showed: `decisions.check`).
          xray: (H, W) float [0, 1], the image's X-ray (written as the accepted image).
          mask: (H, W) bool, the mask the decision implies (a picked candidate's, the
            corrected or drawn one, all False for no infection), or None (exclude, skip,
            unsure without a mask).
          chosen: the candidate's real name, or `manual` for a drawn mask.
          revision: the image's revision when the client loaded it (see `ConflictError`).
          fields: more to record (seconds, note, the shown name, Dice to the candidate...).

        Raises:
          ConflictError: a decision this one would override was saved since `revision`.
        """
        info = self.check_key(key)
        with self._lock:
            self._check_conflict(key, annotator, revision)
            n = len(self._records.get(key, [])) + 1
            mask_file = None
            if mask is not None:
                path = self.out_dir / DECISIONS / f"{key}.{n}.png"
                save_png(path, np.where(mask, 255, 0).astype(np.uint8))
                mask_file = path.relative_to(self.out_dir).as_posix()
            counted = outcome != dec.SKIP
            rec = {
                "key": key,
                "image": info.image,
                "source": info.source,
                "stage": self.stage,
                "revision": self.revision(key) + int(counted),
                "outcome": outcome,
                "chosen": chosen,
                "annotator": annotator,
                "adjudicate": bool(adjudicate),
                "votes_needed": self.votes,
                "mask_file": mask_file,
                "mask_area_percent": None if mask is None else 100.0 * float(np.mean(mask)),
                **dict(fields or {}),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self._append(rec)
            self._records[key].append(rec)
            self._status.pop(key, None)
            self._apply(key, xray)
            return dict(rec)

    def _check_conflict(self, key: str, annotator: str, revision: int | None) -> None:
        if revision is None:
            return
        counted = [r for r in self._records.get(key, []) if r["outcome"] != dec.SKIP]
        newer = counted[revision:]
        clash = [
            r
            for r in newer
            if self.votes == 1 or r.get("adjudicate") or r.get("annotator") == annotator
        ]
        if clash:
            who = clash[-1].get("annotator") or "another annotator"
            raise ConflictError(
                f"{key} was decided by {who} (revision {len(counted)}, you started from "
                f"{revision}); reload it to see that decision before saving yours"
            )

    def _append(self, rec: dict[str, Any]) -> None:
        path = self.out_dir / PROVENANCE
        path.parent.mkdir(parents=True, exist_ok=True)
        # One write of one line, flushed to disk before the decision is reported done.
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_ready(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _apply(self, key: str, xray: np.ndarray | None = None) -> None:
        """Makes `key`'s accepted files match its resolution (idempotent)."""
        res = dec.resolve(self._records.get(key, []), self.votes)
        want = res.record if res.state == dec.ACCEPTED else None
        want_id = None if want is None else (want.get("mask_file") or f"legacy:{want['revision']}")
        klass = self.catalog[key].klass if key in self.catalog else DEFAULT_CLASS
        img_path, mask_path = accepted_paths(self.out_dir, key, self.target, klass)
        legacy_control = self.out_dir / CONTROLS / f"{key}.png"
        have = self._accepted.get(key, {}).get("id")
        if have is None and want is not None and want.get("legacy") and mask_path.is_file():
            have = want_id  # the earlier store's accepted files are this decision's
        in_place = mask_path.is_file() and img_path.is_file()
        if have == want_id and (want is None or in_place) and not legacy_control.exists():
            return
        rev = int(self._accepted.get(key, {}).get("revision", 0))
        for kind, f in (("mask", mask_path), ("image", img_path), ("control", legacy_control)):
            self._to_history(key, rev, kind, f)
        if want is not None:
            final = self._final_mask(key, want, xray)
            x = self._read_xray(key) if xray is None else xray
            save_png(img_path, np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8))
            save_png(mask_path, np.where(final, 255, 0).astype(np.uint8))
            self._accepted[key] = {"id": want_id, "revision": int(want["revision"])}
        else:
            self._accepted.pop(key, None)
        write_json(self.out_dir / ACCEPTED, self._accepted, sort_keys=True)

    def _final_mask(self, key: str, rec: Mapping[str, Any], xray: np.ndarray | None) -> np.ndarray:
        if rec.get("mask_file"):
            return read_mask(self.out_dir / rec["mask_file"])
        # An earlier store's "no infection" decision: all black at the X-ray's size.
        x = self._read_xray(key) if xray is None else xray
        return np.zeros(np.shape(x), bool)

    def _to_history(self, key: str, rev: int, kind: str, f: Path) -> None:
        if not f.exists():
            return
        dst = self.out_dir / HISTORY / f"{key}.r{rev}.{kind}.png"
        n = 2
        while dst.exists():
            dst, n = self.out_dir / HISTORY / f"{key}.r{rev}.{kind}.{n}.png", n + 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        f.replace(dst)
