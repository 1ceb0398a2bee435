"""Export for deployment: a trained run as a serialized artifact, with a manifest.

`export_run(run, out, fmt="savedmodel" | "stablehlo" | "onnx")` writes the whole inference
path of `scripts/infer.py` after its resize (BatchNorm folded, preprocessing and sigmoid
inside, an optional lung model in the same call) as a TF SavedModel that serves without JAX,
a serialized `jax.export` StableHLO module, or an ONNX model that ONNX Runtime serves alone
(`export.onnx_runtime`); `manifest.json` beside it says how to feed it and read it
(`scripts/export.py`, docs/export.md).

The names below load on first use (PEP 562): `export.onnx_runtime` and `export.manifest`
serve and read exports without JAX, which the rest of this package imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qatacov_jax.export.artifact import (
        FORMATS,
        ONNX_MISSING,
        SAVEDMODEL_DIR,
        SIGNATURE,
        STABLEHLO_FILE,
        FormatUnavailableError,
        export_run,
        load_stablehlo,
        write_artifact,
    )
    from qatacov_jax.export.manifest import MANIFEST_FILE, read_manifest, verify_checksums
    from qatacov_jax.export.onnx_runtime import (
        ONNX_FILE,
        OnnxPredictor,
        OnnxServing,
        export_source,
    )
    from qatacov_jax.export.serving import (
        COMPUTE_DTYPES,
        INPUT_DTYPES,
        ServingModel,
        load_serving_model,
        serving_model,
        with_compute_dtype,
    )

# public name -> the submodule that defines it
_HOMES = {
    "FORMATS": "artifact",
    "ONNX_MISSING": "artifact",
    "SAVEDMODEL_DIR": "artifact",
    "SIGNATURE": "artifact",
    "STABLEHLO_FILE": "artifact",
    "FormatUnavailableError": "artifact",
    "export_run": "artifact",
    "load_stablehlo": "artifact",
    "write_artifact": "artifact",
    "MANIFEST_FILE": "manifest",
    "read_manifest": "manifest",
    "verify_checksums": "manifest",
    "ONNX_FILE": "onnx_runtime",
    "OnnxPredictor": "onnx_runtime",
    "OnnxServing": "onnx_runtime",
    "export_source": "onnx_runtime",
    "COMPUTE_DTYPES": "serving",
    "INPUT_DTYPES": "serving",
    "ServingModel": "serving",
    "load_serving_model": "serving",
    "serving_model": "serving",
    "with_compute_dtype": "serving",
}

__all__ = [
    "COMPUTE_DTYPES",
    "FORMATS",
    "INPUT_DTYPES",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "ONNX_MISSING",
    "SAVEDMODEL_DIR",
    "SIGNATURE",
    "STABLEHLO_FILE",
    "FormatUnavailableError",
    "OnnxPredictor",
    "OnnxServing",
    "ServingModel",
    "export_run",
    "export_source",
    "load_serving_model",
    "load_stablehlo",
    "read_manifest",
    "serving_model",
    "verify_checksums",
    "with_compute_dtype",
    "write_artifact",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
