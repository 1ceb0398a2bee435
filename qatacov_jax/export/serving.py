"""The serving function: trained run(s) -> one pure function from resized pixels to probabilities.

What a deployment server runs is exactly the inference path of `scripts/infer.py` after its
resize: the run's model with BatchNorm folded into the convs, the encoder's preprocessing and
the sigmoid, all inside one function (`inference.predictor.make_probability_fn`, the function
`make_predict_fn` jits), with an optional lung model in the same call. The server only feeds
pixels already resized to the model's input size and reads probabilities:

    inputs   name -> (B, H, W, 1) grey X-rays at the model's input size, uint8 0..255 (or
             float32 in [0, 1] with `input_dtype="float32"`), resized as
             `qatacov_jax.data.resize.resize_image` does (PIL bilinear, antialiased down)
    outputs  name -> (B, H, W, 1) float32 per-pixel probabilities in [0, 1]

with names "infection" (and "lung" with a lung model). B is symbolic (any batch) unless a
fixed batch is asked for.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from qatacov_jax.data.resize import height_width
from qatacov_jax.inference.predictor import make_probability_fn
from qatacov_jax.inference.runs import LoadedModels, load_models
from qatacov_jax.training.factory import DTYPES, build_model, compute_dtype

COMPUTE_DTYPES = ("float32", "bfloat16")
INPUT_DTYPES = ("uint8", "float32")
BATCH_SYMBOL = "batch"


@dataclasses.dataclass(frozen=True)
class ServingInput:
    """One input of the serving function: `(batch, height, width, 1)` of `dtype`."""

    name: str
    height: int
    width: int
    dtype: str

    def shape(self, batch: Any) -> tuple[Any, int, int, int]:
        return (batch, self.height, self.width, 1)


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """A pure serving function and its state, with what the manifest records about it.

    Attributes:
      fn: `fn(state, images)`: name -> (B, H, W, 1) pixels to name -> (B, H, W, 1) float32
        probabilities; pure (no Python state), to wrap in `jax.jit`, `jax.export`, jax2tf.
      state: name -> the model's folded state (float32 arrays).
      inputs: one `ServingInput` per model, in the order of `loaded.models`.
      batch: the fixed batch size, or None for any batch (a symbolic dimension).
      compute_dtype: "float32" or "bfloat16" (activations; parameters and outputs float32).
      loaded: the models as loaded from their run directories (configs, preprocessing, runs).
      which: the checkpoint of each run that was loaded ("best" or "latest").
    """

    fn: Callable[[Any, Mapping[str, Any]], dict[str, jax.Array]]
    state: dict[str, Any]
    inputs: tuple[ServingInput, ...]
    batch: int | None
    compute_dtype: str
    loaded: LoadedModels
    which: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def input_specs(self, batch: Any = None) -> dict[str, jax.ShapeDtypeStruct]:
        """name -> abstract input; `batch` defaults to `self.batch` or a symbolic dimension."""
        if batch is None:
            batch = self.batch
        if batch is None:
            (batch,) = jax.export.symbolic_shape(BATCH_SYMBOL)
        return {
            i.name: jax.ShapeDtypeStruct(i.shape(batch), jnp.dtype(i.dtype)) for i in self.inputs
        }

    def closed(self) -> Callable[[Mapping[str, Any]], dict[str, jax.Array]]:
        """`images -> probabilities` with the state closed over (embedded as constants)."""
        fn, state = self.fn, self.state
        return lambda images: fn(state, images)


def with_compute_dtype(
    model: nnx.Module, config: ml_collections.ConfigDict, dtype: str
) -> nnx.Module:
    """`model` computing in `dtype`: itself if its run already does, else the same weights in
    a model built by `training.factory.build_model` from the run's config with
    `model.dtype=dtype` (as `--config.model.dtype` would in training), in eval mode.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}; choose one of {list(COMPUTE_DTYPES)}.")
    if jnp.dtype(compute_dtype(config)) == jnp.dtype(DTYPES[dtype]):
        return model
    config = copy.deepcopy(config)
    config.model.dtype = dtype
    target = build_model(config, seed=0, load_weights=False)[0]
    nnx.update(target, nnx.state(model))  # parameters are float32 in either dtype
    target.eval()
    return target


# uint8 -> [0, 1] exactly as NumPy divides (what `inference.Predictor` feeds the model). XLA
# compiles `x / 255` as `x * (1 / 255)`, 1 ulp off for half the values; a table is exact.
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _to_unit(x: jax.Array) -> jax.Array:
    """(B, H, W, C) uint8 0..255 or float [0, 1] pixels -> float32 in [0, 1]."""
    if x.dtype == jnp.uint8:
        return jnp.asarray(_UNIT)[x.astype(jnp.int32)]
    return x.astype(jnp.float32)


def serving_model(
    loaded: LoadedModels,
    *,
    which: str = "best",
    dtype: str = "float32",
    input_dtype: str = "uint8",
    batch: int | None = None,
) -> ServingModel:
    """The serving function of loaded models (see the module docstring).

    Args:
      loaded: `inference.runs.load_models` of {"infection": run} (+ "lung": run).
      dtype: compute dtype of the exported models ("float32" or "bfloat16").
      input_dtype: "uint8" (0..255 pixels) or "float32" ([0, 1] pixels).
      batch: a fixed batch size, or None for any batch.

    Raises:
      ValueError: an unsupported dtype or batch, or a model whose output is not one
        probability map `(B, H, W, 1)` per image.
    """
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(
            f"Unsupported input dtype {input_dtype!r}; choose one of {list(INPUT_DTYPES)}."
        )
    if batch is not None and batch <= 0:
        raise ValueError(f"The batch size must be positive, got {batch}.")
    models = {k: with_compute_dtype(m, loaded.configs[k], dtype) for k, m in loaded.models.items()}
    forward, state = make_probability_fn(models, loaded.preprocessing)

    def fn(state: Any, images: Mapping[str, Any]) -> dict[str, jax.Array]:
        return forward(state, {k: _to_unit(v) for k, v in images.items()})

    inputs = tuple(
        ServingInput(k, *height_width(loaded.sizes[k]), dtype=input_dtype) for k in models
    )
    serving = ServingModel(fn, state, inputs, batch, dtype, loaded, which)
    out = jax.eval_shape(fn, state, serving.input_specs(2))
    for i in inputs:
        if out[i.name].shape != i.shape(2):
            raise ValueError(
                f"The {i.name} model of {loaded.runs[i.name]} maps {i.shape(2)} inputs to "
                f"{out[i.name].shape}; only segmentation models with one probability map per "
                "image (B, H, W, 1) can be exported."
            )
    return serving


def load_serving_model(
    run: str | Path,
    *,
    lung_run: str | Path | None = None,
    which: str = "best",
    dtype: str = "float32",
    input_dtype: str = "uint8",
    batch: int | None = None,
) -> ServingModel:
    """`serving_model` of a run directory (and a lung model's run directory)."""
    runs: dict[str, str | Path] = {"infection": run}
    if lung_run is not None:
        runs["lung"] = lung_run
    loaded = load_models(runs, which=which)
    return serving_model(loaded, which=which, dtype=dtype, input_dtype=input_dtype, batch=batch)
