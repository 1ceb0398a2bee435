"""Shared helpers of the smp-family tests: reference PyTorch models built by
segmentation_models.pytorch itself (random weights, no download) and their ported copies.

smp is a test-only reference (the `test` extra); nothing in `qatacov_jax` imports it.
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# The test extra installs both: a missing one is an install error to report, not a skip.
import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402
from flax import nnx

from qatacov_jax.models import SMP_ARCHS, SMP_ENCODERS, abstract_smp_model
from qatacov_jax.weights.smp_port import read_smp_source

PAIRS = [(arch, enc) for enc in SMP_ENCODERS for arch in SMP_ARCHS]
CLASSES = 2


def smp_class(arch: str):
    return getattr(smp, SMP_ARCHS[arch][0])


@functools.cache
def torch_model(arch: str, encoder: str, classes: int = CLASSES):
    """smp's model with random weights and *perturbed* BatchNorm statistics and affine
    parameters (fresh ones are 0/1, which would hide a swapped mean/var or scale/bias), in
    eval mode."""
    # crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), which made
    # the models (and any check of their outputs) differ from run to run.
    torch.manual_seed(zlib.crc32(f"{arch}:{encoder}".encode()) % 1000)
    return perturb_norms(smp_class(arch)(encoder, encoder_weights=None, classes=classes))


def perturb_norms(model):
    """`model` in eval mode with random BatchNorm / GroupNorm affine parameters and running
    statistics (drawn from torch's current seed), so a port that swaps them shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_state_dict(model, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def fill(model: nnx.Module, pure: dict) -> nnx.Module:
    """Puts a ported pure state dict into a (possibly abstract) model, in eval mode."""
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    nnx.update(model, state)
    model.eval()
    return model


def ported_model(arch: str, encoder: str, tmp_path: Path) -> nnx.Module:
    """The smp model saved with torch.save(state_dict) and ported through `read_smp_source`."""
    src = save_state_dict(torch_model(arch, encoder), tmp_path / f"{arch}_{encoder}.pth")
    source = read_smp_source(src, arch, encoder)
    assert source.whole and source.classes == CLASSES
    return fill(abstract_smp_model(arch, encoder, classes=CLASSES), source.pure)


def torch_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
    """smp's output for NHWC images, as NHWC."""
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))))
    return out.numpy().transpose(0, 2, 3, 1)


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max over pixels of |ours - ref| / max |ref|: the error on every pixel relative to
    the scale of the reference output (a per-pixel ratio is undefined where ref ~ 0)."""
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
