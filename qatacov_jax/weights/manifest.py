"""The manifest written beside every ported encoder checkpoint (`manifest.json`).

It records where the weights came from (framework, layout, file name, sha256, size), what
they are (encoder name, architecture, BN epsilon of the source and of our encoder), what was
dropped (classification heads), and — most importantly — the input preprocessing those
weights expect, as `Preprocessing.to_dict()`. Training and inference read the preprocessing
from here, so weights and input normalisation cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models import ENCODER_ARCHITECTURES, encoder_preprocessing
from qatacov_jax.weights.errors import WeightsError

MANIFEST_NAME = "manifest.json"
CHECKPOINT_NAME = "encoder"  # orbax checkpoint directory inside a ported directory
FORMAT = "qatacov-jax-encoder-weights"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Manifest:
    """What a ported directory holds. See the module docstring."""

    encoder: str
    architecture: str
    source: dict[str, Any]
    preprocessing: Preprocessing
    source_bn_epsilon: float
    encoder_bn_epsilon: float
    num_tensors: int
    num_values: int
    dropped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    created_utc: str = ""
    qatacov_jax_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path) -> Manifest:
        if d.get("format") != FORMAT:
            raise WeightsError(
                path, f"not a qatacov-jax weights manifest (format {d.get('format')!r})."
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise WeightsError(
                path,
                f"manifest format_version {d.get('format_version')!r} is not the supported "
                f"{FORMAT_VERSION}; port the source file again with this version.",
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        try:
            kwargs["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(path, f"malformed manifest ({e}).") from None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def read_manifest(ported_dir: str | Path) -> Manifest:
    """Reads `<ported_dir>/manifest.json`.

    Raises:
      WeightsError: the directory or manifest is missing or malformed.
    """
    ported_dir = Path(ported_dir)
    path = ported_dir / MANIFEST_NAME
    if not ported_dir.is_dir():
        raise WeightsError(
            ported_dir,
            "is not a ported-weights directory; create one with `python scripts/port_weights.py "
            "SRC --encoder NAME --out DIR` and set config.model.encoder_weights to DIR.",
        )
    if not path.is_file():
        raise WeightsError(path, "missing: this directory was not written by port_weights.py.")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(path, f"is not valid JSON ({e}).") from None
    return Manifest.from_dict(d, path)


def smp_architecture(encoder: str) -> str:
    """The manifest `architecture` of smp-family encoder weights (`smp-resnet50` is
    torchvision's ResNet-50, not paper 1's pre-activation `resnet50`)."""
    return f"smp-{encoder}"


def weights_preprocessing(
    encoder: str, encoder_weights: str | Path | None, family: str = "paper1"
) -> Preprocessing:
    """The preprocessing the input pipeline must apply for `config.model.encoder_weights`.

    None (random init) -> the encoder's default (`models.encoder_preprocessing`); a ported
    directory -> its manifest's preprocessing (checked to be for an encoder of the same
    architecture, so e.g. ResNet weights cannot be named for a DenseNet model).
    """
    if encoder_weights is None:
        return encoder_preprocessing(encoder, family)
    manifest = read_manifest(encoder_weights)
    want = smp_architecture(encoder) if family == "smp" else ENCODER_ARCHITECTURES.get(encoder)
    if want is not None and manifest.architecture != want:
        raise WeightsError(
            Path(encoder_weights),
            f"holds {manifest.architecture} weights (ported for {manifest.encoder!r}) but the "
            f"config's encoder is {encoder!r} ({want}); fix config.model.encoder or "
            "config.model.encoder_weights.",
        )
    return manifest.preprocessing
