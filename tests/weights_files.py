"""Small hand-made weight files for the error and round-trip tests (no TensorFlow needed).

They are written with h5py / torch.save from the shapes of our own encoders and the name
tables, so they are only as right as those tables; `test_weights_parity.py` is what checks
the tables against files written by the real frameworks. Here the point is cheap, valid
files to break in controlled ways.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from qatacov_jax.models import ENCODER_ARCHITECTURES
from qatacov_jax.weights.port import encoder_spec
from qatacov_jax.weights.tables import MODULES

# Keras layer names that differ from our attribute names ('/' became '_').
_KERAS_SLASH_NAMES = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn"}
_KERAS_WEIGHT = {"kernel": "kernel", "scale": "gamma", "bias": "beta", "mean": "moving_mean",
                 "var": "moving_variance"}  # fmt: skip
_KERAS_ORDER = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def random_weights(encoder: str, seed: int) -> dict[tuple[str, ...], np.ndarray]:
    """Random float32 arrays for every variable of `encoder`, keyed (module, variable), in the
    reference framework's layer order; BN variances are positive."""
    rng = np.random.default_rng(seed)
    shapes, _ = encoder_spec(encoder)
    order = {m: i for i, m in enumerate(MODULES[ENCODER_ARCHITECTURES[encoder]]())}
    out = {}
    for key in sorted(shapes, key=lambda k: order[k[0]]):
        shape = shapes[key]
        # Kernels scaled by fan-in so activations stay O(1) through ~50 layers in eval mode.
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        a = rng.normal(0.0, 0.05 if len(shape) == 1 else 1.0 / np.sqrt(fan_in), shape)
        if key == ("bn_data", "mean"):  # ResNet-50 normalises raw 0..255 BGR pixels itself
            a = rng.uniform(100.0, 130.0, shape)
        elif key == ("bn_data", "var"):
            a = rng.uniform(3000.0, 5000.0, shape)
        elif key[-1] == "var":
            a = rng.uniform(0.5, 1.5, shape)
        elif key[-1] == "scale":
            a = rng.uniform(0.6, 1.4, shape)
        out[key] = a.astype(np.float32)
    return out


def write_keras_h5(
    path: Path,
    weights: dict[tuple[str, ...], np.ndarray],
    *,
    extra_layers: dict[str, dict[str, np.ndarray]] | None = None,
    full_model: bool = False,
) -> Path:
    """Writes `weights` in the Keras `save_weights` layout (or under `model_weights`, as
    `model.save` does, with `full_model`). Layers keep the order of `weights`."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for (module, variable), array in weights.items():
        layer = _KERAS_SLASH_NAMES.get(module, module)
        bn = any(k[0] == module and k[1] in ("mean", "var") for k in weights)
        name = _KERAS_WEIGHT[variable] if bn else variable
        layers.setdefault(layer, {})[name] = array
    layers.update(extra_layers or {})
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["keras_version"] = np.bytes_("2.21.0")
        root.attrs["backend"] = np.bytes_("tensorflow")
        root.attrs["layer_names"] = np.array([n.encode() for n in ["input_1", *layers]])
        root.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S")
        for layer, arrays in layers.items():
            group = root.create_group(layer)
            names = sorted(arrays, key=lambda n: _KERAS_ORDER.index(n) if n in _KERAS_ORDER else 9)
            full = [f"{layer}/{n}:0" for n in names]
            for n, fn in zip(names, full, strict=True):
                group.create_dataset(fn, data=arrays[n])
            group.attrs["weight_names"] = np.array([s.encode() for s in full])
    return path


def torchvision_densenet_state(seed: int) -> dict[str, np.ndarray]:
    """A torchvision-style DenseNet-121 state dict (OIHW kernels, 1000-way classifier)."""
    w = random_weights("densenet121", seed)
    state: dict[str, np.ndarray] = {}

    def conv(key: str, module: str) -> None:
        state[f"{key}.weight"] = np.ascontiguousarray(w[(module, "kernel")].transpose(3, 2, 0, 1))

    def bn(key: str, module: str) -> None:
        for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                             ("var", "running_var")):  # fmt: skip
            state[f"{key}.{theirs}"] = w[(module, ours)]

    conv("features.conv0", "conv1_conv")
    bn("features.norm0", "conv1_bn")
    for block, layers in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, layers + 1):
            p, m = f"features.denseblock{block}.denselayer{i}", f"conv{block + 1}_block{i}"
            bn(f"{p}.norm1", f"{m}_0_bn")
            conv(f"{p}.conv1", f"{m}_1_conv")
            bn(f"{p}.norm2", f"{m}_1_bn")
            conv(f"{p}.conv2", f"{m}_2_conv")
        if block < 4:
            bn(f"features.transition{block}.norm", f"pool{block + 1}_bn")
            conv(f"features.transition{block}.conv", f"pool{block + 1}_conv")
    bn("features.norm5", "bn")
    state["classifier.weight"] = np.zeros((1000, 1024), np.float32)
    state["classifier.bias"] = np.zeros((1000,), np.float32)
    return state


def save_torch(path: Path, state: dict[str, np.ndarray], *, wrap: bool = False) -> Path:
    import torch

    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    torch.save({"state_dict": tensors} if wrap else tensors, path)
    return path
