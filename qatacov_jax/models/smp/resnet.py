"""torchvision ResNet-18/50 as smp 0.6's `ResNetEncoder` uses them (names = PyTorch keys).

Stem conv1 7x7/2 -> bn1 -> ReLU (feature /2) -> max pool 3/2 -> layer1 (/4) -> layer2 (/8)
-> layer3 (/16) -> layer4 (/32). ResNet-18 stacks `BasicBlock`s (two 3x3 convs), ResNet-50
`Bottleneck`s (1x1, 3x3 with the stride, 1x1 x4: torchvision's "v1.5"); a block whose
stride or width changes projects its shortcut with `downsample` = Sequential(1x1 conv, BN).
BatchNorm epsilon 1e-5. See docs/original_models.md#paper-2-models-smp.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from flax import nnx

from qatacov_jax.models.smp.layers import Seq, batch_norm, conv, kaiming_normal_fan_out, max_pool

# name -> (block kind, blocks per layer); smp's `out_channels` follow from them.
RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class BasicBlock(nnx.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); widths in = out (x1)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs, dtype: Any):
        c = partial(conv, rngs=rngs, dtype=dtype, kernel_init=kaiming_normal_fan_out)
        bn = partial(batch_norm, rngs=rngs, dtype=dtype)
        self.conv1 = c(cin, planes, 3, stride=stride, padding=1)
        self.bn1 = bn(planes)
        self.conv2 = c(planes, planes, 3, padding=1)
        self.bn2 = bn(planes)
        self.downsample = (
            Seq(c(cin, planes, 1, stride=stride), bn(planes))
            if stride != 1 or cin != planes
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nnx.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)), out = 4 x planes;
    the stride sits on the 3x3 conv2."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs, dtype: Any):
        c = partial(conv, rngs=rngs, dtype=dtype, kernel_init=kaiming_normal_fan_out)
        bn = partial(batch_norm, rngs=rngs, dtype=dtype)
        out = planes * self.expansion
        self.conv1 = c(cin, planes, 1)
        self.bn1 = bn(planes)
        self.conv2 = c(planes, planes, 3, stride=stride, padding=1)
        self.bn2 = bn(planes)
        self.conv3 = c(planes, out, 1)
        self.bn3 = bn(out)
        self.downsample = (
            Seq(c(cin, out, 1, stride=stride), bn(out)) if stride != 1 or cin != out else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetEncoder(nnx.Module):
    """smp's ResNet encoder.

    Call: `(B, H, W, 3)` -> 6 features, the input first (smp's convention): `(B, H, W, 3)`,
    then strides 2, 4, 8, 16, 32 with `out_channels[1:]` channels (ResNet-18: 64, 64, 128,
    256, 512; ResNet-50: 64, 256, 512, 1024, 2048).
    """

    def __init__(self, name: str, *, rngs: nnx.Rngs, dtype: Any = None):
        kind, layers = RESNETS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = conv(
            3, 64, 7, stride=2, padding=3, rngs=rngs, dtype=dtype,
            kernel_init=kaiming_normal_fan_out,
        )  # fmt: skip
        self.bn1 = batch_norm(64, rngs=rngs, dtype=dtype)
        channels, out_channels = 64, [3, 64]
        for i, n in enumerate(layers, start=1):
            planes, blocks = 64 * 2 ** (i - 1), []
            for j in range(n):
                stride = 2 if (j == 0 and i > 1) else 1
                blocks.append(block(channels, planes, stride, rngs=rngs, dtype=dtype))
                channels = planes * block.expansion
            setattr(self, f"layer{i}", Seq(*blocks))
            out_channels.append(channels)
        self.out_channels = tuple(out_channels)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        features = [x]
        x = nnx.relu(self.bn1(self.conv1(x)))
        features.append(x)
        x = max_pool(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features
