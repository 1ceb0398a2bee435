"""smp's FPN with `decoder_merge_policy="cat"` (the pyramid levels concatenated, as paper 2's
text describes) against segmentation_models.pytorch 0.6 itself: the same parameters (names,
shapes, counts) and the same logits in eval mode, with perturbed normalisation statistics,
as tests/test_smp_models.py checks smp's default (`add`). The paper-2 FPN configs use `cat`
(docs/method.md#protocols)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_utils  # noqa: F401 - puts the repository root (configs/) on sys.path
from flax import nnx, traverse_util

from qatacov_jax.models import count_params, create_smp_model
from qatacov_jax.models.smp import abstract_smp_model
from qatacov_jax.models.smp.layers import DropoutKey
from qatacov_jax.weights.smp_port import torch_table
from tests.smp_reference import (
    CLASSES,
    perturb_norms,
    relative_error,
    smp,
    torch,
    torch_logits,
)

SIZE = 64
TOLERANCE = 1e-4
ENCODER = "resnet18"  # the cheapest encoder: the decoder is what differs


def _torch_fpn(merge: str):
    torch.manual_seed(7)
    return perturb_norms(
        smp.FPN(ENCODER, encoder_weights=None, classes=CLASSES, decoder_merge_policy=merge)
    )


def _ported(ref, merge: str) -> nnx.Module:
    """Our FPN with the reference's tensors, mapped by PyTorch name."""
    model = abstract_smp_model("fpn", ENCODER, classes=CLASSES, decoder_merge_policy=merge)
    tensors = {k: v.numpy() for k, v in ref.state_dict().items() if "num_batches" not in k}
    flat = {}
    for key, target in torch_table(model).items():
        array = tensors.pop(key)
        flat[target.path] = array.transpose(2, 3, 1, 0) if target.transpose else array
    assert not tensors, f"smp tensors without a counterpart: {sorted(tensors)}"
    keys = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, DropoutKey)))
    for path, value in keys.items():  # any key: dropout is off in eval mode
        key = jax.random.key_data(jax.random.key(0))
        flat[tuple(str(p) for p in path)] = np.asarray(key, value.dtype)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    nnx.update(model, state)
    model.eval()
    return model


def test_cat_has_smp_parameters_and_a_4x_wider_head():
    ref = _torch_fpn("cat")
    ours = abstract_smp_model("fpn", ENCODER, classes=CLASSES, decoder_merge_policy="cat")
    n_params = sum(p.numel() for p in ref.parameters())
    n_buffers = sum(b.numel() for k, b in ref.named_buffers() if "num_batches" not in k)
    counts = count_params(ours)
    assert (counts.trainable, counts.non_trainable) == (n_params, n_buffers)
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if "num_batches" not in k}
    assert sorted(torch_table(ours)) == sorted(theirs)
    assert ours.decoder.out_channels == 512 and theirs["segmentation_head.0.weight"][1] == 512
    add = abstract_smp_model("fpn", ENCODER, classes=CLASSES)
    assert add.decoder.out_channels == 128 and add.decoder_merge_policy == "add"


@pytest.mark.parametrize("merge", ["cat", "add"])
def test_logits_equal_smp(merge):
    ref = _torch_fpn(merge)
    model = _ported(ref, merge)
    x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    ours = np.asarray(model(jnp.asarray(x)))
    theirs = torch_logits(ref, x)
    assert ours.shape == theirs.shape == (2, SIZE, SIZE, CLASSES)
    assert relative_error(ours, theirs) <= TOLERANCE


def test_merge_policy_is_checked_and_reaches_the_model_from_the_config():
    with pytest.raises(ValueError, match=r"one of \['add', 'cat'\]"):
        create_smp_model("fpn", ENCODER, decoder_merge_policy="max", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="FPN setting"):
        create_smp_model("unet", ENCODER, decoder_merge_policy="cat", rngs=nnx.Rngs(0))
    from configs.paper2 import infection_fpn_resnet18
    from qatacov_jax.training.factory import build_model

    config = infection_fpn_resnet18.get_config()
    assert config.model.decoder_merge_policy == "cat"
    model, _ = build_model(config, seed=0, load_weights=False, abstract=True)
    assert model.decoder.merge_policy == "cat" and model.decoder.out_channels == 512
