"""`manifest.json` beside every exported artifact: what it is, where it came from, how to feed
it and read it, and checksums of its files.

Fields (see `build_manifest`): `exporter` (marks the directory as ours: only such a directory
is ever replaced, with `--overwrite`), `format`, `artifact` (relative path and sha256 per
file), `inputs` / `outputs` (name, shape with null for any batch, dtype, meaning), `models`
(per role: source run, checkpoint, configuration, preprocessing, threshold), `decision`,
`compute_dtype`, `batch`, `platforms`, `serving` (format-specific: signature name, calling
convention version), `versions` (jax, jaxlib, flax, tensorflow, qatacov-jax, python, numpy,
onnx, onnxruntime)
and `created`.

Reading a manifest (`read_manifest`, `verify_checksums`) needs neither JAX nor TensorFlow: the
ONNX runtime (`export.onnx_runtime`) uses them on servers that have neither.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # this module stays light: the ONNX runtime reads manifests without JAX
    from qatacov_jax.export.serving import ServingModel

MANIFEST_FILE = "manifest.json"
EXPORTER = "qatacov_jax.export"

OUTPUT_MEANING = {
    "infection": (
        "per-pixel probability of COVID-19 infection (sigmoid of the model's logit, or "
        "softmax class 1 of a 2-class model)"
    ),
    "lung": (
        "per-pixel probability of lung (sigmoid of the lung model's logit, or softmax "
        "class 1 of a 2-class model)"
    ),
}
DECISION = (
    "COVID-19 if any pixel of `infection` >= models.infection.threshold (the paper's rule, as "
    "scripts/infer.py); the infection mask is `infection >= threshold`, the lung mask "
    "`lung >= models.lung.threshold`"
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksums(root: Path, artifact: str) -> dict[str, str]:
    """sha256 of every file under `root / artifact` (a file or a folder), keyed by its path
    relative to `root`, in sorted order."""
    target = root / artifact
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of what made the artifact (installed distributions, without importing them)."""
    found = {
        d: _version(d)
        for d in ("jax", "jaxlib", "flax", "qatacov-jax", "numpy", "onnx", "onnxruntime")
    }
    tensorflow = _version("tensorflow-cpu") or _version("tensorflow")
    return {**found, "tensorflow": tensorflow, "python": platform.python_version()}


def _input_entry(serving: ServingModel, name: str) -> dict[str, Any]:
    (i,) = [i for i in serving.inputs if i.name == name]
    prep = serving.loaded.preprocessing[name]
    scale = "0..255" if i.dtype == "uint8" else "[0, 1]"
    return {
        "name": name,
        "shape": list(i.shape(serving.batch)),
        "dtype": i.dtype,
        "channels": "1 (grey)",
        "meaning": (
            f"grey chest X-rays, {scale}, resized to {i.height}x{i.width} (height x width) as "
            "qatacov_jax.data.resize.resize_image does (PIL bilinear, antialiased when "
            f"shrinking); the model's {prep.mode!r} preprocessing (grey -> 3 equal channels in "
            f"{prep.channel_order} order, scale, mean/std) is applied inside the artifact"
        ),
    }


def build_manifest(
    serving: ServingModel,
    *,
    fmt: str,
    artifact: str,
    checksums: dict[str, str],
    thresholds: dict[str, float],
    platforms: tuple[str, ...],
    serving_info: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of an exported `serving` model (see the module docstring)."""
    from qatacov_jax.training.rundir import config_to_dict

    loaded = serving.loaded
    models = {}
    for name in serving.names:
        config = loaded.configs[name]
        models[name] = {
            "run": str(Path(loaded.runs[name]).absolute()),
            "checkpoint": serving.which,
            "arch": config.model.get("arch"),
            "encoder": config.model.get("encoder"),
            "trained_dtype": config.model.get("dtype") or "float32",
            "preprocessing": loaded.preprocessing[name].to_dict(),
            "threshold": thresholds[name],
            "config": config_to_dict(config),
        }
    return {
        "exporter": EXPORTER,
        "format": fmt,
        "artifact": {"path": artifact, "sha256": checksums},
        "inputs": [_input_entry(serving, n) for n in serving.names],
        "outputs": [
            {
                "name": n,
                "shape": list(i.shape(serving.batch)),
                "dtype": "float32",
                "meaning": OUTPUT_MEANING.get(n, "per-pixel foreground probability"),
            }
            for n, i in zip(serving.names, serving.inputs, strict=True)
        ],
        "batch": serving.batch if serving.batch is not None else "dynamic",
        "decision": DECISION,
        "compute_dtype": serving.compute_dtype,
        "batchnorm_folded": True,
        "platforms": list(platforms),
        "serving": serving_info,
        "models": models,
        "versions": versions(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of an export directory, or None if it holds none of ours."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("exporter") != EXPORTER:
        return None
    return manifest


def verify_checksums(directory: str | Path) -> dict[str, Any]:
    """Reads an export directory's manifest and checks every artifact file's sha256.

    Raises:
      FileNotFoundError: no manifest of ours, or a listed file is missing.
      ValueError: a file's content differs from its checksum.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory} holds no {MANIFEST_FILE} written by {EXPORTER}.")
    for rel, digest in manifest["artifact"]["sha256"].items():
        path = directory / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {MANIFEST_FILE} but missing.")
        if sha256_file(path) != digest:
            raise ValueError(f"{path} does not match its sha256 in {MANIFEST_FILE}.")
    return manifest
