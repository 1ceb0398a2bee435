"""A deployment client of ONNX exports: ONNX Runtime and NumPy, nothing else.

    python tests/onnx_client.py [--runtime] EXPORT_DIR INPUTS.npz OUTPUTS.npz [...]

For each export directory: checks every artifact file against the manifest's sha256, runs
`model.onnx` in an `onnxruntime.InferenceSession` on the arrays of INPUTS.npz (keyed by the
manifest's input names; arrays named `NAME@K` are fed as separate calls, e.g. batch 1 and
batch 3 through the same session) and writes the outputs to OUTPUTS.npz under the same keys.
With `--runtime` the project's light loader (`qatacov_jax.export.onnx_runtime`) does the
same. Exits non-zero if anything failed or if JAX or TensorFlow ended up imported.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _calls(feed: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays keyed `NAME@K` -> {K: {NAME: array}} (one call per K)."""
    calls: dict[str, dict[str, np.ndarray]] = {}
    for key, value in feed.items():
        name, _, call = key.partition("@")
        calls.setdefault(call, {})[name] = value
    return calls


def run_plain(export_dir: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for rel, digest in manifest["artifact"]["sha256"].items():
        got = hashlib.sha256((export_dir / rel).read_bytes()).hexdigest()
        assert got == digest, f"{rel}: sha256 {got} != manifest {digest}"
    session = ort.InferenceSession(
        str(export_dir / manifest["artifact"]["path"]), providers=["CPUExecutionProvider"]
    )
    tensors = manifest["serving"]["output_tensors"]
    out = {}
    for call, images in _calls(feed).items():
        names = [o["name"] for o in manifest["outputs"]]
        results = session.run([tensors[n] for n in names], images)
        out.update({f"{n}@{call}": r for n, r in zip(names, results, strict=True)})
    return out


def run_runtime(export_dir: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from qatacov_jax.export.onnx_runtime import OnnxServing

    model = OnnxServing.load(export_dir)
    out = {}
    for call, images in _calls(feed).items():
        out.update({f"{n}@{call}": p for n, p in model.predict(images).items()})
    return out


def main(argv: list[str]) -> int:
    run = run_plain
    if argv and argv[0] == "--runtime":
        run, argv = run_runtime, argv[1:]
    if len(argv) % 3 or not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for k in range(0, len(argv), 3):
        export_dir, inputs, outputs = (Path(a) for a in argv[k : k + 3])
        np.savez(outputs, **run(export_dir, dict(np.load(inputs))))
    imported = sorted(m for m in ("jax", "jaxlib", "tensorflow", "flax") if m in sys.modules)
    assert not imported, f"imported {imported}"
    print("served without jax or tensorflow")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
