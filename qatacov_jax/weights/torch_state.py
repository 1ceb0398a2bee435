"""Reads PyTorch weight files into plain NumPy arrays with torchvision-style keys.

Accepted: a bare `state_dict` (torchvision's `densenet121-*.pth`), or a checkpoint dict that
holds one under `state_dict` (arnoweng/CheXNet's `model.pth.tar`). Key normalisation, so the
name tables see one spelling:
- `module.` (from `nn.DataParallel`) and the CheXNet wrapper's `densenet121.` are stripped;
- old torchvision DenseNet keys `...denselayerN.norm.1.weight` / `conv.2.weight` become
  `norm1.weight` / `conv2.weight` (the rename torchvision itself applies when loading them);
- BatchNorm's `num_batches_tracked` counters are dropped (bookkeeping, not weights).

PyTorch is only needed for this path (it is not a runtime dependency of training or
inference); it is imported lazily with a clear error when absent. Files are loaded with
`weights_only=True`, so a checkpoint cannot run code on the porting machine.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from qatacov_jax.weights.errors import WeightsError

# Old torchvision DenseNet spelling (`norm.1`) -> current (`norm1`).
_OLD_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_WRAPPER_PREFIXES = ("module.", "densenet121.")


def normalise_key(key: str) -> str:
    """`module.densenet121.features.denseblock1.denselayer1.norm.1.weight` ->
    `features.denseblock1.denselayer1.norm1.weight`."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    m = _OLD_DENSE_KEY.match(key)
    if m:
        key = m.group(1) + m.group(2)
    return key


def _load(path: Path) -> object:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            path,
            "reading PyTorch files needs the `torch` package, which is not installed; "
            "`pip install torch` (CPU wheel is enough) and run the port again.",
        ) from None
    if _is_torchscript(path):
        raise WeightsError(
            path, "is a TorchScript archive (torch.jit.save), not a state dict. " + SAVE_ADVICE
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (pickle, zip, runtime) for bad files
        if "Unsupported global" in str(e) or "GLOBAL " in str(e):
            # weights_only=True refuses pickled classes: a whole `torch.save(model)`.
            raise WeightsError(
                path,
                "holds a pickled Python object (e.g. a whole model saved with "
                "torch.save(model)), which is not loaded because unpickling can run code. "
                + SAVE_ADVICE,
            ) from None
        raise WeightsError(
            path,
            f"cannot be read by torch.load ({type(e).__name__}: {e}); the file is truncated, "
            "corrupt, or not a PyTorch checkpoint.",
        ) from None


SAVE_ADVICE = (
    "Load it in PyTorch and save its weights alone: "
    "torch.save(model.state_dict(), 'model_state.pth'), then port that file."
)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder or `constants.pkl`."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def read_torch_state(path: str | Path) -> dict[str, np.ndarray]:
    """Loads a PyTorch state dict as {normalised key: float32/int array}, in file order.

    Raises:
      WeightsError: missing/unreadable file, no state dict inside, a non-tensor entry, or
        two keys that normalise to the same name.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "no such file; pass the path of a local PyTorch file.")
    obj = _load(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(
            path,
            f"holds a {type(obj).__name__}, not a state dict (a mapping of tensor names to "
            "tensors, or a checkpoint with one under 'state_dict').",
        )
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in obj.items():
        if not hasattr(value, "detach"):
            raise WeightsError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor.")
        name = normalise_key(str(key))
        if name.endswith("num_batches_tracked"):
            continue
        if name in out:
            raise WeightsError(
                path, f"keys {origin[name]!r} and {key!r} both mean {name!r}; ambiguous file."
            )
        out[name] = value.detach().cpu().float().numpy()
        origin[name] = str(key)
    return out
