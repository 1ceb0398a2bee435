"""The smp family (paper 2) against segmentation_models.pytorch 0.6 itself.

For all 15 decoder x encoder pairs: the same parameters (names, shapes, counts; smp built
with random weights, no download), and the same logits as smp in eval mode after a
torch.save(state_dict) -> port round trip, with perturbed BatchNorm statistics (float32,
error <= 1e-4 of the output's scale on every pixel). Inputs are 64x64: the smallest size
divisible by the encoders' stride 32 with more than one pixel at the bottom.

Compilation dominates the cost, so each encoder is jitted once and shared by its three
decoders (our model is still run whole: encoder features -> decoder -> head).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from qatacov_jax.models import (
    SMP_ARCHS,
    count_params,
    create_model,
    foreground_probability,
)
from qatacov_jax.models.smp import abstract_smp_model
from qatacov_jax.weights.smp_port import torch_table
from tests.numerics import gamma
from tests.smp_reference import (
    CLASSES,
    PAIRS,
    ported_model,
    relative_error,
    torch,
    torch_logits,
    torch_model,
)

SIZE = 64
TOLERANCE = 1e-4
# ResNet-18 pairs run in the quick set; the bigger encoders' compilations are minutes.
PARITY_PAIRS = [
    pytest.param(a, e, marks=() if e == "resnet18" else pytest.mark.slow) for a, e in PAIRS
]


@pytest.mark.parametrize(("arch", "encoder"), PAIRS)
def test_parameters_equal_smp(arch, encoder):
    ref = torch_model(arch, encoder)
    ours = abstract_smp_model(arch, encoder, classes=CLASSES)
    n_params = sum(p.numel() for p in ref.parameters())
    n_buffers = sum(b.numel() for k, b in ref.named_buffers() if "num_batches" not in k)
    counts = count_params(ours)
    assert (counts.trainable, counts.non_trainable) == (n_params, n_buffers)
    # Names and shapes, not only totals: every smp tensor has exactly one counterpart.
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if "num_batches" not in k}
    table = torch_table(ours)
    assert sorted(table) == sorted(theirs)


@functools.cache
def _encoder_fn(encoder: str):
    """One jitted encoder per encoder name (the graph is the same for every decoder)."""
    model = abstract_smp_model("unet", encoder)
    model.eval()  # the graph holds the BatchNorm mode
    graph = nnx.graphdef(model.encoder)
    return jax.jit(lambda state, x: nnx.merge(graph, state)(x))


@functools.cache
def _head_fn(arch: str, encoder: str):
    model = abstract_smp_model(arch, encoder, classes=CLASSES)
    model.eval()
    graph = nnx.graphdef(model)

    def run(state, features):
        m = nnx.merge(graph, state)
        return m.segmentation_head(m.decoder(features))

    return jax.jit(run)


@pytest.mark.parametrize(("arch", "encoder"), PARITY_PAIRS)
def test_logits_equal_smp_after_porting(arch, encoder, tmp_path):
    model = ported_model(arch, encoder, tmp_path)
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    features = _encoder_fn(encoder)(nnx.state(model.encoder), x)
    ours = np.asarray(_head_fn(arch, encoder)(nnx.state(model), features))
    ref = torch_logits(torch_model(arch, encoder), x)
    assert ours.shape == ref.shape == (2, SIZE, SIZE, CLASSES)
    assert relative_error(ours, ref) <= TOLERANCE


def test_registry_builds_the_smp_family_and_names_valid_choices():
    model = create_model("fpn", "resnet18", family="smp", classes=2, rngs=nnx.Rngs(0))
    assert (model.family, model.arch, model.encoder_name, model.classes) == (
        "smp", "fpn", "resnet18", 2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"valid names: \['densenet121', 'densenet161'"):
        create_model("unet", "resnet34", family="smp", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"valid names: \['fpn', 'unet', 'unetpp'\]"):
        create_model("dla", "resnet18", family="smp", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="valid families"):
        create_model("unet", "resnet18", family="keras", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="family='smp'"):
        create_model("unet", "densenet121", classes=2, rngs=nnx.Rngs(0))
    assert set(SMP_ARCHS) == {"unet", "unetpp", "fpn"}


def test_activation_and_foreground_probability_follow_smp(tmp_path):
    # smp applies `activation` over the class channel; a 2-class model's foreground
    # probability is softmax channel 1, a 1-class model's the sigmoid.
    logits = np.random.default_rng(1).normal(size=(1, 4, 4, 2)).astype(np.float32)
    # Elementwise maths against a float64 reference: a few float32 roundings (exp, one add,
    # one division; no reduction whose order could vary), so rtol=1e-6 (~8 ulp) holds on any CPU.
    soft = np.asarray(foreground_probability(logits))[..., 0]
    e = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(soft, e[..., 1] / e.sum(-1), rtol=1e-6)
    one = np.asarray(foreground_probability(logits[..., :1]))[..., 0]
    np.testing.assert_allclose(one, 1 / (1 + np.exp(-logits[..., 0].astype(np.float64))), rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        foreground_probability(np.zeros((1, 2, 2, 3), np.float32))
    ref = torch_model("unet", "resnet18")
    model = ported_model("unet", "resnet18", tmp_path)
    model.activation = "softmax2d"
    x = np.random.default_rng(2).normal(size=(1, 32, 32, 3)).astype(np.float32)
    probs = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    expected = torch.softmax(torch.from_numpy(torch_logits(ref, x)), dim=-1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_paper2_cross_entropy_equals_torch_and_focal_dice_reads_the_logit_gap():
    from qatacov_jax.training import losses
    from qatacov_jax.training.losses import LossSpec

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    masks = (rng.random((2, 4, 4, 1)) > 0.5).astype(np.float32)
    ce = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(masks[..., 0]).long()
    )
    loss, _ = LossSpec(name="cross_entropy")(logits, masks)
    np.testing.assert_allclose(float(loss), float(ce), rtol=1e-5)
    gap = logits[..., 1:] - logits[..., :1]
    hybrid, _ = LossSpec()(logits, masks)
    # Two compiled graphs of the same loss may sum its 32 per-pixel terms in different orders;
    # focal and dice are sums of non-negative terms, so they agree within gamma(32) ~ 2e-6
    # relative in any order (tests/numerics.py).
    np.testing.assert_allclose(
        float(hybrid), float(losses.hybrid_loss(gap, masks)[0]), rtol=gamma(masks.size)
    )
