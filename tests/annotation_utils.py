"""Shared by the annotation tests: candidate stores and mask folders written directly (no
training), and the web client of a review server."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from webapp_fixtures import xray

from qatacov_jax.annotation import layout
from qatacov_jax.annotation.candidates import CandidateWriter
from qatacov_jax.webapp import images
from qatacov_jax.webapp.annotation import AnnotationSession, StoredCandidates
from qatacov_jax.webapp.app import Settings, create_app


def blob(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    """(H, W) float probabilities of a soft disc at (cy, cx) (fractions), radius r."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy / h - cy, xx / w - cx) / r
    return np.clip(1.2 - d, 0.0, 1.0).astype(np.float32)


def write_candidate_store(
    root: Path,
    keys: list[str],
    models: list[str],
    *,
    shape: tuple[int, int] = (40, 48),
    target: str = "infection",
    stage: str = "I",
) -> dict[str, dict[str, np.ndarray]]:
    """A candidate store of `keys` x `models` (model j's disc shifted by j); returns each
    image's masks by model. Image i's models agree less as i grows."""
    w = CandidateWriter(root, stage=stage, target=target, threshold=0.5)
    plan, masks = {}, {}
    for i, key in enumerate(keys):
        w.write_image(key, xray(*shape, seed=i) / 255.0)
        masks[key] = {}
        for j, m in enumerate(models):
            prob = blob(shape, 0.5, 0.35 + 0.04 * i * j, 0.2)
            w.write(key, m, prob)
            masks[key][m] = prob >= 0.5
        fold = i % 2 if stage == "I" else None
        run = f"fold_{fold}" if stage == "I" else "all"
        plan[key] = {m: (f"runs/{m}/{run}", fold) for m in models}
    w.finish(
        plan, sources={k: None for k in keys}, models={m: {"config": f"{m}.py"} for m in models}
    )
    return masks


# Model names no page, response or message text contains (blind review leaks none of them).
MODELS = ["zebramodel", "okapimodel", "quaggamodel"]


def write_stage1(
    root: Path, keys: list[str], models: list[str] = MODELS
) -> tuple[Path, Path, dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A Stage-I candidate store (`root/candidates`) of `keys` x `models` and the doctors'
    manual masks (`root/manual`: model 0's mask moved 3 px right); returns both folders,
    each image's masks by model and the manual masks by image."""
    masks = write_candidate_store(root / "candidates", keys, models)
    manual = {k: np.roll(m[models[0]], 3, axis=1) for k, m in masks.items()}
    write_mask_folder(root / "manual", manual)
    return root / "candidates", root / "manual", masks, manual


def write_mask_folder(out: Path, masks: dict[str, np.ndarray], target: str = "infection") -> Path:
    """An annotation folder holding `masks` (key -> (H, W) bool) with X-rays."""
    if target == "lung":
        layout.prepare_lung_tree(out)
    for i, (key, mask) in enumerate(masks.items()):
        img, m = layout.accepted_paths(out, key, target)
        img.parent.mkdir(parents=True, exist_ok=True)
        m.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray(*mask.shape, seed=100 + i)).save(img)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(m)
    return out


def review_client(
    candidates: Path,
    out: Path,
    *,
    blind: bool = False,
    votes: int = 1,
    order: str = "name",
    reference: Path | None = None,
) -> TestClient:
    """A review server (no model) over a candidate store."""
    session = AnnotationSession(
        StoredCandidates(candidates), out, votes=votes, order=order, reference=reference
    )
    return TestClient(create_app(None, Settings(blind=blind), session))


def mask_url(mask: np.ndarray) -> str:
    return images.data_url(images.png_bytes(np.where(mask, 255, 0).astype(np.uint8)))


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def synthetic_positives(n: int, size: int = 32, seed: int = 0) -> list:
    """The first `n` COVID-19 examples of the synthetic set (`data.synthetic.generate`)."""
    from qatacov_jax.data import synthetic

    out, i = [], 0
    while len(out) < n:
        if synthetic.is_positive(seed, i, 0.5):
            out.append(synthetic.generate(seed, i, size, 0.5))
        i += 1
    return out


def write_synthetic_masks(out: Path, n: int, size: int = 32, target: str = "infection") -> Path:
    """An annotation folder of `n` synthetic COVID-19 X-rays with their true masks
    (`covid_<i>`; the lung mask for `target` lung)."""
    if target == "lung":
        layout.prepare_lung_tree(out)
    for i, ex in enumerate(synthetic_positives(n, size)):
        img, m = layout.accepted_paths(out, f"covid_{i}", target)
        img.parent.mkdir(parents=True, exist_ok=True)
        m.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ex.image).save(img)
        Image.fromarray(ex.mask if target == "infection" else ex.lung_mask).save(m)
    return out
