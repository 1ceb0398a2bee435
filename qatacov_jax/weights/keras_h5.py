"""Reads Keras weight files (`.h5`) into plain NumPy arrays keyed by layer name.

Two layouts hold the same thing and both are accepted:
- `model.save_weights('x.h5')` and the keras.applications ImageNet `*_notop.h5` files: the
  root has the attribute `layer_names`; each layer's group has `weight_names`, and the
  arrays live at `<layer>/<weight name>` (e.g. `conv1/conv/conv1/conv/kernel:0`);
- `model.save('x.h5')` (a full model): the same, one level down under `model_weights`.
Keras 3's `*.weights.h5` (groups `layers/<name>/vars/<i>`) keeps no weight names, so it is
refused with advice rather than guessed at.

Kernels are already HWIO (Keras' layout, which is also Flax's), so nothing is transposed here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from qatacov_jax.weights.errors import WeightsError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass
class KerasWeights:
    """The weights of one Keras file.

    Attributes:
      path: the file read.
      layers: layer name -> {short weight name (`kernel`, `gamma`, ...) -> array}, in the
        file's layer order, only layers that hold weights.
      full_names: (layer name, short name) -> the dataset name as stored, for error messages.
      keras_version: the `keras_version` attribute, '' if absent.
    """

    path: Path
    layers: dict[str, dict[str, np.ndarray]]
    full_names: dict[tuple[str, str], str]
    keras_version: str


def _text(value: object) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def short_weight_name(layer: str, weight_name: str) -> str:
    """`conv1/conv/kernel:0` -> `kernel`; also handles old files without the `:0`."""
    name = weight_name
    if name.startswith(layer + "/"):
        name = name[len(layer) + 1 :]
    name = name.rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def is_hdf5(path: Path) -> bool:
    """Whether the file starts with the HDF5 signature (at offset 0, as h5py writes it)."""
    with open(path, "rb") as f:
        return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def read_keras_h5(path: str | Path) -> KerasWeights:
    """Reads every weight array of a Keras `.h5` weights or model file.

    Raises:
      WeightsError: the file is missing, not HDF5, truncated/corrupt, a Keras 3 weights
        file, or a layer lists a weight that is not in the file.
    """
    import h5py  # imported here so torch-only users never pay for it

    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "no such file; pass the path of a local Keras .h5 file.")
    if not is_hdf5(path):
        raise WeightsError(
            path,
            "not an HDF5 file (bad signature); expected a Keras .h5 weights file such as "
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5. PyTorch files "
            "(.pth/.pt/.pth.tar) are read when the source framework is 'torch'.",
        )
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(
            path, f"cannot be opened as HDF5 ({e}); the file is probably truncated — copy it again."
        ) from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            if "layers" in root:
                raise WeightsError(
                    path,
                    "this is a Keras 3 '.weights.h5' file, which stores no layer or weight "
                    "names; re-save it from tf-keras/Keras 2 with model.save_weights('x.h5') "
                    "(legacy HDF5 layout).",
                )
            raise WeightsError(
                path, "HDF5 file without a 'layer_names' attribute: not a Keras weights file."
            )
        keras_version = _text(root.attrs.get("keras_version", ""))
        layers: dict[str, dict[str, np.ndarray]] = {}
        full_names: dict[tuple[str, str], str] = {}
        for raw_layer in root.attrs["layer_names"]:
            layer = _text(raw_layer)
            try:
                group = root[layer]
                weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
            except (KeyError, OSError) as e:
                raise WeightsError(
                    path, f"layer {layer!r} is listed but cannot be read ({e}); truncated file?"
                ) from None
            if not weight_names:
                continue
            arrays: dict[str, np.ndarray] = {}
            for weight_name in weight_names:
                short = short_weight_name(layer, weight_name)
                try:
                    arrays[short] = np.asarray(group[weight_name][()])
                except (KeyError, OSError) as e:
                    raise WeightsError(
                        path,
                        f"tensor {weight_name!r} of layer {layer!r} cannot be read ({e}); "
                        "the file is truncated or corrupt — copy it again.",
                    ) from None
                full_names[(layer, short)] = weight_name
            layers[layer] = arrays
    return KerasWeights(path, layers, full_names, keras_version)
