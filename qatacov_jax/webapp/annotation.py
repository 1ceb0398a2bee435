"""The annotation session behind `/api/annotate`: where the candidates come from, how they
are shown, and the store that keeps the decisions (`qatacov_jax.annotation.store`).

Two sources of candidates (docs/annotation.md):

* `StoredCandidates` (review, `scripts/serve.py --review CANDIDATES`): the masks a stage
  wrote (`annotation.candidates.CandidateStore`); no model is loaded. In Stage I each
  image's candidates come from the fold models that never saw it.
* `LiveCandidates` (`--annotate XRAYS --candidates RUN ...`): the loaded models predict an
  image when it is opened (the last few are cached); without a model (`--annotate` alone)
  there are no candidates and masks are drawn.

`--reference MASKS` adds the doctors' own mask of an image as the candidate `manual`. Shown
blind, every candidate is "candidate A", "candidate B"... in an order shuffled per image;
otherwise the models' pixel-vote consensus is offered too (`candidate_set`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from qatacov_jax.annotation import layout
from qatacov_jax.annotation.candidates import CandidateStore, dice, read_mask
from qatacov_jax.annotation.decisions import MANUAL, OUTCOMES
from qatacov_jax.annotation.store import (
    PROVENANCE,
    AnnotationStore,
    ConflictError,
    ImageInfo,
    UnknownImageError,
)
from qatacov_jax.data import imageio

DATASET_DIR = layout.QATA_DIR  # QaTa-COV19/QaTa-COV19-v1
CONSENSUS = "consensus"
ORDERS = ("name", "random", "disagreement", "entropy")
image_key = layout.image_key

__all__ = [
    "CONSENSUS",
    "DATASET_DIR",
    "MANUAL",
    "PROVENANCE",
    "AnnotationSession",
    "ConflictError",
    "UnknownImageError",
    "blind_labels",
    "candidate_set",
    "dice",
    "image_key",
]


def candidate_set(probs: Mapping[str, np.ndarray], threshold: float = 0.5) -> dict[str, Any]:
    """Masks, consensus and disagreement of candidate masks (or probabilities) for one X-ray.

    Args:
      probs: model name -> (H, W) probabilities or bool masks (at the X-ray's resolution).

    Returns:
      {"masks": name -> (H, W) bool, models first then "consensus" (a strict majority);
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
        agree = [dice(m, masks[o]) for o in names if o != k]
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
    """Label -> candidate name for showing candidates blind: "candidate A", "candidate B",
    ... in an order shuffled per image (stable across reloads)."""
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


# ------------------------------------------------------------------ candidate sources


@dataclasses.dataclass(frozen=True)
class Candidates:
    """One image: (H, W) float [0, 1] X-ray, model name -> (H, W) bool mask, and model
    name -> (H, W) probabilities (None where none are kept)."""

    xray: np.ndarray
    masks: dict[str, np.ndarray]
    probs: dict[str, np.ndarray] | None


class CandidateSource(Protocol):
    mode: str
    stage: str | None
    target: str
    models: tuple[str, ...]

    def catalog(self) -> dict[str, ImageInfo]: ...
    def xray(self, key: str) -> np.ndarray: ...
    def load(self, key: str) -> Candidates: ...
    def score(self, key: str, order: str) -> float: ...


class StoredCandidates:
    """Candidates from a stage's candidate store (no model)."""

    mode = "review"

    def __init__(self, root: str | Path) -> None:
        self.store = CandidateStore(root)
        self.stage, self.target = self.store.stage, self.store.target
        self.models = self.store.models

    def catalog(self) -> dict[str, ImageInfo]:
        out = {}
        for key, info in self.store.images.items():
            src = info.get("source")
            shown = Path(src).name if src else f"{key}.png"
            klass = layout.lung_class(Path(src)) if src else layout.DEFAULT_CLASS
            out[key] = ImageInfo(shown, src, klass)
        return out

    def xray(self, key: str) -> np.ndarray:
        return self.store.xray(key)

    def load(self, key: str) -> Candidates:
        return Candidates(self.store.xray(key), self.store.masks(key), self.store.probs(key))

    def score(self, key: str, order: str) -> float:
        return self.store.score(key, order)


class LiveCandidates:
    """Candidates predicted by loaded models (`engine.Engine.candidates`)."""

    mode = "live"
    stage = None
    target = "infection"

    def __init__(
        self,
        images_dir: str | Path,
        names: tuple[str, ...],
        threshold: float,
        predict: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.images_dir = Path(images_dir).absolute()
        self.sources = layout.xray_folder(self.images_dir)
        self.models, self.threshold = tuple(names), float(threshold)
        # Set once the models are loaded (`scripts/serve.py` checks the folders first).
        self.predict = predict

    def catalog(self) -> dict[str, ImageInfo]:
        return {
            k: ImageInfo(p.relative_to(self.images_dir).as_posix(), str(p))
            for k, p in self.sources.items()
        }

    def xray(self, key: str) -> np.ndarray:
        return imageio.read_xray(self.sources[key])

    def load(self, key: str) -> Candidates:
        img = self.xray(key)
        if not self.models:  # drawing without a model
            return Candidates(img, {}, None)
        assert self.predict is not None, "LiveCandidates.predict is set before serving"
        probs = self.predict(img)
        probs = {k: probs[k] for k in self.models}
        return Candidates(img, {k: p >= self.threshold for k, p in probs.items()}, probs)

    def score(self, key: str, order: str) -> float:
        raise ValueError(f"--order {order} needs a candidate store (--review)")


# ------------------------------------------------------------------ the session


class AnnotationSession:
    """A candidate source, the annotation folder's store, the reference masks and the
    order images are offered in: what `app.state.store` holds in annotation mode."""

    def __init__(
        self,
        source: CandidateSource,
        out_dir: str | Path,
        *,
        votes: int = 1,
        order: str = "name",
        seed: int = 0,
        reference: str | Path | None = None,
        cache_size: int = 16,
    ) -> None:
        if order not in ORDERS:
            raise ValueError(f"--order must be one of {ORDERS}, got {order!r}")
        self.source, self.order_name = source, order
        out = Path(out_dir).absolute()
        if isinstance(source, LiveCandidates):
            inside = source.images_dir.resolve()
            if inside == out.resolve() or inside in out.resolve().parents:
                raise ValueError(
                    f"--annotations {out_dir} must lie outside the --annotate folder "
                    "(its accepted masks would otherwise be offered for annotation again)."
                )
        self.reference: dict[str, layout.Entry] = (
            layout.read_masks(reference, source.target, all_splits=True) if reference else {}
        )
        self.store = AnnotationStore(
            out_dir,
            source.catalog(),
            source.xray,
            target=source.target,
            votes=votes,
            stage=source.stage,
        )
        self.order = self._ordered(order, seed)
        self._cache: collections.OrderedDict[str, Candidates] = collections.OrderedDict()
        self._cache_size, self._lock = cache_size, threading.Lock()

    def _ordered(self, order: str, seed: int) -> list[str]:
        keys = list(self.store.catalog)
        if order == "name":
            return sorted(keys)
        if order == "random":
            random.Random(seed).shuffle(keys)
            return keys
        return sorted(keys, key=lambda k: (-self.source.score(k, order), k))

    def candidates(self, key: str) -> Candidates:
        """The image's candidates (models, then `manual` with a reference mask); cached."""
        self.store.check_key(key)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        c = self.source.load(key)
        if key in self.reference:
            c.masks[MANUAL] = _fit(read_mask(self.reference[key].mask), c.xray.shape)
        with self._lock:
            self._cache[key] = c
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return c

    def settings(self, blind: bool) -> dict[str, Any]:
        return {
            "mode": self.source.mode,
            "stage": self.source.stage,
            "target": self.source.target,
            "outcomes": list(OUTCOMES[self.source.target]),
            "votes": self.store.votes,
            "order": self.order_name,
            "blind": blind,
            "reference": bool(self.reference),
        }

    def progress(self, annotator: str | None = None) -> dict[str, Any]:
        return self.store.progress(self.order, annotator)


def _fit(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A reference mask at the X-ray's size (nearest neighbour when they differ)."""
    if mask.shape == tuple(shape):
        return mask
    im = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    return np.asarray(im.resize((shape[1], shape[0]), Image.NEAREST)) > 0
