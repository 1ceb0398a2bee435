"""Serving an ONNX export (`scripts/export.py --format onnx`) with ONNX Runtime alone.

Imports NumPy, onnxruntime and `export.manifest` (itself light): no JAX, TensorFlow or model
code, so a server needs only `pip install onnxruntime numpy` and this file's package.

    from qatacov_jax.export.onnx_runtime import OnnxServing

    model = OnnxServing.load("exported/quickstart")  # checks the manifest's sha256 first
    probs = model.predict({"infection": xrays})  # (B, H, W, 1) uint8 -> (B, H, W, 1) float32
    covid19 = model.decide(probs)["covid19"]  # (B,) bool, the paper's rule

Without this package at all, the same in plain onnxruntime (docs/export.md):

    session = onnxruntime.InferenceSession("exported/quickstart/model.onnx")
    (probs,) = session.run(None, {"infection": xrays})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qatacov_jax.export.manifest import read_manifest, verify_checksums

ONNX_FILE = "model.onnx"


@dataclasses.dataclass
class OnnxServing:
    """An ONNX export loaded into an `onnxruntime.InferenceSession`.

    Attributes:
      manifest: the export's `manifest.json`.
      session: the ONNX Runtime session.
      inputs: input name -> (height, width, dtype) the model takes (any batch).
      thresholds: output name -> the threshold recorded at export.
      output_tensors: output name -> its tensor name in the ONNX graph.
    """

    manifest: dict[str, Any]
    session: Any
    inputs: dict[str, tuple[int, int, str]]
    thresholds: dict[str, float]
    output_tensors: dict[str, str]

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        verify: bool = True,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> OnnxServing:
        """Loads `directory` (manifest.json + model.onnx); `verify` checks sha256 first.

        Raises:
          FileNotFoundError: no export of ours there, or a listed file is missing.
          ValueError: not an ONNX export, or a file does not match its checksum.
        """
        import onnxruntime as ort

        directory = Path(directory)
        manifest = verify_checksums(directory) if verify else read_manifest(directory)
        if manifest is None:
            raise FileNotFoundError(f"{directory} holds no manifest.json of an export.")
        if manifest["format"] != "onnx":
            raise ValueError(f"{directory} is a {manifest['format']!r} export, not 'onnx'.")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(directory / manifest["artifact"]["path"]), options, providers=list(providers)
        )
        inputs = {i["name"]: (i["shape"][1], i["shape"][2], i["dtype"]) for i in manifest["inputs"]}
        return cls(
            manifest=manifest,
            session=session,
            inputs=inputs,
            thresholds={k: float(m["threshold"]) for k, m in manifest["models"].items()},
            output_tensors=dict(manifest["serving"]["output_tensors"]),
        )

    def _feed(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(images) != set(self.inputs):
            raise ValueError(f"Expected images for {sorted(self.inputs)}, got {sorted(images)}.")
        feed = {}
        for name, (h, w, dtype) in self.inputs.items():
            x = np.asarray(images[name])
            if x.ndim == 3:
                x = x[..., None]
            if x.ndim != 4 or x.shape[1:] != (h, w, 1):
                raise ValueError(
                    f"{name}: expected (B, {h}, {w}, 1) grey images at the model's input size "
                    f"(resize first), got {x.shape}."
                )
            if x.dtype != np.dtype(dtype):
                raise ValueError(f"{name}: expected {dtype} pixels, got {x.dtype}.")
            feed[name] = np.ascontiguousarray(x)
        return feed

    def predict(self, images: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """name -> (B, H, W, 1) pixels (or (B, H, W)) -> name -> (B, H, W, 1) float32
        probabilities; a bare array feeds the one input of a single-model export."""
        if not isinstance(images, Mapping):
            if len(self.inputs) != 1:
                raise ValueError(f"This export takes a mapping of {sorted(self.inputs)}.")
            images = {next(iter(self.inputs)): images}
        names = list(self.output_tensors)
        outs = self.session.run([self.output_tensors[n] for n in names], self._feed(images))
        return dict(zip(names, outs, strict=True))

    def decide(self, probabilities: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The manifest's decision rule: `covid19` (B,) bool (any infection pixel >= its
        threshold) and a `{name}_mask` (B, H, W, 1) bool per output."""
        out = {f"{n}_mask": p >= self.thresholds[n] for n, p in probabilities.items()}
        if "infection" in probabilities:
            out["covid19"] = out["infection_mask"].any(axis=(1, 2, 3))
        return out
