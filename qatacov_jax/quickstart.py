"""The README's main job: train on synthetic CXRs, then write metrics and infection maps.

One function chains the three user-facing steps exactly as a user would run them by hand:

    python scripts/train.py --config configs/quickstart.py --workdir RUN/train
    python scripts/evaluate.py RUN/train --split test --out RUN/evaluation
    python scripts/infer.py --checkpoint RUN/train RUN/samples --out RUN/maps

so the quickstart exercises the real code paths, with no download (the synthetic set is
generated on first use into `RUN/tfds`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from qatacov_jax.data import synthetic
from qatacov_jax.evaluation.runner import evaluate
from qatacov_jax.inference.files import infer_files
from qatacov_jax.runtime.files import write_json
from qatacov_jax.training.loop import train_and_evaluate

log = logging.getLogger(__name__)

# Seed of the X-rays written to RUN/samples for infer.py: different from the synthetic
# dataset's seeds, so the maps are drawn on images the model has never seen.
SAMPLE_SEED = 20_211_123


class QuickstartError(RuntimeError):
    """A step of the quickstart failed; the message says which and what to do."""


def write_samples(out_dir: Path, num: int, size: int, seed: int = SAMPLE_SEED) -> list[Path]:
    """Writes `num` unseen synthetic CXRs (about half COVID-19) as PNG files.

    Returns:
      The written paths; file names say the ground truth (`covid19_*` / `control_*`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        ex = synthetic.generate(seed, i, size, positive_fraction=0.5)
        kind = "covid19" if ex.label else "control"
        path = out_dir / f"{kind}_{i:02d}.png"
        Image.fromarray(ex.image).save(path)
        paths.append(path)
    return paths


def run(
    workdir: str | Path,
    config: ml_collections.ConfigDict,
    *,
    num_samples: int = 6,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains the quickstart model, evaluates it on the test split and draws infection maps.

    Args:
      workdir: folder for everything: `train/` (the run), `evaluation/`, `samples/`, `maps/`,
        `tfds/` (the generated synthetic dataset).
      config: the training config (`configs/quickstart.py` from `scripts/quickstart.py`);
        `config.data.data_dir` None means `workdir/tfds`.
      num_samples: X-rays written to `samples/` and mapped into `maps/`.
      overwrite: replace earlier evaluation outputs and maps (training always resumes).

    Returns:
      A summary: held-out pixel F1 and detection metrics, and the output folders.

    Raises:
      QuickstartError: earlier outputs exist and `overwrite` is False, or inference failed.
    """
    workdir = Path(workdir).absolute()
    run_dir, eval_dir = workdir / "train", workdir / "evaluation"
    samples_dir, maps_dir = workdir / "samples", workdir / "maps"
    for d in (eval_dir, maps_dir):
        if d.exists() and any(d.iterdir()) and not overwrite:
            raise QuickstartError(
                f"{d} already holds results of an earlier quickstart; pass --overwrite to "
                "replace them, or choose another --workdir."
            )
    if config.data.data_dir is None:
        config.data.data_dir = str(workdir / "tfds")

    log.info("1/3 training %s %s in %s", config.model.arch, config.model.encoder, run_dir)
    train_results = train_and_evaluate(config, run_dir)

    log.info("2/3 evaluating on the synthetic test split -> %s", eval_dir)
    metrics = evaluate(run_dir, out_dir=eval_dir, overwrite=overwrite, split="test")

    log.info("3/3 infection maps for %d unseen X-rays -> %s", num_samples, maps_dir)
    write_samples(samples_dir, num_samples, size=2 * int(config.data.image_size))
    rows = infer_files(run_dir, [samples_dir], maps_dir, overwrite=overwrite)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise QuickstartError(f"inference failed for {failed[0]['file']}: {failed[0]['error']}")

    overview = write_overview(samples_dir, maps_dir / samples_dir.name, workdir / "overview.png")
    summary = {
        "overview": str(overview),
        "run_dir": str(run_dir),
        "evaluation_dir": str(eval_dir),
        "maps_dir": str(maps_dir),
        "final_eval": train_results.get("final_eval", train_results),
        "test_metrics": _headline(metrics),
    }
    write_json(workdir / "quickstart_summary.json", summary)
    return summary


def write_overview(samples_dir: Path, maps_dir: Path, out: Path) -> Path:
    """One PNG: each sample X-ray (top row) above its infection map (bottom row).

    Args:
      samples_dir: the X-rays given to infer.py.
      maps_dir: infer.py's per-image outputs for that folder (`<name>_map.png`).
    """
    pairs = []
    for xray in sorted(samples_dir.glob("*.png")):
        map_path = maps_dir / f"{xray.stem}_map.png"
        if map_path.exists():
            pairs.append((Image.open(xray).convert("RGB"), Image.open(map_path).convert("RGB")))
    if not pairs:
        raise QuickstartError(f"no infection maps in {maps_dir} to draw an overview from.")
    w, h = pairs[0][0].size
    sheet = Image.new("RGB", (w * len(pairs), 2 * h), "black")
    for i, (xray, cmap) in enumerate(pairs):
        sheet.paste(xray.resize((w, h)), (i * w, 0))
        sheet.paste(cmap.resize((w, h)), (i * w, h))
    sheet.save(out)
    return out


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Pixel F1 / detection sensitivity+specificity from evaluate's metrics.json."""
    out: dict[str, Any] = {}
    for level in ("pixel", "detection"):
        block = metrics.get("summary", metrics).get(level, {}).get("metrics", {})
        for name in ("f1", "sensitivity", "specificity", "auc"):
            if name in block:
                value = block[name]
                out[f"{level}_{name}"] = value.get("value") if isinstance(value, dict) else value
    return {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in out.items()}
