"""Batched, jitted inference on all devices, and any-size images in and out.

`make_predict_fn` splits the model(s) once into a graph definition and a state, replicates
the state over the mesh and jits one pure function over a batch sharded on the `data` axis;
per call there is no Python walk over the object graph (which `nnx.jit` would do). Several
models (e.g. the lung and the infection model of the COVID-QU-Ex pipeline, which both look
at the plain CXR) run in the *same* jitted call, so XLA schedules them together.

`Predictor` adds what real inputs need: X-rays of any size and aspect are resized to each
model's input size, batches are padded to a fixed size (one compilation, every device busy),
and probability maps are resized back to each image's original resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.data.resize import height_width
from qatacov_jax.inference.batching import maps_per_image, model_batches
from qatacov_jax.models import foreground_probability
from qatacov_jax.models.folding import make_forward
from qatacov_jax.runtime.sharding import data_sharding, replicate

Models = nnx.Module | Mapping[str, nnx.Module]


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    # Repeat the first row rather than zeros: padding stays a plausible input (no NaN risks
    # in exotic preprocessings) and its outputs are dropped anyway.
    pad = np.repeat(x[:1], rows - x.shape[0], axis=0)
    return np.concatenate([x, pad], axis=0)


def make_probability_fn(
    models: Mapping[str, nnx.Module],
    preprocessing: Mapping[str, Preprocessing | None],
    *,
    fold: bool = True,
) -> tuple[Callable[[Any, Mapping[str, Any]], dict[str, jax.Array]], dict[str, nnx.State]]:
    """The pure inference function of one or more models: what `make_predict_fn` jits and
    `qatacov_jax.export` serialises, so both compute the same thing.

    Args:
      models: name -> segmentation model (call: (B, H, W, 3) -> logits (B, H, W, 1)).
      preprocessing: name -> the model's `Preprocessing`, applied inside the function to
        inputs in [0, 1] with 1 or 3 channels; None for inputs that are already preprocessed.
      fold: fold BatchNorm into the convs (False: the graph as built, for benchmarks'
        `--no-fold`; same function up to float rounding).

    Returns:
      (forward, states): `forward(states, images)` maps name -> (B, H, W, C) images to name ->
      (B, H, W, 1) float32 foreground probabilities (`models.foreground_probability`: sigmoid,
      or softmax channel 1 of 2-class models); BatchNorm is folded into the convs
      (`models.folding.make_forward`, the fastest exact inference form). `states` holds each
      model's folded state; pass it (or a replicated copy) as the first argument.
    """
    missing = set(models) - set(preprocessing)
    if missing:
        raise ValueError(f"No preprocessing given for model(s) {sorted(missing)}.")
    preps = {k: preprocessing[k] for k in models}
    forwards, states = {}, {}
    for name, m in models.items():
        forwards[name], states[name] = make_forward(m, fold=fold)

    def forward(states: Any, images: Mapping[str, Any]) -> dict[str, jax.Array]:
        out = {}
        for name, fwd in forwards.items():
            x = images[name]
            if preps[name] is not None:
                x = preps[name](x.astype(jnp.float32))
            logits = fwd(states[name], x)
            out[name] = foreground_probability(logits)
        return out

    return forward, states


def make_predict_fn(
    model: Models,
    mesh: Mesh,
    *,
    preprocessing: Preprocessing | Mapping[str, Preprocessing] | None = None,
    batch_size: int | None = None,
    fold: bool = True,
) -> Callable[[Any], Any]:
    """A jitted function from a batch of images to per-pixel probabilities on all devices.

    Args:
      model: a segmentation model (call: (B, H, W, 3) -> logits (B, H, W, 1)), or a mapping
        name -> model to run several in one call. Put models in eval mode first.
      mesh: devices to use; the batch is split over its `data` axis, the state replicated.
      preprocessing: if given (one, or one per model name), inputs are images in [0, 1] with
        1 or 3 channels and each model's preprocessing is applied inside the jitted function;
        if None, inputs are already preprocessed (e.g. from `data.eval_iterator`).
      batch_size: pad every host (NumPy) batch to this many rows, so that the last, short
        batch reuses the compiled function. Must divide evenly over the mesh. Default: pad
        only to a multiple of the device count.
      fold: BatchNorm folded into the convs (`make_probability_fn`).

    Returns:
      predict(images): `images` is (B, H, W, C) (a NumPy array or a sharded `jax.Array`), or a
      mapping name -> such arrays when `model` is a mapping (sizes may differ per model). The
      result is (B, H, W, 1) float32 probabilities in [0, 1] as a `jax.Array` sharded over
      `data` (a dict of them for a mapping); padding rows are removed.
    """
    multi = isinstance(model, Mapping)
    models = dict(model) if multi else {"_": model}
    if preprocessing is None or isinstance(preprocessing, Preprocessing):
        preps: Mapping[str, Preprocessing | None] = dict.fromkeys(models, preprocessing)
    else:
        preps = preprocessing
    n_dev = mesh.devices.size
    if batch_size is not None and batch_size % n_dev:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {n_dev} devices of the mesh; use a "
            f"multiple of {n_dev}."
        )

    forward, states = make_probability_fn(models, preps, fold=fold)
    states = replicate(states, mesh)
    in_sharding = data_sharding(mesh)
    jitted = jax.jit(forward, out_shardings=in_sharding)

    def predict(images: Any) -> Any:
        if multi:
            if not isinstance(images, Mapping) or set(images) != set(models):
                raise ValueError(f"Expected a mapping with keys {sorted(models)} of image batches.")
            batch = dict(images)
        else:
            batch = {"_": images}
        sizes = {int(v.shape[0]) for v in batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"All models need the same number of images, got sizes {sizes}.")
        b = sizes.pop()
        placed = {}
        for name, x in batch.items():
            if isinstance(x, jax.Array) and x.shape[0] % n_dev == 0:
                placed[name] = x  # already on the mesh (e.g. from the data pipeline)
                continue
            x = np.asarray(x)
            rows = (
                batch_size if batch_size is not None and b <= batch_size else -(-b // n_dev) * n_dev
            )
            placed[name] = jax.device_put(_pad_rows(x, rows), in_sharding)
        out = jitted(states, placed)
        out = {k: (v if v.shape[0] == b else v[:b]) for k, v in out.items()}
        return out if multi else out["_"]

    return predict


# ------------------------------------------------------------------ any-size images


class Predictor:
    """Probability maps of one or more models for X-rays of any size, batched on all devices.

    Example::

        p = Predictor({"infection": model}, {"infection": prep}, {"infection": 224}, mesh)
        for maps in p.predict_all(images):  # images: iterable of (H, W) float in [0, 1]
            maps["infection"]  # (H, W) float32 probabilities at the image's resolution
    """

    def __init__(
        self,
        models: Mapping[str, nnx.Module],
        preprocessing: Mapping[str, Preprocessing],
        input_size: Mapping[str, int | Sequence[int]],
        mesh: Mesh,
        *,
        batch_size: int | None = None,
        fold: bool = True,
    ) -> None:
        n_dev = mesh.devices.size
        self.batch_size = int(batch_size) if batch_size else n_dev
        if self.batch_size % n_dev:
            raise ValueError(
                f"--batch-size {self.batch_size} is not divisible by the {n_dev} devices; use a "
                f"multiple of {n_dev}."
            )
        self.names = tuple(models)
        self.sizes = {k: height_width(input_size[k]) for k in self.names}
        self._predict = make_predict_fn(
            dict(models),
            mesh,
            preprocessing=dict(preprocessing),
            batch_size=self.batch_size,
            fold=fold,
        )

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """(H_i, W_i) float [0, 1] images -> per image, name -> (H_i, W_i) probabilities,
        plus `batching.grid_max_key(name)` -> () float32, the map's maximum on the model's
        own grid (`inference.batching.maps_per_image`: the decision is taken on it)."""
        if not images:
            return []
        batch = {
            k: v[..., None].astype(np.float32) / 255.0
            for k, v in model_batches(images, self.sizes).items()
        }
        return maps_per_image(images, jax.device_get(self._predict(batch)))

    def predict_all(self, images: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Streams `predict_batch` over an iterable, `batch_size` images at a time."""
        chunk: list[np.ndarray] = []
        for img in images:
            chunk.append(img)
            if len(chunk) == self.batch_size:
                yield from self.predict_batch(chunk)
                chunk = []
        if chunk:
            yield from self.predict_batch(chunk)
