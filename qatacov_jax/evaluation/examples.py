"""Example infection maps of a split: X-ray | ground truth | prediction panels (paper Fig. 5)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax import data
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.inference.infection_map import infection_map
from qatacov_jax.inference.predictor import make_predict_fn
from qatacov_jax.runtime.files import save_png

log = logging.getLogger(__name__)


def unpreprocess(prep: Preprocessing, images: np.ndarray) -> np.ndarray:
    """Inverse of `Preprocessing.__call__` for display: (..., 3) model input -> (..., 3) RGB
    in [0, 1] (every mode is a per-channel affine map, plus a channel flip for BGR)."""
    x = np.asarray(images, np.float32)
    if prep.mode == "tf":
        x = (x + 1.0) / 2.0
    else:
        x = (x * np.asarray(prep.std, np.float32) + np.asarray(prep.mean, np.float32)) / prep.scale
    if prep.channel_order == "BGR":
        x = x[..., ::-1]
    return np.clip(x, 0.0, 1.0)


def _upscale(img: np.ndarray, min_side: int = 256) -> np.ndarray:
    k = max(1, -(-min_side // min(img.shape[:2])))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def example_maps(
    model: nnx.Module,
    prep: Preprocessing,
    mesh: Mesh,
    config: Any,
    fold: int | None,
    split: str,
    batch_size: int,
    num_maps: int,
    out_dir: Path,
    threshold: float,
) -> list[Path]:
    """Infection maps of the first `num_maps` examples of the split, as the paper's Fig. 5.

    Writes `<name>_map.png` (the infection map) and `<name>_panel.png` (CXR | ground truth
    painted the same way | infection map), upscaled (nearest) to at least 256 px high.
    """
    names = data.example_filenames(config.data, fold=fold, split=split)
    predict = make_predict_fn(model, mesh)
    batches = data.eval_iterator(
        config.data,
        fold=fold,
        split=split,
        global_batch_size=batch_size,
        preprocessing=prep,
        mesh=mesh,
    )
    written: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        probs = np.asarray(jax.device_get(predict(batch["image"])))[..., 0]
        images, masks, valid, index = (
            np.asarray(jax.device_get(batch[k])) for k in ("image", "mask", "valid", "index")
        )
        for i in np.nonzero(valid)[0]:
            if len(written) >= 2 * num_maps:
                break
            cxr = unpreprocess(prep, images[i])
            stem = Path(str(names[int(index[i])])).stem or f"example_{int(index[i])}"
            # The ground truth is painted like a map with probability 1 inside the mask, so
            # the two are compared colour for colour.
            truth = infection_map(cxr, masks[i, ..., 0] > 0.5, floor=0.5)
            pred = infection_map(cxr, probs[i])
            plain = infection_map(cxr, np.zeros_like(probs[i]))
            pad = np.full((cxr.shape[0], 2, 3), 255, np.uint8)
            panel = np.concatenate([plain, pad, truth, pad, pred], axis=1)
            for suffix, img in (("map", pred), ("panel", panel)):
                path = out_dir / f"{stem}_{suffix}.png"
                save_png(path, _upscale(img))
                written.append(path)
        if len(written) >= 2 * num_maps:
            break
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    log.info(
        "wrote %d example infection maps to %s (threshold %s)",
        len(written) // 2,
        out_dir,
        threshold,
    )
    return written
