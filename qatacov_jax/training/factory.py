"""The model factory: a configuration -> the model (segmenter or classifier) and its preprocessing.

Used by training (`training.loop`), by loading a trained run (`training.rundir.load_model`)
and so by evaluation, inference and the benchmarks: one place decides how
`config.model` becomes a model. It lives above `models` and `weights` because it joins the
two (weights are ported into models, so `weights` imports `models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from qatacov_jax import models
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.weights import load_encoder_weights, weights_preprocessing

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# ----------------------------------------------------------------------------- model


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    name = config.model.get("dtype", "float32") or "float32"
    if name not in DTYPES:
        raise ValueError(f"Unknown config.model.dtype {name!r}; choose one of {sorted(DTYPES)}.")
    return DTYPES[name]


def build_model(
    config: ml_collections.ConfigDict,
    *,
    seed: int,
    load_weights: bool = True,
    abstract: bool = False,
) -> tuple[nnx.Module, Preprocessing]:
    """The model of `config.model`, and the preprocessing its weights expect.

    `config.model.family` (default "paper1") picks the model family: "paper1" (Keras
    segmentation_models graphs) or "smp" (segmentation_models.pytorch graphs, paper 2, with
    `config.model.classes` outputs, `config.model.activation` and, for FPN,
    `config.model.decoder_merge_policy`). For paper 1,
    `config.model.arch` names a decoder (a segmentation model, `models.create_model`) or is
    `models.CLASSIFIER_ARCH` (the activation-map baseline: the encoder + GAP + a 2-class
    head, `models.create_classifier`); everything else is shared.

    With `config.model.encoder_weights` (a directory written by `qatacov_jax.weights.port` or
    `port_smp_encoder`) the encoder is filled from it (unless `load_weights=False`, used when
    a checkpoint will replace all weights anyway) and the preprocessing comes from its
    manifest; without, the encoder is randomly initialised and `config.model.preprocessing`
    (or the encoder's standard mode) applies. `abstract=True` (only with
    `load_weights=False`) returns the model with shapes only, for a checkpoint to fill.

    With `config.model.cascade.scheme = "cascaded"` (paper 2's cascaded scheme,
    `training.cascade`) the model is the infection model behind the frozen lung model of the
    cascade block; the preprocessing is the infection model's.
    """
    from qatacov_jax.training import cascade  # it loads lung runs, which needs this module

    if cascade.scheme(config) == "cascaded":
        return _build_cascaded(config, seed=seed, load_weights=load_weights, abstract=abstract)
    m = config.model
    family = m.get("family") or models.PAPER1
    weights_dir = Path(m.encoder_weights) if m.get("encoder_weights") else None
    if weights_dir is not None and not weights_dir.exists():
        raise FileNotFoundError(
            f"config.model.encoder_weights={weights_dir} does not exist. Port weights first "
            "(scripts/port_weights.py) or set --config.model.encoder_weights=None for "
            "random initialisation."
        )
    if weights_dir is not None:
        # Checked before any model is built: the manifest must be for this architecture.
        preprocessing = weights_preprocessing(m.encoder, weights_dir, family)
    elif m.get("preprocessing"):
        preprocessing = Preprocessing.from_mode(m.preprocessing)
    else:
        preprocessing = models.encoder_preprocessing(m.encoder, family)

    dtype = compute_dtype(config)
    if family == models.SMP:
        smp_kw = dict(
            classes=int(m.get("classes") or 1),
            activation=m.get("activation"),
            decoder_merge_policy=m.get("decoder_merge_policy"),
        )
        if abstract and not load_weights:
            return models.abstract_smp_model(
                m.arch, m.encoder, dtype=dtype, **smp_kw
            ), preprocessing
        if m.get("frozen"):
            raise ValueError(
                "config.model.frozen=True is paper 1's encoder freezing; the smp family "
                "(config.model.family='smp') trains its encoder. Set it to False."
            )
        model = models.create_smp_model(
            m.arch, m.encoder, rngs=nnx.Rngs(seed), dtype=dtype, **smp_kw
        )
        if weights_dir is not None and load_weights:
            preprocessing = load_encoder_weights(model.encoder, weights_dir)
        return model, preprocessing
    if family != models.PAPER1:
        raise ValueError(f"Unknown config.model.family {family!r}; valid: {list(models.FAMILIES)}.")

    rngs = nnx.Rngs(seed)
    encoder = models.create_encoder(m.encoder, rngs=rngs, dtype=dtype)
    if weights_dir is not None and load_weights:
        preprocessing = load_encoder_weights(encoder, weights_dir)
    if is_classifier(config):
        model = models.create_classifier(encoder, frozen=bool(m.frozen), rngs=rngs, dtype=dtype)
    else:
        model = models.create_model(m.arch, encoder, frozen=bool(m.frozen), rngs=rngs, dtype=dtype)
    return model, preprocessing


def _build_cascaded(
    config: ml_collections.ConfigDict, *, seed: int, load_weights: bool, abstract: bool
) -> tuple[nnx.Module, Preprocessing]:
    """`build_model` of a cascaded config: the infection model of `config` without the
    cascade, wrapped by `cascade.build` (shapes only with `abstract` and no weights)."""
    from qatacov_jax.training import cascade

    plain = ml_collections.ConfigDict(config.to_dict())
    plain.model.cascade.scheme = "parallel"
    if abstract and not load_weights:
        made: dict[str, Preprocessing] = {}

        def make() -> nnx.Module:
            infection, made["prep"] = build_model(plain, seed=seed, load_weights=False)
            return cascade.build(config, infection, made["prep"], load_weights=False)

        return nnx.eval_shape(make), made["prep"]
    infection, preprocessing = build_model(plain, seed=seed, load_weights=load_weights)
    model = cascade.build(config, infection, preprocessing, load_weights=load_weights)
    return model, preprocessing


def is_classifier(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` trains the activation-map baseline classifier (one image label per
    image) rather than a segmentation model (one mask per image)."""
    return config.model.get("arch") == models.CLASSIFIER_ARCH


def count_trainable(model: nnx.Module) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts (the Keras convention of Table 8)."""
    c = models.count_params(model)
    return int(c.trainable), int(c.non_trainable)
