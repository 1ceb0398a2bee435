"""Reference models for the weight-parity tests, built with the original frameworks.

Each builder returns a randomly initialised reference model whose BatchNorm statistics (and
gamma/beta) are perturbed away from their init values — at init, moving mean 0 / variance 1
make BN almost an identity, so a port that dropped or swapped them would still pass — plus a
function giving the 5 encoder skip features (finest first, NHWC NumPy) in inference mode.
Taps follow docs/original_models.md, "Encoder skip taps" (segmentation_models' feature layers).

tf-keras / segmentation_models / image-classifiers and torch / torchvision are test-only
extras; they are imported inside the builders so that collecting tests stays cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Must be set before TensorFlow / segmentation_models are first imported (they read them
# once, at import), hence at module level rather than through a test's `monkeypatch`.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FeatureFn = Callable[[np.ndarray], list[np.ndarray]]

DENSENET_TAPS = ("conv1/relu", "pool2_conv", "pool3_conv", "pool4_conv", "relu")
RESNET50_TAPS = ("relu0", "stage2_unit1_relu1", "stage3_unit1_relu1", "stage4_unit1_relu1", "relu1")
# segmentation_models 1.0.1 taps Inception-v3 by layer index (its own table); bottom = output.
INCEPTIONV3_TAP_INDICES = (9, 16, 86, 228)


def _keras():
    import tf_keras

    return tf_keras


def _keras_submodules() -> dict[str, Any]:
    keras = _keras()
    return {
        "backend": keras.backend,
        "layers": keras.layers,
        "models": keras.models,
        "utils": keras.utils,
    }


def perturb_keras_batchnorm(model: Any, seed: int) -> None:
    """Random gamma/beta/moving statistics in every BatchNormalization layer of `model`."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        new = []
        for w in layer.weights:
            name, shape = w.name.split("/")[-1].split(":")[0], tuple(w.shape)
            if name == "gamma":
                new.append(rng.uniform(0.6, 1.4, shape))
            elif name == "beta":
                new.append(rng.normal(0.0, 0.2, shape))
            elif name == "moving_mean":
                new.append(rng.normal(0.0, 0.2, shape))
            elif name == "moving_variance":
                new.append(rng.uniform(0.5, 2.0, shape))
            else:
                raise AssertionError(f"unexpected BN weight {w.name}")
        layer.set_weights([a.astype(np.float32) for a in new])


def _keras_feature_fn(model: Any, outputs: list[Any]) -> FeatureFn:
    keras = _keras()
    features = keras.Model(model.inputs, outputs)

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(f) for f in features(x, training=False)]

    return run


def keras_densenet121(*, seed: int) -> tuple[Any, FeatureFn]:
    """keras.applications DenseNet121(weights=None, include_top=False)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = keras.applications.DenseNet121(
        weights=None, include_top=False, input_shape=(None, None, 3)
    )
    perturb_keras_batchnorm(model, seed)
    taps = [model.get_layer(n).output for n in DENSENET_TAPS]
    return model, _keras_feature_fn(model, taps)


def keras_chexnet(densenet: Any) -> Any:
    """CheXNet-Keras' model on top of a `keras_densenet121` model (sharing its weights):
    global average pooling of `bn` + Dense(14, sigmoid, name='predictions').

    The pooling reads `bn` directly, as in the old Keras CheXNet was built with, so the
    final `relu` layer is not part of the model and not in its saved `layer_names`.
    """
    keras = _keras()
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(densenet.get_layer("bn").output)
    out = keras.layers.Dense(14, activation="sigmoid", name="predictions")(pooled)
    return keras.Model(densenet.inputs, out)


def keras_inceptionv3(*, seed: int) -> tuple[Any, FeatureFn]:
    """segmentation_models' Inception-v3 backbone ('same' padding, BN scale=False)."""
    from segmentation_models.backbones.inception_v3 import InceptionV3

    _keras().utils.set_random_seed(seed)
    model = InceptionV3(
        input_shape=(None, None, 3), weights=None, include_top=False, **_keras_submodules()
    )
    perturb_keras_batchnorm(model, seed)
    taps = [model.layers[i].output for i in INCEPTIONV3_TAP_INDICES] + [model.output]
    return model, _keras_feature_fn(model, taps)


def keras_resnet50(*, seed: int) -> tuple[Any, FeatureFn]:
    """classification_models' (image-classifiers) pre-activation ResNet-50."""
    from classification_models.models.resnet import ResNet50

    _keras().utils.set_random_seed(seed)
    model = ResNet50(
        input_shape=(None, None, 3), weights=None, include_top=False, **_keras_submodules()
    )
    perturb_keras_batchnorm(model, seed)
    taps = [model.get_layer(n).output for n in RESNET50_TAPS]
    return model, _keras_feature_fn(model, taps)


