"""A deployment client without JAX: runs exported SavedModels with TensorFlow alone.

    python tests/export_client.py EXPORT_DIR INPUTS.npz OUTPUTS.npz [EXPORT_DIR IN OUT ...]

For each export directory: checks every artifact file against the manifest's sha256, loads
`saved_model/` with `tf.saved_model.load`, feeds the arrays of INPUTS.npz (keyed by the
manifest's input names) to the `serving_default` signature and writes the outputs to
OUTPUTS.npz. Exits non-zero if anything failed or if JAX ended up imported.

JAX is blocked at import, as on a server where it is not installed: `import tensorflow`
itself imports JAX when it is present (tensorflow/lite/python/util.py tries
`from jax import jit` and carries on without it), so merely not importing it here would
prove nothing.
"""

import hashlib
import importlib.abc
import json
import os
import sys
from pathlib import Path


class _NoJax(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ImportError(f"{name} is not available to this deployment client")
        return None


sys.meta_path.insert(0, _NoJax())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def run(export_dir: Path, inputs: Path, outputs: Path) -> None:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for rel, digest in manifest["artifact"]["sha256"].items():
        got = hashlib.sha256((export_dir / rel).read_bytes()).hexdigest()
        assert got == digest, f"{rel}: sha256 {got} != manifest {digest}"
    model = tf.saved_model.load(str(export_dir / manifest["artifact"]["path"]))
    signature = model.signatures[manifest["serving"]["signature"]]
    feed = np.load(inputs)
    names = [i["name"] for i in manifest["inputs"]]
    result = signature(**{n: tf.constant(feed[n]) for n in names})
    np.savez(outputs, **{o["name"]: result[o["name"]].numpy() for o in manifest["outputs"]})


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 3:
        print(__doc__, file=sys.stderr)
        return 2
    for i in range(0, len(argv), 3):
        run(Path(argv[i]), Path(argv[i + 1]), Path(argv[i + 2]))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib"))
    assert not leaked, f"JAX was imported: {leaked[:5]}"
    print("served without jax")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
