"""PyTorch weights of the smp family: whole smp models and ImageNet encoder files.

Our smp modules carry PyTorch's names (`models/smp/layers.py`), so the name table is derived
from the model itself: for every `nnx.Conv` at path `p`, `p.weight` (OIHW -> HWIO) and
`p.bias`; for every BatchNorm, `p.weight/bias/running_mean/running_var` -> `scale/bias/
mean/var`; for every GroupNorm, `p.weight/bias`. Two kinds of file are accepted:

- a whole smp model, `torch.save(model.state_dict())` (keys `encoder.*`, `decoder.*`,
  `segmentation_head.*`): every tensor of the model, `classes` read from the head;
- an ImageNet classifier as torchvision (`resnet18-f37072fd.pth`, `resnet50-0676ba61.pth` /
  `-19c8e357.pth`, `densenet121-a639ec97.pth` with its old `norm.1` key spelling,
  `densenet161-8d451a50.pth`) or pretrainedmodels (`inceptionv4-8e4777a0.pth`) ship it: the
  encoder's tensors, the classification head (`fc`, `classifier`, `last_linear`) dropped.

A file of another architecture or encoder is refused at the first tensor that does not fit,
naming it and the (arch, encoder) the file looks like. See docs/weights.md#smp-family.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

from qatacov_jax.models import SMP_ARCHS, SMP_ENCODERS, abstract_smp_model
from qatacov_jax.models.smp import SmpSegmentationModel
from qatacov_jax.models.smp.layers import DropoutKey
from qatacov_jax.weights.errors import WeightsError
from qatacov_jax.weights.torch_state import read_torch_state

Path_ = tuple[str, ...]
# Classification heads of the ImageNet files (not part of an encoder).
HEAD_PREFIXES = ("fc.", "classifier.", "last_linear.")
MODEL_PREFIXES = ("encoder.", "decoder.", "segmentation_head.")
_BN = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))


@dataclasses.dataclass(frozen=True)
class Target:
    path: Path_  # path of our variable in the model's pure state dict
    shape: tuple[int, ...]  # our shape
    transpose: bool  # OIHW conv kernel -> HWIO


def torch_table(model: nnx.Module, prefix: str = "") -> dict[str, Target]:
    """PyTorch state-dict key -> our variable, for every weight of `model` (a concrete or
    abstract smp model or encoder), in graph order."""
    table: dict[str, Target] = {}
    for path, m in nnx.iter_modules(model):
        parts = tuple(str(p) for p in path)
        key = prefix + ".".join(parts) + ("." if parts else "")
        if isinstance(m, nnx.Conv):
            kernel = m.kernel.get_value()
            table[key + "weight"] = Target((*parts, "kernel"), tuple(kernel.shape), True)
            if m.bias is not None:
                bias = m.bias.get_value()
                table[key + "bias"] = Target((*parts, "bias"), tuple(bias.shape), False)
        elif isinstance(m, nnx.BatchNorm | nnx.GroupNorm):
            names = _BN if isinstance(m, nnx.BatchNorm) else _BN[:2]
            for theirs, ours in names:
                value = getattr(m, ours).get_value()
                table[key + theirs] = Target((*parts, ours), tuple(value.shape), False)
    return table


def _torch_shape(t: Target) -> tuple[int, ...]:
    """The shape PyTorch stores for our variable (OIHW for conv kernels)."""
    if t.transpose:
        h, w, i, o = t.shape
        return (o, i, h, w)
    return t.shape


@functools.cache
def _encoder_table(encoder: str) -> Mapping[str, tuple[int, ...]]:
    enc = nnx.eval_shape(lambda: abstract_smp_model("unet", encoder).encoder)
    return {k: _torch_shape(t) for k, t in torch_table(enc).items()}


def _decoder_arch(keys: list[str]) -> str | None:
    """The smp decoder a whole-model key set belongs to, from its distinctive names."""
    if any(k.startswith("decoder.p5.") for k in keys):
        return "fpn"
    if any(k.startswith("decoder.blocks.x_") for k in keys):
        return "unetpp"
    if any(k.startswith("decoder.blocks.0.") for k in keys):
        return "unet"
    return None


def guess(tensors: Mapping[str, np.ndarray], whole: bool) -> tuple[str | None, str | None]:
    """(arch, encoder) the file looks like: the smp encoder with the most matching
    (key, shape) pairs, and the decoder from its key names (None if nothing matches)."""
    strip = "encoder." if whole else ""
    enc = {k[len(strip) :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(strip)}
    scores = {
        name: sum(enc.get(k) == shape for k, shape in _encoder_table(name).items())
        for name in SMP_ENCODERS
    }
    best = max(scores, key=scores.__getitem__)
    return (_decoder_arch(list(tensors)) if whole else None), (best if scores[best] else None)


def _looks_like(tensors: Mapping[str, np.ndarray], whole: bool, arch: str, encoder: str) -> str:
    g_arch, g_enc = guess(tensors, whole)
    if g_enc is None and g_arch is None:
        return " It does not look like an smp model or a supported ImageNet encoder file."
    arch_out = g_arch or arch
    enc_out = g_enc or encoder
    if (arch_out, enc_out) == (arch, encoder):
        return ""
    if whole:
        return (
            f" The file looks like smp {SMP_ARCHS[arch_out][0]} with encoder {enc_out!r}: "
            f"port it with --arch {arch_out} --encoder {enc_out}."
        )
    return f" The file looks like {enc_out} ImageNet weights: port it with --encoder {enc_out}."


@dataclasses.dataclass
class SmpSource:
    """A PyTorch file mapped onto an smp model (or its encoder).

    Attributes:
      whole: a whole smp model (else an encoder's ImageNet weights).
      classes: output channels of a whole model's head (None for encoder files).
      pure: our pure state dict (the model's, or the encoder's for encoder files).
      num_tensors, num_values: what was read (after dropping heads and counters).
      dropped: the classification-head tensors left out.
      merge_policy: a whole FPN's `decoder_merge_policy` ("add" or "cat"), read from its
        head's input channels; None otherwise.
    """

    whole: bool
    classes: int | None
    pure: dict[str, Any]
    num_tensors: int
    num_values: int
    dropped: list[str]
    merge_policy: str | None = None


def _whole_model(arch: str, encoder: str, head: np.ndarray) -> SmpSegmentationModel:
    """The abstract smp model a whole file's head weight (classes, C, k, k) belongs to. For
    an FPN the merge policy is read from it: "cat" feeds the head the four pyramid levels
    concatenated (4x the channels of "add"); a head matching neither gets smp's default
    "add", whose shape error then names the tensor."""
    classes = int(head.shape[0])
    for policy in ("cat", "add") if arch == "fpn" else (None,):
        model = abstract_smp_model(arch, encoder, classes=classes, decoder_merge_policy=policy)
        target = torch_table(model)["segmentation_head.0.weight"]
        if _torch_shape(target) == tuple(head.shape):
            return model
    return model


def read_smp_source(src: str | Path, arch: str, encoder: str) -> SmpSource:
    """Reads `src` and maps every tensor onto the smp `arch` + `encoder` model.

    Raises:
      WeightsError: unreadable file (TorchScript and pickled models get advice), unknown
        arch/encoder, or the first tensor that does not fit (named, with the architecture
        the file looks like), else the first weight the file lacks.
    """
    src = Path(src)
    if arch not in SMP_ARCHS:
        raise WeightsError(src, f"unknown smp --arch {arch!r}; valid: {sorted(SMP_ARCHS)}.")
    if encoder not in SMP_ENCODERS:
        raise WeightsError(
            src, f"unknown smp --encoder {encoder!r}; valid: {sorted(SMP_ENCODERS)}."
        )
    tensors = read_torch_state(src)
    whole = any(k.startswith(MODEL_PREFIXES) for k in tensors)
    dropped = [] if whole else [k for k in tensors if k.startswith(HEAD_PREFIXES)]
    tensors = {k: v for k, v in tensors.items() if k not in dropped}
    classes, merge_policy = None, None
    if whole:
        head = tensors.get("segmentation_head.0.weight")
        if head is None or head.ndim != 4:
            raise WeightsError(
                src,
                "has encoder/decoder tensors but no 4-D 'segmentation_head.0.weight'; not a "
                f"state dict of an smp Unet/UnetPlusPlus/FPN.{_looks_like(tensors, True, arch, encoder)}",
            )
        classes = int(head.shape[0])
        model = _whole_model(arch, encoder, head)
        merge_policy = model.decoder_merge_policy  # None but for an FPN
        table = torch_table(model)
    else:
        model = abstract_smp_model(arch, encoder)
        table = torch_table(model.encoder)
    what = f"smp {SMP_ARCHS[arch][0]} {encoder}" if whole else f"the smp {encoder} encoder"

    flat: dict[Path_, np.ndarray] = {}
    for key, array in tensors.items():
        target = table.get(key)
        if target is None:
            raise WeightsError(
                src,
                f"unexpected tensor {key!r}: {what} has no such weight."
                + _looks_like(tensors, whole, arch, encoder),
            )
        if tuple(array.shape) != _torch_shape(target):
            raise WeightsError(
                src,
                f"tensor {key!r} has shape {tuple(array.shape)} but {what} needs "
                f"{_torch_shape(target)}." + _looks_like(tensors, whole, arch, encoder),
            )
        flat[target.path] = np.ascontiguousarray(
            array.transpose(2, 3, 1, 0) if target.transpose else array, np.float32
        )
    for key, target in table.items():
        if target.path not in flat:
            raise WeightsError(
                src,
                f"missing tensor {key!r} of {what}; the file is incomplete or of another "
                f"architecture.{_looks_like(tensors, whole, arch, encoder)}",
            )
    if whole:
        # Non-weight state (the FPN dropout's key) keeps a fixed start value.
        for path, value in _flatten(nnx.to_pure_dict(nnx.state(model, DropoutKey))).items():
            flat[path] = np.asarray(jax.random.key_data(jax.random.key(0)), value.dtype)
    return SmpSource(
        whole=whole,
        classes=classes,
        pure=traverse_util.unflatten_dict(flat),
        num_tensors=len(tensors),
        num_values=int(sum(a.size for a in tensors.values())),
        dropped=dropped,
        merge_policy=merge_policy,
    )


def _flatten(tree: dict[Any, Any]) -> dict[Path_, Any]:
    return {
        tuple(str(p) for p in path): leaf for path, leaf in traverse_util.flatten_dict(tree).items()
    }


def port_smp_encoder(
    src: str | Path, source: SmpSource, encoder: str, out_dir: str | Path, *, overwrite: bool
) -> Path:
    """Writes the ImageNet encoder weights of `source` (from `read_smp_source`) as a ported
    encoder directory (`encoder/` + `manifest.json`, as `port` writes) for
    `config.model.encoder_weights` of an smp-family config.

    Raises:
      WeightsError: `source` is a whole model, or `out_dir` exists without `overwrite`.
    """
    # Imported here: `port` imports this module's siblings; keeping the import local avoids
    # a cycle at package import time.
    import datetime

    import qatacov_jax
    from qatacov_jax.models import encoder_preprocessing
    from qatacov_jax.weights.manifest import Manifest, sha256_of, smp_architecture
    from qatacov_jax.weights.port import write_ported_dir

    src, out_dir = Path(src), Path(out_dir).absolute()
    if source.whole:
        raise WeightsError(src, "is a whole smp model, not encoder weights.")
    if out_dir.exists() and not overwrite:
        raise WeightsError(
            out_dir, "already exists; choose another --out or pass --overwrite to replace it."
        )
    epsilon = 1e-3 if encoder == "inceptionv4" else 1e-5
    manifest = Manifest(
        encoder=encoder,
        architecture=smp_architecture(encoder),
        source={
            "framework": "torch",
            "file_name": src.name,
            "path": str(src.absolute()),
            "sha256": sha256_of(src),
            "size_bytes": src.stat().st_size,
            "keras_version": "",
        },
        preprocessing=encoder_preprocessing(encoder, "smp"),
        source_bn_epsilon=epsilon,
        encoder_bn_epsilon=epsilon,
        num_tensors=source.num_tensors,
        num_values=source.num_values,
        dropped=source.dropped,
        notes=[f"dropped the classification head ({len(source.dropped)} tensors)."]
        if source.dropped
        else [],
        created_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        qatacov_jax_version=qatacov_jax.__version__,
    )
    write_ported_dir(out_dir, source.pure, manifest, overwrite=overwrite)
    return out_dir
