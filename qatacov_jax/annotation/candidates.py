"""The candidate store: the masks a stage's models propose for every image, on disk.

`scripts/annotation_stage.py` writes it and `scripts/serve.py --review` reads it (no model
is loaded to review):

    CANDIDATES/manifest.json              stage, target, threshold, models, and per image its
                                          X-ray, source and each model's files, run and fold
    CANDIDATES/images/<key>.png           the X-ray as reviewed (8-bit, its own resolution)
    CANDIDATES/masks/<model>/<key>.png    the model's mask (probability >= threshold), 0/255
    CANDIDATES/probs/<model>/<key>.png    its probabilities, 16-bit (round(p * 65535))

In Stage I each image's candidate comes from the fold model that never saw the image
(`run` and `fold` name it; the run directory's `splits.json` proves it). Each image also
gets the two orderings' scores: `disagreement` (1 - mean pairwise Dice of the models'
masks; null with one model) and `entropy` (mean binary entropy of the models' maps, bits).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qatacov_jax.annotation.layout import check_target
from qatacov_jax.runtime.files import save_png, write_atomic, write_json

MANIFEST = "manifest.json"
FORMAT = 1
STAGES = ("I", "II")
RESERVED = ("manual", "consensus")  # candidate names the review adds itself


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (they agree on "nothing")."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def disagreement(masks: Mapping[str, np.ndarray]) -> float | None:
    """1 - mean pairwise Dice of the masks; None with fewer than two."""
    pairs = list(itertools.combinations(list(masks.values()), 2))
    if not pairs:
        return None
    return 1.0 - float(np.mean([dice(a, b) for a, b in pairs]))


def mean_entropy(probs: Mapping[str, np.ndarray]) -> float:
    """Mean over models and pixels of the binary entropy (bits) of (H, W) probabilities."""
    values = []
    for p in probs.values():
        p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
        values.append(float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))))
    return float(np.mean(values)) if values else 0.0


def _write_prob(path: Path, prob: np.ndarray) -> None:
    q = np.round(np.clip(np.asarray(prob, np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)
    write_atomic(path, lambda tmp: Image.fromarray(q).save(tmp, format="PNG", compress_level=1))


def read_prob(path: Path) -> np.ndarray:
    """(H, W) float32 probabilities of a 16-bit probability PNG."""
    with Image.open(path) as im:
        return (np.asarray(im, np.float64) / 65535.0).astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool of a mask PNG (foreground = any non-zero pixel)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


class CandidateWriter:
    """Writes a candidate store image by image (resumable: `has` says what is done), then
    its manifest (`finish`)."""

    def __init__(self, root: str | Path, *, stage: str, target: str, threshold: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        self.root = Path(root)
        self.stage, self.target, self.threshold = stage, check_target(target), float(threshold)

    def image_path(self, key: str) -> Path:
        return self.root / "images" / f"{key}.png"

    def files(self, key: str, model: str) -> tuple[Path, Path]:
        return (
            self.root / "masks" / model / f"{key}.png",
            self.root / "probs" / model / f"{key}.png",
        )

    def has(self, key: str, model: str) -> bool:
        return all(p.is_file() for p in self.files(key, model)) and self.image_path(key).is_file()

    def write_image(self, key: str, xray: np.ndarray) -> None:
        """(H, W) float [0, 1] X-ray, stored 8-bit (what the dataset stores)."""
        if not self.image_path(key).is_file():
            save_png(self.image_path(key), np.round(np.clip(xray, 0, 1) * 255).astype(np.uint8))

    def write(self, key: str, model: str, prob: np.ndarray) -> None:
        """(H, W) probabilities at the X-ray's resolution -> mask and probability files
        (probabilities first: `has` is true only once both exist)."""
        mask_path, prob_path = self.files(key, model)
        _write_prob(prob_path, prob)
        save_png(mask_path, np.where(prob >= self.threshold, 255, 0).astype(np.uint8))

    def finish(
        self,
        plan: Mapping[str, Mapping[str, tuple[str, int | None]]],
        *,
        sources: Mapping[str, str | None],
        models: Mapping[str, Mapping[str, Any]],
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Writes `manifest.json` once every (image, model) of `plan` has its files.

        Args:
          plan: key -> model -> (run directory relative to the store's parent, fold or None).
          sources: key -> the original X-ray file (or None).
          models: model name -> what to record about it (config file, summary scores).
        """
        images: dict[str, Any] = {}
        for key, by_model in plan.items():
            missing = [m for m in by_model if not self.has(key, m)]
            if missing:
                raise FileNotFoundError(f"candidates of {key} by {missing} were never written")
            masks, probs, cands = {}, {}, {}
            for model, (run, fold) in by_model.items():
                mask_path, prob_path = self.files(key, model)
                masks[model], probs[model] = read_mask(mask_path), read_prob(prob_path)
                cands[model] = {
                    "mask": mask_path.relative_to(self.root).as_posix(),
                    "prob": prob_path.relative_to(self.root).as_posix(),
                    "run": run,
                    "fold": fold,
                }
            images[key] = {
                "image": self.image_path(key).relative_to(self.root).as_posix(),
                "source": sources.get(key),
                "candidates": cands,
                "disagreement": disagreement(masks),
                "entropy": mean_entropy(probs),
            }
        manifest = {
            "format": FORMAT,
            "stage": self.stage,
            "target": self.target,
            "threshold": self.threshold,
            "models": {k: dict(v) for k, v in models.items()},
            **dict(extra or {}),
            "images": images,
        }
        write_json(self.root / MANIFEST, manifest)
        return manifest


class CandidateStore:
    """A written candidate store, read-only (`scripts/serve.py --review`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --review takes the candidates/ folder that "
                "scripts/annotation_stage.py wrote (WORKDIR/candidates)."
            )
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); rerun the stage.") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{path}: unknown candidate store format {self.manifest.get('format')}"
            )
        self.stage: str = self.manifest["stage"]
        self.target: str = check_target(self.manifest["target"])
        self.models: tuple[str, ...] = tuple(self.manifest["models"])
        self.images: dict[str, dict[str, Any]] = self.manifest["images"]

    def keys(self) -> list[str]:
        return list(self.images)

    def xray(self, key: str) -> np.ndarray:
        """(H, W) float32 [0, 1] X-ray of `key` (KeyError for an unknown key)."""
        with Image.open(self.root / self.images[key]["image"]) as im:
            return np.asarray(im.convert("L"), np.float32) / 255.0

    def masks(self, key: str) -> dict[str, np.ndarray]:
        """Model -> (H, W) bool mask of `key`, in the manifest's model order."""
        cands = self.images[key]["candidates"]
        return {m: read_mask(self.root / cands[m]["mask"]) for m in self.models if m in cands}

    def probs(self, key: str) -> dict[str, np.ndarray]:
        cands = self.images[key]["candidates"]
        return {m: read_prob(self.root / cands[m]["prob"]) for m in self.models if m in cands}

    def score(self, key: str, order: str) -> float:
        """How informative reviewing `key` is: `disagreement` (falls back to `entropy` with
        fewer than two models) or `entropy`."""
        info = self.images[key]
        value = info.get("disagreement") if order == "disagreement" else None
        return float(info.get("entropy") or 0.0) if value is None else float(value)
