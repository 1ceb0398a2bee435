"""What the page says about a served model: architecture, encoder, fold, checkpoint step
and validated score, read from its run directory (never its folder name, which says
whatever the person who trained it typed).

    describe_run(Path("runs/stage1_unetpp"))["label"]
    # "U-Net++ · DenseNet-121 · fold 0 · step 1200 · validation Dice 0.781"

An ONNX export (`serve.py --model`) is described from its `manifest.json`, which records
each role's configuration (not its step or score); reading either loads no JAX.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from qatacov_jax.export.manifest import read_manifest
from qatacov_jax.training import run_files

ARCH_NAMES = {
    "unet": "U-Net",
    "unetpp": "U-Net++",
    "dla": "DLA",
    "fpn": "FPN",
    "tiny": "tiny test model",
}
ENCODER_NAMES = {
    "densenet121": "DenseNet-121",
    "chexnet": "CheXNet",
    "inceptionv3": "Inception-v3",
    "resnet50": "ResNet-50",
    "tiny": "",
}
# A segmentation run's validation pixel F1 is its validation Dice (binary masks).
METRIC_NAMES = {"pixel_f1": "validation Dice"}


def _best_meta(run_dir: Path, which: str) -> dict[str, Any]:
    """{"step", "metrics"} of the checkpoint `load_model(which=)` restores, as far as the
    files say: the latest complete step of `checkpoints/<which>/` (the best directory keeps
    one), with the metrics the best checkpoint was saved with."""
    from qatacov_jax.training import checkpoint  # orbax: only for a run directory

    directory = run_dir / run_files.CHECKPOINT_DIR / which
    steps = checkpoint.complete_steps(directory)
    if not steps:
        return {}
    step = steps[-1]
    meta = directory / str(step) / "meta" / "metadata"
    try:
        stored = json.loads(meta.read_text())
        return {"step": step, "metrics": dict(stored.get("metrics") or {})}
    except (OSError, ValueError, AttributeError):
        return {"step": step, "metrics": {}}


@functools.lru_cache(maxsize=64)
def describe_run(run_dir: Path, which: str = "best", role: str = "infection") -> dict[str, Any]:
    """A run directory -> `schemas.ModelInfo`'s fields (label, architecture, encoder,
    frozen, fold, target, step, metric, score). Missing files leave fields None; a run that
    cannot be read at all still gets a label ("model from <folder>"). An export directory
    is described by its manifest's `role` model (`which` as it was exported)."""
    manifest = read_manifest(run_dir)
    if manifest is not None:
        exported = (manifest.get("models") or {}).get(role) or {}
        config, which, meta = exported.get("config") or {}, exported.get("checkpoint", which), {}
    else:
        try:
            config = json.loads((Path(run_dir) / run_files.CONFIG_FILE).read_text())
        except (OSError, ValueError):
            config = {}
        meta = _best_meta(Path(run_dir), which)
    model = config.get("model") or {}
    arch, encoder = model.get("arch"), model.get("encoder")
    metric = config.get("best_metric") or "pixel_f1"
    score = (meta.get("metrics") or {}).get(metric)
    info = {
        "architecture": ARCH_NAMES.get(arch, arch) if arch else None,
        "encoder": (ENCODER_NAMES.get(encoder, encoder) or None) if encoder else None,
        "frozen": bool(model.get("frozen")) if model else None,
        "fold": config.get("fold"),
        "target": (config.get("data") or {}).get("target"),
        "checkpoint": which,
        "step": meta.get("step"),
        "metric": METRIC_NAMES.get(metric, metric),
        "score": float(score) if isinstance(score, int | float) else None,
    }
    info["label"] = label(info, Path(run_dir).name)
    if manifest is not None:
        info["label"] += f" · {manifest.get('format', 'exported').upper()} export"
    return info


def label(info: dict[str, Any], folder: str) -> str:
    """One line naming the model: "U-Net · DenseNet-121 (frozen) · fold 0 · step 900 ·
    validation Dice 0.781"; parts the run does not record are left out."""
    if not info.get("architecture"):
        return f"model from {folder}"
    parts = [info["architecture"]]
    if info.get("encoder"):
        parts.append(info["encoder"] + (" (frozen)" if info.get("frozen") else ""))
    if info.get("fold") is not None:
        parts.append(f"fold {info['fold']}")
    if info.get("step") is not None:
        parts.append(f"{info['checkpoint']} checkpoint, step {info['step']}")
    if info.get("score") is not None:
        parts.append(f"{info['metric']} {info['score']:.3f}")
    return " · ".join(parts)
