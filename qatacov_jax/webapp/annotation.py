"""Annotation mode: candidate masks for an X-ray, and the store of accepted masks.

Paper 1 built QaTa-COV19's ground truth collaboratively: models trained on a first set of
masks propose candidates for new X-rays, a doctor picks the best, corrects it or draws it by
hand, and the models are retrained on the result, in stages
(docs/method.md#collaborative-annotation). Here:

* `candidate_set`: every candidate model's mask (probability >= threshold), their pixel-vote
  consensus (a strict majority of the models), and the disagreement (pixels the models do
  not all agree on), each with its area and its mean Dice agreement with the models.
* `AnnotationStore`: the one place that writes. An accepted mask goes to the QaTa-COV19
  layout the `qatacov19` TFDS builder reads (`data/qatacov19.py`) with the annotation folder
  as its manual directory::

      OUT/QaTa-COV19/QaTa-COV19-v1/Images/<key>.png             the X-ray (8-bit)
      OUT/QaTa-COV19/QaTa-COV19-v1/Ground-truths/mask_<key>.png the mask (0/255)
      OUT/controls/<key>.png                                    X-rays marked "no infection"
      OUT/annotations.jsonl                                     one provenance line per save
      OUT/history/<key>.r<N>...png                              what a later save replaced

  Progress is the provenance file (plus outputs already on disk), so it survives a restart.
  Each image has a revision (saves so far); a save names the revision it started from and is
  refused with `ConflictError` (HTTP 409) when someone saved in between, so two annotators
  never silently overwrite each other. Writes are atomic (`runtime.files`); within the
  process a lock makes check-and-write one step. A cross-process run-directory lock would be
  taken in `save` only.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qatacov_jax.data import imageio
from qatacov_jax.data.qatacov19 import ROOT as QATA_ROOT
from qatacov_jax.runtime.files import json_ready, save_png

log = logging.getLogger(__name__)

DATASET_DIR = Path(QATA_ROOT) / f"{QATA_ROOT}-v1"  # QaTa-COV19/QaTa-COV19-v1
IMAGES = "Images"
MASKS = "Ground-truths"
CONTROLS = "controls"
HISTORY = "history"
PROVENANCE = "annotations.jsonl"
CONSENSUS = "consensus"
MANUAL = "manual"


class ConflictError(RuntimeError):
    """Someone saved the image since the client loaded it (HTTP 409)."""


class UnknownImageError(KeyError):
    """No such image in the annotation folder (HTTP 404)."""


# ------------------------------------------------------------------ candidates


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (they agree on "nothing")."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def candidate_set(probs: Mapping[str, np.ndarray], threshold: float = 0.5) -> dict[str, Any]:
    """Masks, consensus and disagreement of the candidate models for one X-ray.

    Args:
      probs: model name -> (H, W) infection probabilities (at the X-ray's resolution).

    Returns:
      {"masks": name -> (H, W) bool, models first then "consensus";
       "votes": (H, W) float fraction of models voting "infected";
       "stats": name -> {"area_percent", "dice_with_models"} (mean Dice with the *other*
       models; for the consensus, with every model; NaN with a single model);
       "disagreement_percent": % of pixels where the models are not unanimous}.
    """
    names = list(probs)
    masks = {k: np.asarray(probs[k]) >= threshold for k in names}
    votes = np.mean(np.stack([masks[k] for k in names]), axis=0)
    masks[CONSENSUS] = votes > 0.5  # strict majority (two models: both)
    stats = {}
    for k, m in masks.items():
        others = [o for o in names if o != k]
        agree = [dice(m, masks[o]) for o in others]
        stats[k] = {
            "area_percent": 100.0 * float(m.mean()),
            "dice_with_models": float(np.mean(agree)) if agree else float("nan"),
        }
    disagree = (votes > 0) & (votes < 1)
    return {
        "masks": masks,
        "votes": votes.astype(np.float32),
        "stats": stats,
        "disagreement_percent": 100.0 * float(disagree.mean()),
    }


def blind_labels(key: str, names: list[str]) -> dict[str, str]:
    """Label -> model name for showing candidates blind (docs/method.md#collaborative-annotation):
    "candidate A", "candidate B", ... in an order shuffled per image (stable across reloads,
    so the same X-ray always shows the same order)."""
    seed = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")
    order = list(names)
    random.Random(seed).shuffle(order)
    return {f"candidate {chr(ord('A') + i)}": n for i, n in enumerate(order)}


def overlay(xray8: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40)):
    """(H, W) uint8 X-ray + (H, W) bool mask -> (H, W, 3) uint8, mask tinted at 55%."""
    rgb = np.repeat(xray8[..., None], 3, axis=-1).astype(np.float32)
    tint = np.asarray(colour, np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * tint
    return np.round(rgb).astype(np.uint8)


def disagreement_image(xray8: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Where the models disagree, yellow (few vote "infected") to orange (most do); the
    rest of the X-ray dimmed."""
    rgb = np.repeat(xray8[..., None], 3, axis=-1).astype(np.float32) * 0.6
    split = (votes > 0) & (votes < 1)
    v = votes[split][:, None]
    colour = (1 - v) * np.asarray([255, 230, 0], np.float32) + v * np.asarray([255, 110, 0])
    rgb[split] = 0.3 * rgb[split] + 0.7 * colour
    return np.round(rgb).astype(np.uint8)


# ------------------------------------------------------------------ the store


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_key(rel: Path) -> str:
    """Source path relative to the annotated folder's parent -> output stem: folders joined
    by '__', odd characters '_' (`batch1/sub/x.png` -> `batch1__sub__x`). The folder's own
    name is kept so that later batches (`batch2/x.png`) add to the dataset, not replace."""
    parts = [_SAFE.sub("_", p) for p in rel.with_suffix("").parts]
    return "__".join(p.strip("._") or "_" for p in parts)


@dataclasses.dataclass(frozen=True)
class Paths:
    image: Path
    mask: Path
    control: Path


class AnnotationStore:
    """The X-rays to annotate (`images_dir`) and the accepted masks (`out_dir`)."""

    def __init__(self, images_dir: str | Path, out_dir: str | Path) -> None:
        self.images_dir = Path(images_dir).absolute()
        self.out_dir = Path(out_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"--annotate folder {self.images_dir} does not exist.")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FileExistsError(f"--annotations {self.out_dir} exists and is not a folder.")
        inside = self.images_dir.resolve()
        if inside == self.out_dir.resolve() or inside in self.out_dir.resolve().parents:
            raise ValueError(
                f"--annotations {self.out_dir} must lie outside the --annotate folder "
                "(its accepted masks would otherwise be offered for annotation again)."
            )
        self.sources: dict[str, Path] = {}
        for p in sorted(self.images_dir.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and _is_image(p):
                key, n = image_key(p.relative_to(self.images_dir.parent)), 2
                base = key
                while key in self.sources:
                    key, n = f"{base}_{n}", n + 1
                self.sources[key] = p
        if not self.sources:
            raise FileNotFoundError(
                f"--annotate folder {self.images_dir} holds no X-ray files "
                f"({', '.join(imageio.SUPPORTED_SUFFIXES)} or DICOM)."
            )
        self._lock = threading.Lock()
        self._records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self._load()
        for key, src in self.sources.items():
            other = next(
                (
                    r["source"]
                    for r in self._records.get(key, [])
                    if r.get("source") not in (None, str(src))
                ),
                None,
            )
            if other is not None:
                raise ValueError(
                    f"{self.out_dir / PROVENANCE} already holds {key} from {other}, not "
                    f"{src}; give the new X-rays a folder of another name or use another "
                    "--annotations folder."
                )

    # -- reading
    def paths(self, key: str) -> Paths:
        ds = self.out_dir / DATASET_DIR
        return Paths(
            ds / IMAGES / f"{key}.png",
            ds / MASKS / f"mask_{key}.png",
            self.out_dir / CONTROLS / f"{key}.png",
        )

    def _load(self) -> None:
        path = self.out_dir / PROVENANCE
        if not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._records[str(rec["key"])].append(rec)
            except (json.JSONDecodeError, KeyError, TypeError):
                # Only a crash mid-append leaves a bad line (the last); its files, if
                # written, still count through `revision`.
                log.warning("%s:%d: unreadable provenance line skipped", path, i)

    def check_key(self, key: str) -> Path:
        if key not in self.sources:
            raise UnknownImageError(key)
        return self.sources[key]

    def revision(self, key: str) -> int:
        """Saves so far; an output on disk without a provenance line counts as one."""
        recs = self._records.get(key, [])
        rev = max((int(r.get("revision", 0)) for r in recs), default=0)
        if rev == 0 and any(p.exists() for p in dataclasses.astuple(self.paths(key))):
            rev = 1
        return rev

    def last_record(self, key: str) -> dict[str, Any] | None:
        recs = self._records.get(key)
        return recs[-1] if recs else None

    def pending(self) -> list[str]:
        """Keys without an accepted mask, in file order."""
        return [k for k in self.sources if self.revision(k) == 0]

    def progress(self) -> dict[str, Any]:
        pending = self.pending()
        return {
            "total": len(self.sources),
            "done": len(self.sources) - len(pending),
            "pending": len(pending),
            "next": pending[0] if pending else None,
        }

    def accepted_mask(self, key: str) -> np.ndarray | None:
        """(H, W) bool of the mask saved last for `key` (all False for "no infection"), or
        None when nothing was accepted yet."""
        p = self.paths(key)
        if p.mask.exists():
            with Image.open(p.mask) as im:
                return np.asarray(im.convert("L")) > 0
        if p.control.exists():
            with Image.open(p.control) as im:
                return np.zeros((im.height, im.width), bool)
        return None

    def read_xray(self, key: str) -> np.ndarray:
        """(H, W) float [0, 1] of the source file (`data.imageio.read_xray`)."""
        return imageio.read_xray(self.check_key(key))

    # -- writing (the only method that writes)
    def save(
        self,
        key: str,
        xray: np.ndarray,
        mask: np.ndarray | None,
        *,
        base_revision: int,
        source: str,
        dice_chosen_vs_final: float | None,
        seconds: float | None,
        annotator: str | None,
    ) -> dict[str, Any]:
        """Accepts the mask of image `key` (None = "no infection") and records provenance.

        Args:
          xray: (H, W) float [0, 1] X-ray (written as the dataset's 8-bit image).
          mask: (H, W) bool, or None to file the X-ray as a control (no infection).
          base_revision: the revision the annotator started from (`revision(key)` then).

        Raises:
          ConflictError: the image was saved by someone else since `base_revision`.
        """
        src = self.check_key(key)
        with self._lock:
            current = self.revision(key)
            if base_revision != current:
                last = self.last_record(key) or {}
                who = last.get("annotator") or "another annotator"
                raise ConflictError(
                    f"{key} was saved by {who} (revision {current}, you started from "
                    f"{base_revision}); reload it to see their mask before saving yours"
                )
            rev = current + 1
            p = self.paths(key)
            moved = self._to_history(key, rev - 1, p)
            xray8 = np.round(np.clip(xray, 0.0, 1.0) * 255.0).astype(np.uint8)
            if mask is None:
                written = [save_png(p.control, xray8)]
            else:
                # Image first: the builder pairs Images/x.png with mask_x.png, and a mask
                # without its image would be a dangling file.
                written = [save_png(p.image, xray8)]
                written.append(save_png(p.mask, np.where(mask, 255, 0).astype(np.uint8)))
            rec = {
                "key": key,
                "image": src.relative_to(self.images_dir).as_posix(),
                "source": str(src),
                "revision": rev,
                "decision": "no_infection" if mask is None else "mask",
                "chosen": source,
                "dice_chosen_vs_final": dice_chosen_vs_final,
                "mask_area_percent": 0.0 if mask is None else 100.0 * float(mask.mean()),
                "seconds": seconds,
                "annotator": annotator or None,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": [f.relative_to(self.out_dir).as_posix() for f in written],
                "replaced": moved,
            }
            self._append(rec)
            self._records[key].append(rec)
            return rec

    def _to_history(self, key: str, old_rev: int, p: Paths) -> list[str]:
        """Moves the outputs a new save replaces to history/ (never lost, never in the data)."""
        moved = []
        for kind, f in (("image", p.image), ("mask", p.mask), ("control", p.control)):
            if f.exists():
                dst = self.out_dir / HISTORY / f"{key}.r{old_rev}.{kind}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                f.replace(dst)
                moved.append(dst.relative_to(self.out_dir).as_posix())
        return moved

    def _append(self, rec: dict[str, Any]) -> None:
        path = self.out_dir / PROVENANCE
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(json_ready(rec)) + "\n"
        # One write of one line, flushed to disk before the save is reported done.
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in imageio.SUPPORTED_SUFFIXES or (
        p.suffix == "" and imageio.is_dicom(p)
    )
