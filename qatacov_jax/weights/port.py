"""Porting a Keras / PyTorch weights file into a Flax encoder checkpoint, and loading it back.

`port(src, encoder, out_dir)` reads the file, maps every tensor through the name table of
`tables.py`, checks it against the shapes of the encoder `create_encoder(encoder)` builds
(abstractly: `nnx.eval_shape`, no compute), and writes `out_dir/encoder/` (an orbax
checkpoint of the encoder's pure state dict: `{module: {variable: array}}`) plus
`out_dir/manifest.json`. It writes into a hidden temporary directory beside `out_dir` and
renames it into place at the end, so an error never leaves a partial checkpoint, and it
refuses to replace an existing `out_dir` unless `overwrite=True`.

`load_encoder_weights(encoder_module, ported_dir)` fills a live encoder, checking every
name and shape, and returns the `Preprocessing` the weights expect.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

import qatacov_jax
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models import ENCODER_ARCHITECTURES, create_encoder, encoder_preprocessing
from qatacov_jax.runtime.files import replace_dir
from qatacov_jax.runtime.locking import run_dir_lock
from qatacov_jax.weights import tables
from qatacov_jax.weights.errors import WeightsError
from qatacov_jax.weights.keras_h5 import is_hdf5, read_keras_h5
from qatacov_jax.weights.manifest import (
    CHECKPOINT_NAME,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    sha256_of,
    write_manifest,
)
from qatacov_jax.weights.torch_state import read_torch_state

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (module attribute, variable name)
Path_ = tuple[str, ...]  # a path in a nested pure state dict

# Everything an encoder holds except RNG counters (none today, but not weights if added).
WEIGHT_VARIABLES = nnx.Not(nnx.RngState)
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


@dataclasses.dataclass
class SourceTensors:
    """A source file mapped onto our names, before shape checks.

    Attributes:
      framework: 'keras' or 'torch'.
      tensors: (module, variable) -> array (already in our layout), in file order.
      names: (module, variable) -> the tensor's name in the file (for error messages).
      dropped: names of classification-head tensors left out.
      keras_version: the Keras version recorded in an .h5 file ('' otherwise).
    """

    framework: str
    tensors: dict[Key, np.ndarray]
    names: dict[Key, str]
    dropped: list[str]
    keras_version: str = ""


def source_framework(src: Path) -> str:
    """'keras' for HDF5 files (by signature, or by suffix so that a broken .h5 is reported as
    such), else 'torch'."""
    if src.suffix.lower() in KERAS_SUFFIXES:
        return "keras"
    return "keras" if src.is_file() and is_hdf5(src) else "torch"


def _wrong_architecture_hint(architecture: str, layer_names: list[str]) -> str:
    scores = {arch: len(tables.keras_layer_modules(arch, layer_names)) for arch in tables.MODULES}
    best = max(scores, key=scores.__getitem__)
    if best != architecture and scores[best] > scores[architecture]:
        encoders = [e for e, a in ENCODER_ARCHITECTURES.items() if a == best]
        return f" The file looks like a {best} file: port it with encoder {encoders[0]!r}."
    return ""


def read_keras_source(src: Path, architecture: str) -> SourceTensors:
    kw = read_keras_h5(src)
    layer_names = list(kw.layers)
    layer_modules = tables.keras_layer_modules(architecture, layer_names)
    heads = tables.KERAS_HEAD_LAYERS.get(architecture, ())
    out = SourceTensors("keras", {}, {}, [], kw.keras_version)
    for layer, arrays in kw.layers.items():
        module = layer_modules.get(layer)
        if module is None and layer in heads:
            out.dropped += [kw.full_names[(layer, w)] for w in arrays]
            continue
        for weight, array in arrays.items():
            full = kw.full_names[(layer, weight)]
            target = None if module is None else tables.keras_target(module, weight)
            if target is None:
                raise WeightsError(
                    src,
                    f"unexpected tensor {full!r} (layer {layer!r}): not part of a Keras "
                    f"{architecture} encoder.{_wrong_architecture_hint(architecture, layer_names)}",
                )
            out.tensors[(target.module, target.variable)] = array
            out.names[(target.module, target.variable)] = full
    return out


def read_torch_source(src: Path, architecture: str) -> SourceTensors:
    if architecture not in tables.TORCH_RULES:
        raise WeightsError(
            src,
            f"PyTorch files are supported for DenseNet-121 (encoders densenet121, chexnet), not "
            f"{architecture}; use the Keras .h5 weights of {architecture} instead.",
        )
    state = read_torch_state(src)
    heads = tables.TORCH_HEAD_PREFIXES.get(architecture, ())
    out = SourceTensors("torch", {}, {}, [])
    for key, array in state.items():
        target = tables.torch_target(architecture, key)
        if target is None:
            if key.startswith(heads):
                out.dropped.append(key)
                continue
            raise WeightsError(
                src,
                f"unexpected tensor {key!r} (name after removing wrapper prefixes): not part of "
                f"a torchvision {architecture}.",
            )
        if target.transpose is not None:
            if array.ndim != len(target.transpose):
                raise WeightsError(
                    src,
                    f"tensor {key!r} has shape {array.shape}; a conv kernel must be 4-D (OIHW).",
                )
            array = np.ascontiguousarray(array.transpose(target.transpose))
        out.tensors[(target.module, target.variable)] = array
        out.names[(target.module, target.variable)] = key
    return out


def _flatten(tree: dict[Any, Any]) -> dict[Path_, Any]:
    """Nested dict -> {path tuple: leaf}, path parts as strings (so the integer keys of a
    live state and the string keys of checkpoint metadata compare equal)."""
    flat = traverse_util.flatten_dict(tree)
    return {tuple(str(part) for part in path): leaf for path, leaf in flat.items()}


def abstract_encoder(encoder: str, *, dtype: Any = None) -> nnx.Module:
    """The encoder `create_encoder` builds, with shapes only (no memory, no compute).

    `load_encoder_weights` can fill such a module directly, which skips the (slow, eager)
    random initialisation when the weights are about to be replaced anyway.
    """
    return nnx.eval_shape(lambda: create_encoder(encoder, rngs=nnx.Rngs(0), dtype=dtype))


def encoder_bn_epsilon(module: nnx.Module) -> float:
    eps = {m.epsilon for _, m in module.iter_modules() if isinstance(m, nnx.BatchNorm)}
    if len(eps) != 1:
        raise ValueError(f"Expected one BatchNorm epsilon in the encoder, found {sorted(eps)}.")
    return float(eps.pop())


@functools.cache
def encoder_spec(encoder: str) -> tuple[Mapping[Path_, tuple[int, ...]], float]:
    """(variable path -> shape, BN epsilon) of an encoder; cached: tracing it takes seconds."""
    module = abstract_encoder(encoder)
    state = nnx.to_pure_dict(nnx.state(module, WEIGHT_VARIABLES))
    shapes = {k: tuple(v.shape) for k, v in _flatten(state).items()}
    return MappingProxyType(shapes), encoder_bn_epsilon(module)


def match_to_encoder(
    src: Path, source: SourceTensors, expected: Mapping[Path_, tuple[int, ...]]
) -> dict[str, Any]:
    """Checks the mapped source against the encoder's variables; returns the pure state dict.

    Raises:
      WeightsError: naming the first source tensor the encoder has no place for or whose
        shape differs, else the first encoder variable the file does not provide.
    """
    flat: dict[Path_, np.ndarray] = {}
    for key, array in source.tensors.items():
        name = source.names[key]
        want = expected.get(key)
        if want is None:
            raise WeightsError(
                src,
                f"unexpected tensor {name!r}: the encoder has no variable {'.'.join(key)} "
                "(e.g. a conv bias where the architecture has none).",
            )
        if tuple(array.shape) != want:
            raise WeightsError(
                src,
                f"tensor {name!r} has shape {tuple(array.shape)} but {'.'.join(key)} needs "
                f"{want}; the file is for a different architecture or variant.",
            )
        flat[key] = np.asarray(array, np.float32)
    for key in expected:
        if key not in flat:
            raise WeightsError(
                src,
                f"missing tensor for {'.'.join(key)} (Keras layer {key[0]!r}, weight "
                f"{key[1]!r}); the file is incomplete or for a different architecture.",
            )
    return traverse_util.unflatten_dict(flat)


def _check_encoder_name(encoder: str) -> str:
    if encoder not in ENCODER_ARCHITECTURES:
        raise ValueError(
            f"Unknown encoder {encoder!r}; valid encoders: {sorted(ENCODER_ARCHITECTURES)}."
        )
    return ENCODER_ARCHITECTURES[encoder]


def port(
    src: str | Path,
    encoder: str,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Converts a local weights file into a ported-weights directory.

    Args:
      src: a Keras `.h5` (save_weights, keras.applications notop, CheXNet-Keras) or a PyTorch
        file (torchvision DenseNet-121 state dict, CheXNet `model.pth.tar`).
      encoder: `densenet121`, `chexnet`, `inceptionv3` or `resnet50`.
      out_dir: directory to create (`encoder/` orbax checkpoint + `manifest.json`).
      overwrite: replace an existing `out_dir` (only after the new one is complete).
      preprocessing: the input preprocessing the weights expect; default
        `encoder_preprocessing(encoder)` (what the original weights were trained with).

    Returns:
      `out_dir`.

    Raises:
      WeightsError: bad or mismatched file, or `out_dir` exists and `overwrite` is False.
    """
    src, out_dir = Path(src), Path(out_dir).absolute()
    architecture = _check_encoder_name(encoder)
    _check_replaceable(out_dir, overwrite)
    if not src.is_file():
        raise WeightsError(src, "no such file; pass the path of a local weights file.")
    framework = source_framework(src)
    log.info("Reading %s weights from %s", framework, src)
    if framework == "keras":
        source = read_keras_source(src, architecture)
    else:
        source = read_torch_source(src, architecture)
    expected, eps_ours = encoder_spec(encoder)
    pure = match_to_encoder(src, source, expected)

    eps_source = tables.SOURCE_BN_EPSILON[(framework, architecture)]
    notes = []
    if source.dropped:
        notes.append(f"dropped the classification head ({len(source.dropped)} tensors).")
    if not np.isclose(eps_source, eps_ours, rtol=0, atol=1e-12):
        notes.append(
            f"source BatchNorm epsilon {eps_source:g}, ours {eps_ours:g}: outputs differ by "
            "O(epsilon difference / variance), far below float32 training noise."
        )
    manifest = Manifest(
        encoder=encoder,
        architecture=architecture,
        source={
            "framework": framework,
            "file_name": src.name,
            "path": str(src.absolute()),
            "sha256": sha256_of(src),
            "size_bytes": src.stat().st_size,
            "keras_version": source.keras_version,
        },
        preprocessing=preprocessing or encoder_preprocessing(encoder),
        source_bn_epsilon=eps_source,
        encoder_bn_epsilon=eps_ours,
        num_tensors=len(source.tensors),
        num_values=int(sum(a.size for a in source.tensors.values())),
        dropped=source.dropped,
        notes=notes,
        created_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        qatacov_jax_version=qatacov_jax.__version__,
    )

    write_ported_dir(out_dir, pure, manifest, overwrite=overwrite)
    log.info("Wrote %s (%d tensors, %s)", out_dir, manifest.num_tensors, ", ".join(notes) or "")
    return out_dir


