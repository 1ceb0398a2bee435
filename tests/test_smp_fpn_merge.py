"""smp's FPN with `decoder_merge_policy="cat"` (the pyramid levels concatenated, as paper 2's
text describes) against segmentation_models.pytorch 0.6 itself: the same parameters (names,
shapes, counts) and the same logits in eval mode, with perturbed normalisation statistics,
as tests/test_smp_models.py checks smp's default (`add`). The paper-2 FPN configs use `cat`
(docs/method.md#protocols)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import train_utils  # noqa: F401 - puts the repository root (configs/) on sys.path
from flax import nnx

from qatacov_jax.models import count_params, create_smp_model
from qatacov_jax.models.smp import abstract_smp_model
from qatacov_jax.weights.smp_port import read_smp_source, torch_table
from tests.smp_reference import (
    CLASSES,
    fill,
    perturb_norms,
    relative_error,
    save_state_dict,
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


def _ported(ref, merge: str, tmp_path: Path) -> nnx.Module:
    """Our FPN with the reference's tensors, through the weight port
    (`weights.smp_port.read_smp_source`), which reads the merge policy from the file."""
    source = read_smp_source(save_state_dict(ref, tmp_path / f"fpn_{merge}.pth"), "fpn", ENCODER)
    assert source.whole and source.merge_policy == merge
    model = abstract_smp_model("fpn", ENCODER, classes=CLASSES, decoder_merge_policy=merge)
    return fill(model, source.pure)


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
def test_logits_equal_smp(merge, tmp_path):
    ref = _torch_fpn(merge)
    model = _ported(ref, merge, tmp_path)
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


def test_port_cli_takes_the_merge_policy_from_the_file(tmp_path):
    """`scripts/port_weights.py --family smp --arch fpn`: the paper-2 config says `cat`, the
    file is smp's default `add` FPN; the ported run follows the file and loads."""
    from qatacov_jax.cli import port_weights
    from qatacov_jax.training import rundir

    ref = _torch_fpn("add")
    src = save_state_dict(ref, tmp_path / "fpn_add.pth")
    argv = [str(src), "--family", "smp", "--arch", "fpn", "--encoder", ENCODER]
    assert port_weights.main([*argv, "--out", str(tmp_path / "run")]) == 0
    model, config, _ = rundir.load_model(tmp_path / "run")
    assert config.model.decoder_merge_policy == "add" and model.decoder.out_channels == 128
    x = np.random.default_rng(2).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    assert relative_error(np.asarray(model(jnp.asarray(x))), torch_logits(ref, x)) <= TOLERANCE