def rewrite_keras_h5(
    src: Path,
    dst: Path,
    *,
    keras_version: str | None = None,
    strip_weight_suffix: bool = False,
) -> None:
    """Copies a Keras weights file into the legacy layout written by hand with h5py.

    Used to imitate files from older Keras versions: a different `keras_version`, weight
    names without the TF ':0' suffix, byte-string attributes.
    """
    import h5py

    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for key, value in fin.attrs.items():
            fout.attrs[key] = value
        if keras_version is not None:
            fout.attrs["keras_version"] = np.bytes_(keras_version)
        names = [n.decode() if isinstance(n, bytes) else n for n in fin.attrs["layer_names"]]
        fout.attrs["layer_names"] = np.array([n.encode() for n in names])
        for layer in names:
            group = fout.create_group(layer) if layer not in fout else fout[layer]
            weight_names = [
                w.decode() if isinstance(w, bytes) else w
                for w in fin[layer].attrs.get("weight_names", [])
            ]
            out_names = []
            for w in weight_names:
                new = w.split(":")[0] if strip_weight_suffix else w
                group.create_dataset(new, data=fin[layer][w][()])
                out_names.append(new.encode())
            group.attrs["weight_names"] = np.array(out_names, dtype="S")


# ---- PyTorch ----


def perturb_torch_batchnorm(model: Any, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.8 + 0.6)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)


def torch_densenet121(*, seed: int, chexnet_head: bool = False) -> tuple[Any, FeatureFn]:
    """torchvision densenet121(weights=None) in eval mode; with `chexnet_head` its classifier
    is arnoweng/CheXNet's `Sequential(Linear(1024, 14), Sigmoid())`."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.densenet121(weights=None)
    if chexnet_head:
        model.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    perturb_torch_batchnorm(model, seed)
    model.eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        feats = []
        h = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            for name, child in model.features.named_children():
                if name.startswith("transition"):
                    h = child.conv(child.relu(child.norm(h)))
                    feats.append(h)
                    h = child.pool(h)
                    continue
                h = child(h)
                if name == "relu0":
                    feats.append(h)
            feats.append(torch.relu(h))
        return [f.numpy().transpose(0, 2, 3, 1) for f in feats]

    return model, run


_NEW_DENSE_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")


def chexnet_checkpoint(model: Any) -> dict[str, Any]:
    """arnoweng/CheXNet's `model.pth.tar` layout for a torchvision DenseNet-121: the model
    wrapped as `.densenet121` inside `nn.DataParallel` (keys `module.densenet121.*`), old
    torchvision `norm.1` / `conv.2` key spelling, and the state dict under 'state_dict'."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # torch 0.3 (CheXNet's) had no such buffer
        state["module.densenet121." + _NEW_DENSE_KEY.sub(r"\1.\2.", key)] = value
    return {"epoch": 7, "arch": "densenet121", "best_loss": 0.1, "state_dict": state}


def save_torch_densenet121_files(seed: int, x: np.ndarray, out_dir: Path) -> dict[str, Path]:
    """Writes a perturbed torchvision DenseNet-121 as `densenet121-random.pth` (state dict)
    and, with CheXNet's head swapped in, as CheXNet's `model.pth.tar`; plus its 5 features
    on `x` as `feature_{i}.npy`. Returns the file paths by kind."""
    import torch

    model, features = torch_densenet121(seed=seed)
    files = {
        "torchvision": out_dir / "densenet121-random.pth",
        "chexnet": out_dir / "model.pth.tar",
    }
    torch.save(model.state_dict(), files["torchvision"])
    model.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    # CheXNet's file dates from torch 0.3: the pre-zip (legacy pickle) serialization.
    torch.save(chexnet_checkpoint(model), files["chexnet"], _use_new_zipfile_serialization=False)
    for i, f in enumerate(features(x)):
        np.save(out_dir / f"feature_{i}.npy", f)
    return files


def torch_densenet121_in_subprocess(seed: int, x: np.ndarray, out_dir: Path) -> dict[str, Path]:
    """`save_torch_densenet121_files` in a fresh Python process.

    Importing torchvision into a process that has already loaded TensorFlow segfaults
    (torchvision 0.29 + tensorflow-cpu 2.21, seen here), and in a shared pytest worker
    another test may have imported TensorFlow first; a subprocess sidesteps the clash.
    """
    import subprocess
    import sys

    np.save(out_dir / "input.npy", x)
    code = (
        "import sys, numpy as np; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "import reference_models as r; d = Path(sys.argv[2]);"
        "r.save_torch_densenet121_files(int(sys.argv[3]), np.load(d / 'input.npy'), d)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(out_dir), str(seed)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"torch reference subprocess failed:\n{result.stderr[-4000:]}")
    return {"torchvision": out_dir / "densenet121-random.pth", "chexnet": out_dir / "model.pth.tar"}