def write_ported_dir(
    out_dir: Path, pure: dict[str, Any], manifest: Manifest, *, overwrite: bool
) -> None:
    """Writes `out_dir/encoder/` (orbax checkpoint of `pure`) + `manifest.json` into a hidden
    temporary directory, then renames it into place (replacing an existing `out_dir` only
    once the new one is complete, with `overwrite`, and only an earlier port of ours)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Locked beside out_dir (it is replaced as a whole): a second port into the same --out
    # is refused instead of racing the renames.
    with run_dir_lock(out_dir, purpose="port_weights", beside=True):
        _check_replaceable(out_dir, overwrite)  # again: something may have appeared meanwhile
        _write_port(out_dir, pure, manifest)


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """Refuses (WeightsError) an existing non-empty `out_dir` unless `overwrite` is set *and*
    it is an earlier port of ours (a readable manifest.json): `--out .` holding unrelated
    files is never replaced."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise WeightsError(out_dir, "exists and is not a directory; choose another --out.")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise WeightsError(
            out_dir,
            "already exists; choose another output directory or pass --overwrite "
            "(overwrite=True) to replace an earlier port.",
        )
    try:
        read_manifest(out_dir)
    except WeightsError:
        raise WeightsError(
            out_dir,
            f"is not an earlier output of port_weights.py (no readable {MANIFEST_NAME} of "
            "ours in it); refusing to replace it even with --overwrite. Choose another --out.",
        ) from None


