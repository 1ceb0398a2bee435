"""Serving an ONNX export (`scripts/export.py --format onnx`) with ONNX Runtime alone.

Imports NumPy, onnxruntime, `export.manifest` and `inference.batching` (all light): no JAX,
TensorFlow or model code, so a server needs only `pip install onnxruntime numpy pillow` and
this file's package. `OnnxPredictor` is what `scripts/infer.py --model` and
`scripts/serve.py --model` run: X-rays of any size in, maps at their size out, as the JAX
`inference.Predictor` does for a trained run.

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
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qatacov_jax.export.manifest import read_manifest, verify_checksums
from qatacov_jax.inference.batching import maps_per_image, model_batches
from qatacov_jax.inference.runs import ModelSource

ONNX_FILE = "model.onnx"

log = logging.getLogger(__name__)


def recorded_thresholds(manifest: dict[str, Any]) -> dict[str, float]:
    """role -> the threshold an export's manifest records (`scripts/export.py --threshold`)."""
    return {k: float(m["threshold"]) for k, m in manifest["models"].items()}


def check_onnx_export(directory: str | Path) -> dict[str, Any]:
    """The manifest of the ONNX export in `directory`, or an error saying what the folder is
    instead and what to pass.

    Raises:
      FileNotFoundError: no such folder, or no export of ours in it.
      ValueError: an export of another format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such folder (an export made by scripts/export.py)."
        )
    manifest = read_manifest(directory)
    if manifest is None:
        hint = (
            "it is a training run: pass it as --checkpoint, or export it first with "
            "`scripts/export.py --checkpoint RUN --format onnx`"
            if (directory / "config.json").is_file()
            else "export a run with `scripts/export.py --checkpoint RUN --format onnx`"
        )
        raise FileNotFoundError(f"{directory} holds no manifest.json of an export; {hint}.")
    if manifest.get("format") != "onnx":
        raise ValueError(
            f"{directory} is a {manifest.get('format')!r} export; ONNX Runtime runs only "
            "'onnx' exports: export the run again with --format onnx."
        )
    return manifest


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
        directory = Path(directory)
        manifest = check_onnx_export(directory)
        if verify:
            verify_checksums(directory)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                f"{directory} is an ONNX export; running it needs ONNX Runtime: "
                "`pip install onnxruntime`."
            ) from None
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
            thresholds=recorded_thresholds(manifest),
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


class OnnxPredictor:
    """An ONNX export behind the `inference.batching.BatchPredictor` interface: (H, W) X-rays
    of any size in [0, 1] -> per image, role -> (H, W) probabilities and the grid maximum.

    Images are quantised and resized as the JAX `Predictor` does (`model_batches`), fed at
    the export's input dtype (uint8, or float32 in [0, 1]), and the maps resized back
    (`maps_per_image`). A dynamic-batch export runs any number of images in one call; one
    exported with a fixed batch (`export.py --batch N`) takes N at a time, the last call
    padded with copies of its first image (their outputs dropped), and `batch_size` is N.
    """

    def __init__(self, serving: OnnxServing, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.serving = serving
        fixed = serving.manifest.get("batch")
        self.fixed_batch = fixed if isinstance(fixed, int) else None
        self.batch_size = self.fixed_batch or int(batch_size)
        self.names = tuple(serving.output_tensors)
        self.sizes = {k: (h, w) for k, (h, w, _) in serving.inputs.items()}

    @classmethod
    def load(cls, directory: str | Path, batch_size: int = 8, **kwargs: Any) -> OnnxPredictor:
        """`OnnxServing.load(directory, **kwargs)` behind a predictor."""
        return cls(OnnxServing.load(directory, **kwargs), batch_size)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if not len(images):
            return []
        if self.fixed_batch is not None and len(images) != self.fixed_batch:
            n = self.fixed_batch
            out = []
            for start in range(0, len(images), n):
                chunk = list(images[start : start + n])
                padded = chunk + [chunk[0]] * (n - len(chunk))
                out += self.predict_batch(padded)[: len(chunk)]
            return out
        feed = {}
        for name, batch in model_batches(images, self.sizes).items():
            dtype = np.dtype(self.serving.inputs[name][2])
            x = batch[..., None]
            feed[name] = x if dtype == np.uint8 else x.astype(dtype) / dtype.type(255)
        probs = self.serving.predict(feed)
        # A float16 export answers in float16; maps are float32 everywhere downstream.
        return maps_per_image(images, {k: v.astype(np.float32) for k, v in probs.items()})


def export_source(directory: str | Path) -> ModelSource:
    """An ONNX export as `scripts/infer.py`'s `inference.runs.ModelSource`: its manifest is
    checked now (a wrong folder is refused before any work), the session made on `load`."""
    directory = Path(directory)
    manifest = check_onnx_export(directory)

    def load(batch_size: int | None) -> OnnxPredictor:
        predictor = OnnxPredictor.load(directory, batch_size or 8)
        log.info(
            "ONNX Runtime (%s), batch %d",
            ", ".join(predictor.serving.session.get_providers()),
            predictor.batch_size,
        )
        return predictor

    with_lung = "lung" in manifest["models"]
    return ModelSource(
        directory, None, with_lung, "onnxruntime", load, recorded_thresholds(manifest)
    )
