"""Porting and loading: bad files, overwrite safety, manifests, loading rules, the script.

Every bad-file error must name the file and the first offending tensor and leave nothing
behind. Files are small hand-made ones (`weights_files.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import weights_files as wf
from flax import nnx

from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.models import FrozenParam, create_model, encoder_preprocessing
from qatacov_jax.weights import (
    WeightsError,
    load_encoder_weights,
    port,
    read_manifest,
    weights_preprocessing,
)
from qatacov_jax.weights.port import abstract_encoder
from qatacov_jax.weights.tables import keras_layer_modules
from qatacov_jax.weights.torch_state import normalise_key


@pytest.fixture(scope="module")
def dn_weights() -> dict[tuple[str, ...], np.ndarray]:
    return wf.random_weights("densenet121", seed=5)


@pytest.fixture(scope="module")
def dn_h5(tmp_path_factory, dn_weights) -> Path:
    return wf.write_keras_h5(tmp_path_factory.mktemp("h5") / "densenet121.h5", dn_weights)


@pytest.fixture(scope="module")
def dn_ported(tmp_path_factory, dn_h5) -> Path:
    return port(dn_h5, "densenet121", tmp_path_factory.mktemp("ported") / "dn")


def assert_refused(src: Path, encoder: str, tmp_path: Path, *needles: str) -> WeightsError:
    """Porting `src` fails with a WeightsError naming the file and `needles`, and leaves no
    output directory and no temporary directory beside it."""
    out = tmp_path / "out"
    with pytest.raises(WeightsError) as info:
        port(src, encoder, out)
    message = str(info.value)
    assert str(src) in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return info.value


# ---------------------------------------------------------------- bad files


def test_non_hdf5_file(tmp_path):
    src = tmp_path / "densenet121.h5"
    src.write_text("<html>404 Not Found</html>")
    assert_refused(src, "densenet121", tmp_path, "not an HDF5 file")


def test_truncated_hdf5_file(tmp_path, dn_h5):
    src = tmp_path / "truncated.h5"
    data = dn_h5.read_bytes()
    src.write_bytes(data[: len(data) * 6 // 10])
    assert_refused(src, "densenet121", tmp_path, "truncated")


def test_keras3_weights_file(tmp_path):
    import h5py

    src = tmp_path / "model.weights.h5"
    with h5py.File(src, "w") as f:
        f.create_group("layers").create_group("dense").create_group("vars")
    assert_refused(src, "densenet121", tmp_path, "Keras 3", "save_weights")


def test_inception_layers_map_by_creation_rank():
    """Keras numbers auto-named layers per session; only their order is meaningful."""
    session = ["conv2d", "batch_normalization", "conv2d_1", "conv2d_10", "conv2d_2"]
    assert keras_layer_modules("inceptionv3", session) == {
        "conv2d": "conv2d_1",
        "conv2d_1": "conv2d_2",
        "conv2d_2": "conv2d_3",
        "conv2d_10": "conv2d_4",
        "batch_normalization": "batch_normalization_1",
    }
    old_keras = ["conv2d_95", "conv2d_96", "batch_normalization_95", "mixed0"]
    assert keras_layer_modules("inceptionv3", old_keras) == {
        "conv2d_95": "conv2d_1",
        "conv2d_96": "conv2d_2",
        "batch_normalization_95": "batch_normalization_1",
    }


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.h5", "densenet121", tmp_path, "no such file")


def test_resnet_file_given_as_densenet(tmp_path):
    src = wf.write_keras_h5(tmp_path / "resnet50.h5", wf.random_weights("resnet50", seed=1))
    err = assert_refused(src, "densenet121", tmp_path, "'bn_data/", "resnet50")
    assert "unexpected tensor" in err.reason


def test_keras_missing_tensor(tmp_path, dn_weights):
    weights = {k: v for k, v in dn_weights.items() if k != ("conv3_block2_1_bn", "var")}
    src = wf.write_keras_h5(tmp_path / "dn.h5", weights)
    assert_refused(src, "densenet121", tmp_path, "missing tensor", "conv3_block2_1_bn.var")


def test_keras_misshaped_tensor(tmp_path, dn_weights):
    weights = dict(dn_weights)
    weights[("pool3_conv", "kernel")] = np.zeros((1, 1, 512, 128), np.float32)
    src = wf.write_keras_h5(tmp_path / "dn.h5", weights)
    assert_refused(src, "densenet121", tmp_path, "'pool3_conv/kernel:0'", "(1, 1, 512, 128)")


def test_keras_unexpected_layer(tmp_path, dn_weights):
    extra = {"conv2_block1_3_conv": {"kernel": np.zeros((1, 1, 4, 4), np.float32)}}
    src = wf.write_keras_h5(tmp_path / "dn.h5", dn_weights, extra_layers=extra)
    assert_refused(
        src, "densenet121", tmp_path, "unexpected tensor", "conv2_block1_3_conv/kernel:0"
    )


def test_torch_state_dict_errors(tmp_path):
    state = wf.torchvision_densenet_state(seed=6)
    key = "features.denseblock2.denselayer3.conv2.weight"

    missing = {k: v for k, v in state.items() if k != key}
    src = wf.save_torch(tmp_path / "missing.pth", missing)
    assert_refused(src, "densenet121", tmp_path, "missing tensor", "conv3_block3_2_conv.kernel")

    misshaped = dict(state, **{key: np.zeros((32, 128, 1, 1), np.float32)})
    src = wf.save_torch(tmp_path / "misshaped.pth", misshaped)
    assert_refused(src, "densenet121", tmp_path, repr(key), "(1, 1, 128, 32)")

    extra = dict(state, **{"features.denseblock1.denselayer1.conv3.weight": state[key]})
    src = wf.save_torch(tmp_path / "extra.pth", extra)
    assert_refused(src, "densenet121", tmp_path, "unexpected tensor", "denselayer1.conv3.weight")

    src = wf.save_torch(tmp_path / "densenet.pth", state)
    assert_refused(src, "resnet50", tmp_path, "PyTorch files are supported for DenseNet-121")


def test_corrupt_torch_file(tmp_path):
    src = tmp_path / "model.pth.tar"
    src.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_refused(src, "chexnet", tmp_path, "cannot be read by torch.load")


def test_old_style_and_wrapped_torch_keys():
    assert (
        normalise_key("module.densenet121.features.denseblock1.denselayer12.norm.1.running_var")
        == "features.denseblock1.denselayer12.norm1.running_var"
    )
    assert normalise_key("module.densenet121.classifier.0.weight") == "classifier.0.weight"
    assert normalise_key("features.transition1.norm.weight") == "features.transition1.norm.weight"


# ---------------------------------------------------------------- output safety and manifest


def test_existing_output_is_kept_unless_overwrite(tmp_path, dn_h5, dn_weights):
    out = port(dn_h5, "densenet121", tmp_path / "dn")
    before = (out / "manifest.json").read_text()
    with pytest.raises(WeightsError, match="already exists"):
        port(dn_h5, "chexnet", out)
    bad = tmp_path / "bad.h5"
    bad.write_text("junk")
    with pytest.raises(WeightsError):
        port(bad, "densenet121", out, overwrite=True)
    assert (out / "manifest.json").read_text() == before  # a failed overwrite keeps the old
    other = wf.write_keras_h5(tmp_path / "other.h5", dn_weights, full_model=True)
    port(other, "chexnet", out, overwrite=True)
    manifest = read_manifest(out)
    assert manifest.encoder == "chexnet" and manifest.source["file_name"] == "other.h5"
    # Nothing left but the outputs and the writer's lock file beside --out.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".dn.qatacov.lock",
        "bad.h5",
        "dn",
        "other.h5",
    ]


def test_manifest_records_source_and_preprocessing(dn_ported, dn_h5):
    raw = json.loads((dn_ported / "manifest.json").read_text())
    assert raw["format"] == "qatacov-jax-encoder-weights"
    assert raw["source"]["framework"] == "keras" and raw["source"]["file_name"] == dn_h5.name
    assert len(raw["source"]["sha256"]) == 64
    assert Preprocessing.from_dict(raw["preprocessing"]) == encoder_preprocessing("densenet121")
    assert raw["num_tensors"] == 604 and raw["dropped"] == []


def test_preprocessing_override(tmp_path, dn_h5):
    out = port(dn_h5, "densenet121", tmp_path / "dn", preprocessing=Preprocessing.from_mode("tf"))
    assert read_manifest(out).preprocessing.mode == "tf"


# ---------------------------------------------------------------- loading


def test_load_fills_every_variable_and_returns_preprocessing(dn_ported, dn_weights):
    enc = abstract_encoder("densenet121")
    pre = load_encoder_weights(enc, dn_ported)
    assert pre == encoder_preprocessing("densenet121")
    np.testing.assert_array_equal(enc.conv1_conv.kernel.value, dn_weights[("conv1_conv", "kernel")])
    np.testing.assert_array_equal(
        enc.conv4_block7_1_bn.var.value, dn_weights[("conv4_block7_1_bn", "var")]
    )
    np.testing.assert_array_equal(enc.bn.mean.value, dn_weights[("bn", "mean")])


def test_load_into_frozen_model_encoder(dn_ported, dn_weights):
    model = nnx.eval_shape(
        lambda: create_model("unet", "densenet121", frozen=True, rngs=nnx.Rngs(0))
    )
    load_encoder_weights(model.encoder, dn_ported)
    assert isinstance(model.encoder.pool2_conv.kernel, FrozenParam)
    np.testing.assert_array_equal(
        model.encoder.pool2_conv.kernel.value, dn_weights[("pool2_conv", "kernel")]
    )


def test_load_refuses_other_architecture(dn_ported):
    with pytest.raises(WeightsError, match="not densenet121") as info:
        load_encoder_weights(abstract_encoder("resnet50"), dn_ported)
    assert str(dn_ported) in str(info.value)


def test_weights_preprocessing_checks_encoder(dn_ported, tmp_path):
    assert weights_preprocessing("chexnet", dn_ported).mode == "torch"
    assert weights_preprocessing("inceptionv3", None) == encoder_preprocessing("inceptionv3")
    with pytest.raises(WeightsError, match="config's encoder is 'resnet50'"):
        weights_preprocessing("resnet50", dn_ported)
    with pytest.raises(WeightsError, match="port_weights.py"):
        weights_preprocessing("densenet121", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="manifest.json"):
        load_encoder_weights(abstract_encoder("densenet121"), tmp_path / "empty")


# ---------------------------------------------------------------- script


def test_port_weights_script(tmp_path, dn_h5, capsys):
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "port_weights.py"
    spec = importlib.util.spec_from_file_location("port_weights", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ported"
    assert module.main([str(dn_h5), "--encoder", "chexnet", "--out", str(out)]) == 0
    assert "Ported 604 tensors" in capsys.readouterr().out
    assert read_manifest(out).encoder == "chexnet"
    assert module.main([str(dn_h5), "--encoder", "chexnet", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_training_config_loads_ported_weights_and_their_preprocessing(dn_ported):
    """config.model.encoder_weights -> the training model's encoder holds the ported values,
    and the pipeline gets the manifest's preprocessing; weights of another architecture are
    refused before any model is built."""
    import jax

    from configs import default
    from qatacov_jax.training import factory
    from qatacov_jax.weights import abstract_encoder, read_manifest

    config = default.variant("unet", "densenet121")
    config.model.encoder_weights = str(dn_ported)
    model, prep = factory.build_model(config, seed=0)
    assert prep == read_manifest(dn_ported).preprocessing
    expected = abstract_encoder("densenet121")
    load_encoder_weights(expected, dn_ported)
    got = jax.tree.leaves(nnx.state(model.encoder))
    want = jax.tree.leaves(nnx.state(expected))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))

    config.model.encoder = "resnet50"
    with pytest.raises(WeightsError, match="densenet121"):
        factory.build_model(config, seed=0)
    config.model.encoder_weights = str(dn_ported.parent / "missing")
    with pytest.raises(FileNotFoundError, match="port_weights.py"):
        factory.build_model(config, seed=0)