def _write_port(out_dir: Path, pure: Any, manifest: Manifest) -> None:
    """Writes the port into a temporary sibling and renames it over `out_dir`."""

    def fill(tmp: Path) -> None:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / CHECKPOINT_NAME, pure)
        write_manifest(tmp, manifest)

    replace_dir(out_dir, fill)


def load_encoder_weights(encoder_module: nnx.Module, ported_dir: str | Path) -> Preprocessing:
    """Fills `encoder_module` (made by `create_encoder`) with ported weights, in place.

    Every variable of the module must be in the checkpoint with the same shape and vice
    versa; values keep the module's dtype and, for sharded/replicated arrays, their sharding.

    Returns:
      The `Preprocessing` the weights expect (from the manifest): the input pipeline must use it.

    Raises:
      WeightsError: missing/malformed directory, or a name/shape mismatch (first one named).
    """
    ported_dir = Path(ported_dir).absolute()
    manifest = read_manifest(ported_dir)
    ckpt = ported_dir / CHECKPOINT_NAME
    state = nnx.state(encoder_module, WEIGHT_VARIABLES)
    ours = _flatten(nnx.to_pure_dict(state))
    checkpointer = ocp.StandardCheckpointer()
    try:
        stored = _flatten(checkpointer.metadata(ckpt).item_metadata.tree)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise WeightsError(
            ckpt, f"unreadable encoder checkpoint ({e}); port the file again."
        ) from None
    what = f"{manifest.architecture} weights ported from {manifest.source.get('file_name')!r}"
    for key, meta in stored.items():
        if key not in ours:
            raise WeightsError(
                ported_dir,
                f"{what} have tensor {'.'.join(key)}, which this encoder lacks: the model's "
                f"encoder is not {manifest.architecture}.",
            )
        if tuple(meta.shape) != tuple(ours[key].shape):
            raise WeightsError(
                ported_dir,
                f"{what}: tensor {'.'.join(key)} has shape {tuple(meta.shape)}, the encoder's "
                f"is {tuple(ours[key].shape)}.",
            )
    for key in ours:
        if key not in stored:
            raise WeightsError(
                ported_dir, f"{what} lack tensor {'.'.join(key)} that this encoder needs."
            )
    target = traverse_util.unflatten_dict(
        {k: np.zeros(v.shape, np.float32) for k, v in ours.items()}
    )
    restored = _flatten(checkpointer.restore(ckpt, target))

    def place(key: Path_, old: Any) -> Any:
        value = np.asarray(restored[key]).astype(old.dtype)
        if isinstance(old, jax.Array):
            return jax.device_put(value, old.sharding)
        return jnp.asarray(value)

    new = traverse_util.unflatten_dict({k: place(k, v) for k, v in ours.items()})
    nnx.replace_by_pure_dict(state, new)
    nnx.update(encoder_module, state)
    log.info("Loaded %s from %s", what, ported_dir)
    return manifest.preprocessing
