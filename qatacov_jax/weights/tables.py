"""Name tables: which source tensor fills which encoder variable, and how it is reshaped.

Porting is data, not code: each source layout maps its tensor names to a `Target`
(our submodule attribute — the Keras layer name with '/' -> '_' — plus the variable name in
that `nnx.Conv` / `nnx.BatchNorm`), with an optional axis permutation. The generic machinery
in `port.py` applies a table and checks the result against the encoder's own shapes.

Facts behind the tables (docs/weights.md; BN epsilons: docs/original_models.md, "BatchNorm and
padding conventions"):
- Keras stores conv kernels HWIO like Flax; BN as gamma/beta/moving_mean/moving_variance.
- PyTorch stores conv kernels OIHW (-> HWIO by (2, 3, 1, 0)); BN as weight/bias/
  running_mean/running_var.
- Keras Inception-v3 layers have only auto-generated names (`conv2d_7`), whose number depends
  on how many layers the saving session had built before; the *order* of the numbers is the
  creation order, which is what our `conv2d_{k}` / `batch_normalization_{k}` (k = 1..94) use.
"""

from __future__ import annotations

import dataclasses
import re

# The BN epsilon of each source family (recorded in the manifest; our encoders use the Keras
# value of their architecture). Which architecture an encoder name is:
# `qatacov_jax.models.ENCODER_ARCHITECTURES`.
SOURCE_BN_EPSILON = {
    ("keras", "densenet121"): 1.001e-5,
    ("keras", "inceptionv3"): 1e-3,
    ("keras", "resnet50"): 2e-5,
    ("torch", "densenet121"): 1e-5,
}

DENSENET_BLOCKS = (6, 12, 24, 16)
RESNET50_UNITS = (3, 4, 6, 3)
INCEPTION_CONVS = 94

# Keras weight (short) name -> our variable name.
KERAS_VARIABLE = {
    "kernel": "kernel",
    "bias": "bias",
    "gamma": "scale",
    "beta": "bias",
    "moving_mean": "mean",
    "moving_variance": "var",
}
# PyTorch BN / conv parameter -> our variable name (conv weight is handled by rank).
TORCH_BN_VARIABLE = {
    "weight": "scale",
    "bias": "bias",
    "running_mean": "mean",
    "running_var": "var",
}
OIHW_TO_HWIO = (2, 3, 1, 0)

