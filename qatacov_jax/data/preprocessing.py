"""Encoder input preprocessing: how pixel values must be scaled for a given set of weights.

Pretrained weights only work with the input normalisation they were trained with, so the
preprocessing travels with the weights (the porting manifest records it) and the input
pipeline applies exactly that. Mixing them up (e.g. feeding 'tf'-mode [-1, 1] inputs to
weights trained with ImageNet 'torch' mean/std) silently ruins accuracy, which is why
`Preprocessing` is a value object that is compared, serialised and checked, not a string.

Modes (named as in `keras.applications.imagenet_utils.preprocess_input`):

| mode    | used by                                        | output                                   |
|---------|------------------------------------------------|------------------------------------------|
| `torch` | Keras DenseNet-121, torchvision, CheXNet       | RGB, (x/255 - mean) / std (ImageNet)     |
| `tf`    | Keras Inception-v3                             | RGB, x/127.5 - 1, in [-1, 1]             |
| `caffe` | keras.applications ResNet-50 (not used by us)  | BGR, x - mean (0..255 scale)             |
| `bgr`   | classification_models ResNet-50 (MXNet port)   | BGR, raw 0..255 (its `bn_data` normalises)|
| `unit`  | no pretrained weights (random init)            | RGB, x/255 in [0, 1]                     |
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

MODES = ("torch", "tf", "caffe", "bgr", "unit")

# Which encoder expects which mode is `qatacov_jax.models.ENCODER_SPECS`.


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Maps images in [0, 1] to the input range a set of encoder weights expects.

    Attributes:
      mode: one of `MODES`.
      mean: per-channel mean subtracted after scaling, in the *output* channel order.
      std: per-channel divisor, in the output channel order.
      channel_order: 'RGB' or 'BGR' (order of the output channels).
      scale: factor applied to [0, 1] input before mean/std (255 for 0..255 modes).
    """

    mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str
    scale: float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown preprocessing mode {self.mode!r}; valid modes: {MODES}.")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}.")

    @classmethod
    def from_mode(cls, mode: str) -> Preprocessing:
        """The standard preprocessing of a mode (see module docstring)."""
        if mode == "torch":
            return cls("torch", IMAGENET_MEAN, IMAGENET_STD, "RGB", 1.0)
        if mode == "tf":
            return cls("tf", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "RGB", 2.0)
        if mode == "caffe":
            return cls("caffe", CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), "BGR", 255.0)
        if mode == "bgr":
            return cls("bgr", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "BGR", 255.0)
        if mode == "unit":
            return cls("unit", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB", 1.0)
        raise ValueError(f"Unknown preprocessing mode {mode!r}; valid modes: {MODES}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        try:
            return cls(
                mode=d["mode"],
                mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
                channel_order=d["channel_order"],
                scale=float(d["scale"]),
            )
        except KeyError as e:
            raise ValueError(f"Preprocessing record {d!r} lacks field {e}.") from None

    def __call__(self, images: Any) -> Any:
        """Applies the preprocessing.

        Args:
          images: (..., H, W, 1 or 3) float in [0, 1], RGB if 3 channels; a NumPy or JAX
            array (only array operators are used, so it traces under `jax.jit`).

        Returns:
          (..., H, W, 3) float32 in the weights' input range and channel order.
        """
        if images.shape[-1] == 1:
            images = images * np.ones((3,), np.float32)  # grey -> 3 equal channels
        elif images.shape[-1] != 3:
            raise ValueError(f"Expected 1 or 3 channels, got shape {images.shape}.")
        x = images.astype(np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        if self.mode == "tf":
            return x * 2.0 - 1.0
        x = x * self.scale
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (x - mean) / std
