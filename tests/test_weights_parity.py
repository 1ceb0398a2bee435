"""Parity of ported encoder weights with the reference frameworks.

For every encoder and every user-facing file format: build the reference model with random
weights and perturbed BatchNorm statistics, save it the way users hold such files, port the
file, run both in inference mode on the same input, and compare all 5 skip features:
max |ours - ref| <= 1e-4 * max |ref| (float32, highest matmul precision).

Cost control: reference models are built once per module, and our encoders are built
abstractly (`nnx.eval_shape`), filled by `load_encoder_weights` and run through one jitted
function per architecture, so each architecture compiles once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
import reference_models as ref
from flax import nnx

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models import ENCODER_ARCHITECTURES, encoder_preprocessing
from qatacov_jax.weights import load_encoder_weights, port, read_manifest
from qatacov_jax.weights.port import abstract_encoder

RTOL = 1e-4


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """(2, 64, 64, 3) float32 input shared by the reference and our encoder."""
    return np.random.default_rng(0).normal(0.0, 1.0, (2, 64, 64, 3)).astype(np.float32)


def _forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> list[jax.Array]:
    return nnx.merge(graphdef, state)(x)


_forward_jit = jax.jit(_forward, static_argnums=0)


class Ours:
    """Our encoders, one abstract module per architecture, refilled for every ported dir."""

    def __init__(self) -> None:
        self.encoders: dict[str, nnx.Module] = {}

    def encoder(self, name: str) -> nnx.Module:
        arch = ENCODER_ARCHITECTURES[name]
        if arch not in self.encoders:
            enc = abstract_encoder(name)
            enc.eval()
            self.encoders[arch] = enc
        return self.encoders[arch]

    def load(self, name: str, ported: Path) -> tuple[nnx.Module, Preprocessing]:
        enc = self.encoder(name)
        return enc, load_encoder_weights(enc, ported)

    @staticmethod
    def run(enc: nnx.Module, x: np.ndarray) -> list[np.ndarray]:
        graphdef, state = nnx.split(enc)
        with jax.default_matmul_precision("highest"):
            return [np.asarray(f) for f in _forward_jit(graphdef, state, x)]

    def features(self, name: str, ported: Path, x: np.ndarray) -> list[np.ndarray]:
        enc, _ = self.load(name, ported)
        return self.run(enc, x)


@pytest.fixture(scope="module")
def ours() -> Ours:
    return Ours()


def relative_errors(ours: list[np.ndarray], theirs: list[np.ndarray]) -> list[float]:
    assert len(ours) == len(theirs) == 5
    errors = []
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.shape == b.shape, f"feature {i}: ours {a.shape} vs reference {b.shape}"
        errors.append(float(np.abs(a - b).max() / np.abs(b).max()))
    return errors


def assert_parity(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    errors = relative_errors(ours, theirs)
    assert max(errors) <= RTOL, f"relative max errors per skip feature: {errors}"


def check_manifest(out: Path, src: Path, *, encoder: str, framework: str, eps: float) -> dict:
    manifest = read_manifest(out)
    assert manifest.encoder == encoder
    assert manifest.architecture == ENCODER_ARCHITECTURES[encoder]
    assert manifest.source["framework"] == framework
    assert manifest.source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert manifest.preprocessing == encoder_preprocessing(encoder)
    assert manifest.source_bn_epsilon == pytest.approx(eps, rel=1e-9)
    return manifest.to_dict()


# ---------------------------------------------------------------- Keras DenseNet-121 / CheXNet


@pytest.fixture(scope="module")
def keras_densenet(tmp_path_factory, x):
    """A perturbed keras.applications DenseNet121, its features on `x`, and its files."""
    model, features = ref.keras_densenet121(seed=1)
    d = tmp_path_factory.mktemp("keras_densenet")
    files = {"save_weights": d / "densenet121_random.h5"}
    model.save_weights(files["save_weights"])
    # keras.applications' notop files come from old Keras: imitate its attributes and
    # weight names without the TF ':0' suffix, written by hand rather than by tf-keras.
    files["legacy_notop"] = d / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ref.rewrite_keras_h5(
        files["save_weights"],
        files["legacy_notop"],
        keras_version="2.1.3",
        strip_weight_suffix=True,
    )
    files["chexnet"] = d / "brucechou1983_CheXNet_Keras_0.3.0_weights.h5"
    ref.keras_chexnet(model).save_weights(files["chexnet"])
    return files, features(x)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["save_weights", "legacy_notop"])
def test_keras_densenet121_parity(keras_densenet, ours, x, tmp_path, layout):
    files, reference = keras_densenet
    out = port(files[layout], "densenet121", tmp_path / "dn")
    check_manifest(out, files[layout], encoder="densenet121", framework="keras", eps=1.001e-5)
    assert_parity(ours.features("densenet121", out, x), reference)


@pytest.mark.slow
def test_chexnet_keras_h5_parity_without_final_relu(keras_densenet, ours, x, tmp_path):
    files, reference = keras_densenet
    with h5py.File(files["chexnet"]) as f:
        layer_names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    assert "relu" not in layer_names and "predictions" in layer_names  # the old-Keras layout
    out = port(files["chexnet"], "chexnet", tmp_path / "chexnet")
    manifest = check_manifest(
        out, files["chexnet"], encoder="chexnet", framework="keras", eps=1.001e-5
    )
    assert sorted(manifest["dropped"]) == ["predictions/bias:0", "predictions/kernel:0"]
    assert any("classification head" in n for n in manifest["notes"])
    assert_parity(ours.features("chexnet", out, x), reference)


@pytest.mark.slow
def test_parity_check_fails_when_batchnorm_statistics_are_ignored(
    keras_densenet, ours, x, tmp_path
):
    """The tolerance is tight enough that a port keeping init BN statistics would fail."""
    files, reference = keras_densenet
    out = port(files["save_weights"], "densenet121", tmp_path / "dn")
    enc, _ = ours.load("densenet121", out)
    for _, module in enc.iter_modules():
        if isinstance(module, nnx.BatchNorm):
            module.mean.value = jax.numpy.zeros_like(module.mean.value)
            module.var.value = jax.numpy.ones_like(module.var.value)
    errors = relative_errors(ours.run(enc, x), reference)
    assert min(errors) > 100 * RTOL, errors


# ---------------------------------------------------------------- PyTorch DenseNet-121 / CheXNet


@pytest.fixture(scope="module")
def torch_densenet(tmp_path_factory, x):
    """A perturbed torchvision densenet121 saved as a state dict and as CheXNet's
    `model.pth.tar`, plus its features on `x` (built in a subprocess, see reference_models)."""
    import torch

    d = tmp_path_factory.mktemp("torch_densenet")
    files = ref.torch_densenet121_in_subprocess(2, x, d)
    checkpoint = torch.load(files["chexnet"], weights_only=True)
    assert (
        "module.densenet121.features.denseblock1.denselayer1.norm.1.weight"
        in (checkpoint["state_dict"])
    )
    return files, [np.load(d / f"feature_{i}.npy") for i in range(5)]


@pytest.mark.slow
def test_torchvision_densenet121_state_dict_parity(torch_densenet, ours, x, tmp_path):
    files, reference = torch_densenet
    out = port(files["torchvision"], "densenet121", tmp_path / "tv")
    manifest = check_manifest(
        out, files["torchvision"], encoder="densenet121", framework="torch", eps=1e-5
    )
    assert sorted(manifest["dropped"]) == ["classifier.bias", "classifier.weight"]
    assert any("epsilon" in n for n in manifest["notes"])  # torch 1e-5 vs Keras 1.001e-5
    assert_parity(ours.features("densenet121", out, x), reference)


@pytest.mark.slow
def test_chexnet_pytorch_pth_tar_parity(torch_densenet, ours, x, tmp_path):
    files, reference = torch_densenet
    out = port(files["chexnet"], "chexnet", tmp_path / "chexnet")
    manifest = check_manifest(out, files["chexnet"], encoder="chexnet", framework="torch", eps=1e-5)
    assert sorted(manifest["dropped"]) == ["classifier.0.bias", "classifier.0.weight"]
    assert_parity(ours.features("chexnet", out, x), reference)


# ---------------------------------------------------------------- Inception-v3, ResNet-50 (Keras)


@pytest.mark.slow
def test_inceptionv3_keras_h5_parity(ours, x, tmp_path):
    model, features = ref.keras_inceptionv3(seed=3)
    src = tmp_path / "inception_v3_random.h5"
    model.save_weights(src)
    out = port(src, "inceptionv3", tmp_path / "inc")
    check_manifest(out, src, encoder="inceptionv3", framework="keras", eps=1e-3)
    assert_parity(ours.features("inceptionv3", out, x), features(x))


@pytest.mark.slow
def test_resnet50_keras_h5_parity(ours, x, tmp_path):
    model, features = ref.keras_resnet50(seed=4)
    src = tmp_path / "resnet50_random.h5"
    model.save_weights(src)
    out = port(src, "resnet50", tmp_path / "res")
    check_manifest(out, src, encoder="resnet50", framework="keras", eps=2e-5)
    assert_parity(ours.features("resnet50", out, x), features(x))
