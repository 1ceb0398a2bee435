"""Serialized artifacts of a serving function, and `export_run` (`scripts/export.py`).

Formats (each written with a `manifest.json` beside it, `export.manifest`):

| format       | file(s)                  | runs with                          | how                      |
|--------------|--------------------------|------------------------------------|--------------------------|
| `stablehlo`  | `model.stablehlo`        | JAX (`jax.export.deserialize`)     | `jax.export`, weights    |
|              |                          |                                    | embedded as constants    |
| `savedmodel` | `saved_model/`           | TensorFlow alone, no JAX           | jax2tf (native StableHLO |
|              |                          | (`tf.saved_model.load`)            | in an XlaCallModule op), |
|              |                          |                                    | weights as tf.Variables  |
| `onnx`       | `model.onnx`             | ONNX Runtime alone (or any ONNX    | our jaxpr -> ONNX        |
|              |                          | runtime: opset 17), no JAX         | translator (`onnx_graph`)|

All hold the whole serving function (`export.serving`): BatchNorm folded, preprocessing and
sigmoid inside, and a symbolic batch dimension unless a fixed batch is asked for. The
StableHLO is lowered for `platforms` (default: CPU; e.g. ("cpu", "cuda") serves on both); the
ONNX graph is the same on every platform (the runtime picks its execution provider).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from qatacov_jax.export.manifest import MANIFEST_FILE, build_manifest, file_checksums
from qatacov_jax.export.manifest import verify_checksums as _verify_checksums
from qatacov_jax.export.outdir import check_output, staged_output
from qatacov_jax.export.serving import BATCH_SYMBOL, ServingModel, load_serving_model
from qatacov_jax.runtime.files import write_json

log = logging.getLogger(__name__)

FORMATS = ("stablehlo", "savedmodel", "onnx")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
STABLEHLO_FILE = "model.stablehlo"
SAVEDMODEL_DIR = "saved_model"
SIGNATURE = "serving_default"

# ONNX Runtime's CPU kernels have no bfloat16 convolutions; float16 is the graph's own
# conversion (`onnx_export.to_float16`), which the JAX formats do not offer.
ONNX_DTYPES = ("float32", "float16")
ONNX_FLOAT32_ONLY = (
    "--format onnx exports float32 models, or float16 ones (--dtype float16); ONNX Runtime's "
    "CPU kernels have no bfloat16 convolutions."
)
FLOAT16_ONNX_ONLY = (
    "--dtype float16 is for --format onnx (a float16 ONNX graph); the JAX formats compute in "
    "float32 or bfloat16."
)
ONNX_MISSING = (
    "--format onnx needs the onnx package: pip install 'qatacov-jax[onnx]' (onnx and onnxruntime)."
)


class FormatUnavailableError(ValueError):
    """A format this exporter knows but cannot produce for these models."""


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"Unsupported platform(s) {bad or '(none)'}; choose from {PLATFORMS}.")
    return tuple(dict.fromkeys(platforms))


def export_stablehlo(
    serving: ServingModel, directory: Path, platforms: Sequence[str] = ("cpu",)
) -> tuple[str, dict[str, Any]]:
    """Writes `directory/model.stablehlo` (`jax.export.Exported.serialize()`).

    Returns:
      (artifact path relative to `directory`, what the manifest's `serving` records).
    """
    exported = jax.export.export(jax.jit(serving.closed()), platforms=tuple(platforms))(
        serving.input_specs()
    )
    (directory / STABLEHLO_FILE).write_bytes(exported.serialize())
    return STABLEHLO_FILE, {
        "load": "jax.export.deserialize(bytearray(open(PATH, 'rb').read()))",
        "call": "exported.call({name: images}) -> {name: probabilities}",
        "calling_convention_version": exported.calling_convention_version,
        "jax_supported_calling_conventions": [
            jax.export.minimum_supported_calling_convention_version,
            jax.export.maximum_supported_calling_convention_version,
        ],
    }


def export_savedmodel(
    serving: ServingModel, directory: Path, platforms: Sequence[str] = ("cpu",)
) -> tuple[str, dict[str, Any]]:
    """Writes `directory/saved_model/`, a TF SavedModel with one signature, `serving_default`:
    keyword inputs name -> (B, H, W, 1) tensors, outputs name -> probabilities.

    The serving function is converted by jax2tf (native serialization: its StableHLO runs in
    TensorFlow's XlaCallModule op) with the weights as tf.Variables, so loading it needs
    TensorFlow only.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    leaves, treedef = jax.tree.flatten(serving.state)
    fn = serving.fn

    def with_leaves(leaves: list[Any], images: dict[str, Any]) -> dict[str, Any]:
        return fn(jax.tree.unflatten(treedef, leaves), images)

    poly = None
    if serving.batch is None:
        poly = [
            None,
            {i.name: f"({BATCH_SYMBOL}, {i.height}, {i.width}, 1)" for i in serving.inputs},
        ]
    converted = jax2tf.convert(
        with_leaves,
        polymorphic_shapes=poly,
        with_gradient=False,
        native_serialization_platforms=tuple(platforms),
    )
    module = tf.Module()
    module.params = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]

    @tf.function(autograph=False)
    def serve(**images: Any) -> dict[str, Any]:
        return converted(list(module.params), images)

    specs = {
        i.name: tf.TensorSpec(i.shape(serving.batch), tf.as_dtype(i.dtype), name=i.name)
        for i in serving.inputs
    }
    signature = serve.get_concrete_function(**specs)
    tf.saved_model.save(module, str(directory / SAVEDMODEL_DIR), signatures={SIGNATURE: signature})
    return SAVEDMODEL_DIR, {
        "load": "tf.saved_model.load(PATH).signatures['serving_default'] (TensorFlow only)",
        "call": "signature(**{name: images}) -> {name: probabilities}",
        "signature": SIGNATURE,
        "jax2tf": "native serialization (StableHLO in an XlaCallModule op)",
        "calling_convention_version": jax.config.jax_export_calling_convention_version,
    }


def export_onnx(
    serving: ServingModel,
    directory: Path,
    platforms: Sequence[str] = ("cpu",),
    *,
    float16: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Writes `directory/model.onnx` (`export.onnx_export`; imported here, on use, so that
    the other formats never need the onnx package); `float16` computes in float16."""
    from qatacov_jax.export.onnx_export import export_onnx as write

    return write(serving, directory, platforms, float16=float16)


WRITERS: dict[str, Callable[[ServingModel, Path, Sequence[str]], tuple[str, dict[str, Any]]]] = {
    "stablehlo": export_stablehlo,
    "savedmodel": export_savedmodel,
    "onnx": export_onnx,
}


def check_format(fmt: str, dtype: str = "float32") -> None:
    """Raises ValueError for an unknown format, or ONNX in another dtype than float32, and
    FormatUnavailableError for ONNX without the onnx package."""
    if fmt not in FORMATS:
        raise ValueError(f"Unsupported format {fmt!r}; choose one of {list(FORMATS)}.")
    if fmt == "onnx":
        if importlib.util.find_spec("onnx") is None:
            raise FormatUnavailableError(ONNX_MISSING)
        if dtype not in ONNX_DTYPES:
            raise FormatUnavailableError(ONNX_FLOAT32_ONLY)
    elif dtype == "float16":
        raise FormatUnavailableError(FLOAT16_ONNX_ONLY)


def write_artifact(
    serving: ServingModel,
    out: str | Path,
    *,
    fmt: str,
    thresholds: dict[str, float] | None = None,
    platforms: Sequence[str] = ("cpu",),
    overwrite: bool = False,
    float16: bool = False,
) -> dict[str, Any]:
    """Writes `serving` as `fmt` with its manifest into `out` (staged, then renamed);
    `float16` (ONNX only) converts the float32 graph to compute in float16.

    Returns:
      The manifest written to `out/manifest.json`.
    """
    check_format(fmt, "float16" if float16 else serving.compute_dtype)
    platforms = _check_platforms(platforms)
    thresholds = {n: 0.5 for n in serving.names} | dict(thresholds or {})
    writer = functools.partial(export_onnx, float16=True) if float16 else WRITERS[fmt]
    with staged_output(out, overwrite=overwrite) as tmp:
        artifact, info = writer(serving, tmp, platforms)
        manifest = build_manifest(
            serving,
            fmt=fmt,
            artifact=artifact,
            checksums=file_checksums(tmp, artifact),
            thresholds=thresholds,
            platforms=platforms,
            serving_info=info,
        )
        if float16:
            manifest["compute_dtype"] = "float16"
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    fmt: str,
    lung_run: str | Path | None = None,
    which: str = "best",
    dtype: str = "float32",
    input_dtype: str = "uint8",
    batch: int | None = None,
    threshold: float = 0.5,
    lung_threshold: float = 0.5,
    platforms: Sequence[str] = ("cpu",),
    overwrite: bool = False,
) -> dict[str, Any]:
    """What `scripts/export.py` does: a trained run (+ a lung run) -> `out/` artifact + manifest.

    Everything that can be refused is checked before the models are loaded: the format,
    platforms and the output directory.

    Raises:
      FormatUnavailableError, ValueError: an unsupported format, dtype, batch or platform
        (ONNX: float32 or float16, and only with the onnx package installed).
      FileExistsError: `out` exists and may not be replaced (`outdir.check_output`).
      FileNotFoundError: a run directory or its checkpoint is missing.
    """
    check_format(fmt, dtype)
    platforms = _check_platforms(platforms)
    check_output(Path(out).absolute(), overwrite)
    # A float16 ONNX graph is converted from the float32 one (`onnx_export.to_float16`).
    float16 = dtype == "float16"
    serving = load_serving_model(
        run,
        lung_run=lung_run,
        which=which,
        dtype="float32" if float16 else dtype,
        input_dtype=input_dtype,
        batch=batch,
    )
    thresholds = {"infection": threshold, "lung": lung_threshold}
    manifest = write_artifact(
        serving,
        out,
        fmt=fmt,
        thresholds={n: thresholds[n] for n in serving.names},
        platforms=platforms,
        overwrite=overwrite,
        float16=float16,
    )
    log.info(
        "wrote %s and %s (%s, %s, batch %s)",
        Path(out) / manifest["artifact"]["path"],
        MANIFEST_FILE,
        fmt,
        dtype,
        manifest["batch"],
    )
    return manifest


def load_stablehlo(directory: str | Path, *, verify: bool = True) -> jax.export.Exported:
    """The `jax.export.Exported` of a stablehlo export directory (its sha256 checked first).

    Call it as `exported.call({name: (B, H, W, 1) pixels})` -> {name: probabilities}.
    """
    directory = Path(directory)
    if verify:
        _verify_checksums(directory)
    return jax.export.deserialize(bytearray((directory / STABLEHLO_FILE).read_bytes()))
