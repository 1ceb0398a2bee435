"""Whole-model numerical parity with the original Keras `segmentation_models` 1.0.1 models.

The weight-parity tests check the encoders' features; this checks what sits on
top: decoder wiring (concatenation order, nearest upsampling, skip taps), the FPN pyramid
with its bilinear upsampling, and the 3x3 head. A Keras `Unet` / `FPN` on the ResNet-50
backbone (with random, perturbed BatchNorm statistics) has every weight copied by layer name
into our model; both run in inference mode on the same random input and must give the same
logits. Slow: it imports TensorFlow and builds both models.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from flax import nnx
from reference_models import _keras, perturb_keras_batchnorm

from qatacov_jax.models import create_model

SIZE = 64


def our_path(keras_name: str) -> tuple[str, ...]:
    """Our module path for a Keras layer name of `Unet`/`FPN` on a ResNet-50 backbone."""
    if keras_name in ("final_conv", "head_conv"):
        return ("final_conv",)
    if m := re.fullmatch(r"decoder_stage(\d)([ab])_(conv|bn)", keras_name):
        return ("decoder", f"decoder_stage{m[1]}", {"a": "conv1", "b": "conv2"}[m[2]], m[3])
    if m := re.fullmatch(r"fpn_stage_p(\d)_(pre_conv|conv)", keras_name):
        return ("decoder", f"fpn_stage_p{m[1]}", m[2])
    if m := re.fullmatch(r"segm_stage(\d)([ab])_(conv|bn)", keras_name):
        return ("decoder", f"segm_stage{m[1]}", f"conv_{m[2]}", m[3])
    if m := re.fullmatch(r"final_stage_(conv|bn)", keras_name):
        return ("decoder", "final_stage", m[1])
    return ("encoder", keras_name)


def copy_keras_weights(keras_model, model: nnx.Module) -> int:
    """Copies every weighted Keras layer into the module at `our_path`; returns the count."""
    keras = _keras()
    copied = 0
    for layer in keras_model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        target = model
        for part in our_path(layer.name):
            target = getattr(target, part)
        if isinstance(layer, keras.layers.BatchNormalization):
            assert isinstance(target, nnx.BatchNorm), layer.name
            names = (["scale"] if layer.scale else []) + (["bias"] if layer.center else [])
            names += ["mean", "var"]
        else:
            assert isinstance(target, nnx.Conv), layer.name
            names = ["kernel", "bias"] if layer.use_bias else ["kernel"]
        assert len(names) == len(weights), layer.name
        for name, value in zip(names, weights, strict=True):
            variable = getattr(target, name)
            assert variable.shape == value.shape, (layer.name, name)
            variable.set_value(np.asarray(value, np.float32))
        copied += 1
    return copied


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "fpn"])
def test_resnet50_model_matches_keras(arch):
    import segmentation_models as sm

    build = {"unet": sm.Unet, "fpn": sm.FPN}[arch]
    keras_model = build(
        "resnet50", encoder_weights=None, input_shape=(SIZE, SIZE, 3), classes=1,
        activation="linear",
    )  # fmt: skip
    perturb_keras_batchnorm(keras_model, seed=0)
    model = create_model(arch, "resnet50", rngs=nnx.Rngs(0))
    copied = copy_keras_weights(keras_model, model)
    assert copied == sum(1 for layer in keras_model.layers if layer.get_weights())
    model.eval()

    # BGR 0..255-like input, what the ResNet-50 weights expect.
    x = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    expected = np.asarray(keras_model(x, training=False))
    ours = np.asarray(model(x))
    assert ours.shape == expected.shape == (2, SIZE, SIZE, 1)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-3 * scale)