# Classification heads: present in CheXNet / include_top files, not part of an encoder.
KERAS_HEAD_LAYERS = {
    "densenet121": ("predictions", "fc1000"),
    "inceptionv3": ("predictions",),
    "resnet50": ("fc1",),
}
TORCH_HEAD_PREFIXES = {"densenet121": ("classifier.",)}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one source tensor goes.

    Attributes:
      module: the encoder submodule attribute (e.g. `conv2_block1_1_conv`).
      variable: the variable inside it (`kernel`, `bias`, `scale`, `mean`, `var`).
      transpose: axis permutation applied to the source array first, or None.
    """

    module: str
    variable: str
    transpose: tuple[int, ...] | None = None


# --- The module names of each architecture (used to recognise a file's architecture) ---


def densenet121_modules() -> list[str]:
    names = ["conv1_conv", "conv1_bn"]
    for stage, layers in enumerate(DENSENET_BLOCKS, start=2):
        for block in range(1, layers + 1):
            p = f"conv{stage}_block{block}"
            names += [f"{p}_0_bn", f"{p}_1_conv", f"{p}_1_bn", f"{p}_2_conv"]
        if stage < 5:
            names += [f"pool{stage}_bn", f"pool{stage}_conv"]
    return names + ["bn"]


def resnet50_modules() -> list[str]:
    names = ["bn_data", "conv0", "bn0"]
    for stage, units in enumerate(RESNET50_UNITS, start=1):
        for unit in range(1, units + 1):
            p = f"stage{stage}_unit{unit}"
            names += [f"{p}_{n}" for n in ("bn1", "conv1", "bn2", "conv2", "bn3", "conv3")]
            if unit == 1:
                names.append(f"{p}_sc")
    return names + ["bn1"]


def inceptionv3_modules() -> list[str]:
    return [
        f"{kind}_{k}"
        for k in range(1, INCEPTION_CONVS + 1)
        for kind in ("conv2d", "batch_normalization")
    ]


MODULES = {
    "densenet121": densenet121_modules,
    "resnet50": resnet50_modules,
    "inceptionv3": inceptionv3_modules,
}


# --- Keras layer names -> module names ---

_KERAS_AUTO_NAME = re.compile(r"^(conv2d|batch_normalization)(?:_(\d+))?$")


def keras_layer_modules(architecture: str, layer_names: list[str]) -> dict[str, str]:
    """Maps the weight-holding Keras layers of a file to our module names.

    Layers that map to nothing are left out (the caller reports them as heads or errors).
    DenseNet / ResNet layers carry fixed names; Inception-v3's auto-numbered layers are
    ranked by their number per kind, rank k (1-based) being our `<kind>_k`.
    """
    if architecture in ("densenet121", "resnet50"):
        known = set(MODULES[architecture]())
        return {n: n.replace("/", "_") for n in layer_names if n.replace("/", "_") in known}
    if architecture == "inceptionv3":
        numbered: dict[str, list[tuple[int, str]]] = {"conv2d": [], "batch_normalization": []}
        for name in layer_names:
            m = _KERAS_AUTO_NAME.match(name)
            if m:
                numbered[m.group(1)].append((int(m.group(2) or 0), name))
        out = {}
        for kind, items in numbered.items():
            for rank, (_, name) in enumerate(sorted(items), start=1):
                out[name] = f"{kind}_{rank}"
        return out
    raise ValueError(f"No Keras table for architecture {architecture!r}; known: {sorted(MODULES)}.")


def keras_target(module: str, weight: str) -> Target | None:
    """The target of Keras weight `weight` (short name) of the layer mapped to `module`."""
    variable = KERAS_VARIABLE.get(weight)
    return None if variable is None else Target(module, variable)


# --- PyTorch (torchvision-style, normalised) keys -> targets ---

# (regex over the normalised key, module-name template); groups: named parts of the key.
_TORCH_DENSENET_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^features\.conv0\.(?P<p>weight)$"), "conv1_conv"),
    (re.compile(r"^features\.norm0\.(?P<p>\w+)$"), "conv1_bn"),
    (
        re.compile(r"^features\.denseblock(?P<s>\d)\.denselayer(?P<b>\d+)\.norm1\.(?P<p>\w+)$"),
        "conv{S}_block{b}_0_bn",
    ),
    (
        re.compile(r"^features\.denseblock(?P<s>\d)\.denselayer(?P<b>\d+)\.conv1\.(?P<p>weight)$"),
        "conv{S}_block{b}_1_conv",
    ),
    (
        re.compile(r"^features\.denseblock(?P<s>\d)\.denselayer(?P<b>\d+)\.norm2\.(?P<p>\w+)$"),
        "conv{S}_block{b}_1_bn",
    ),
    (
        re.compile(r"^features\.denseblock(?P<s>\d)\.denselayer(?P<b>\d+)\.conv2\.(?P<p>weight)$"),
        "conv{S}_block{b}_2_conv",
    ),
    (re.compile(r"^features\.transition(?P<s>\d)\.norm\.(?P<p>\w+)$"), "pool{S}_bn"),
    (re.compile(r"^features\.transition(?P<s>\d)\.conv\.(?P<p>weight)$"), "pool{S}_conv"),
    (re.compile(r"^features\.norm5\.(?P<p>\w+)$"), "bn"),
]
TORCH_RULES = {"densenet121": _TORCH_DENSENET_RULES}


def torch_target(architecture: str, key: str) -> Target | None:
    """The target of a normalised PyTorch key, or None if the table has no rule for it.

    torchvision numbers dense blocks / transitions from 1, Keras stages from 2 (stage 1 is
    the stem), hence `S = s + 1`.
    """
    for pattern, template in TORCH_RULES.get(architecture, []):
        m = pattern.match(key)
        if not m:
            continue
        parts = m.groupdict()
        module = template.format(S=int(parts.get("s") or 0) + 1, b=parts.get("b"))
        param = parts["p"]
        if module.endswith("_conv"):
            return Target(module, "kernel", OIHW_TO_HWIO) if param == "weight" else None
        variable = TORCH_BN_VARIABLE.get(param)
        return None if variable is None else Target(module, variable)
    return None
