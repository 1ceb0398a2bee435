"""Export for deployment: a trained run as a serialized artifact, with a manifest.

`export_run(run, out, fmt="savedmodel" | "stablehlo")` writes the whole inference path of
`scripts/infer.py` after its resize (BatchNorm folded, preprocessing and sigmoid inside, an
optional lung model in the same call) as a TF SavedModel that serves without JAX, or as a
serialized `jax.export` StableHLO module; `manifest.json` beside it says how to feed it and
read it (`scripts/export.py`, docs/export.md).
"""

from qatacov_jax.export.artifact import (
    FORMATS,
    ONNX_UNAVAILABLE,
    SAVEDMODEL_DIR,
    SIGNATURE,
    STABLEHLO_FILE,
    FormatUnavailableError,
    export_run,
    load_stablehlo,
    write_artifact,
)
from qatacov_jax.export.manifest import MANIFEST_FILE, read_manifest, verify_checksums
from qatacov_jax.export.serving import (
    COMPUTE_DTYPES,
    INPUT_DTYPES,
    ServingModel,
    load_serving_model,
    serving_model,
    with_compute_dtype,
)

__all__ = [
    "COMPUTE_DTYPES",
    "FORMATS",
    "INPUT_DTYPES",
    "MANIFEST_FILE",
    "ONNX_UNAVAILABLE",
    "SAVEDMODEL_DIR",
    "SIGNATURE",
    "STABLEHLO_FILE",
    "FormatUnavailableError",
    "ServingModel",
    "export_run",
    "load_serving_model",
    "load_stablehlo",
    "read_manifest",
    "serving_model",
    "verify_checksums",
    "with_compute_dtype",
    "write_artifact",
]
