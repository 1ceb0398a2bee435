"""The papers' reported numbers, as data (used by benchmarks and tests to compare against).

Table 8 of Degerli et al. (QaTa-COV19 infection maps): trainable / non-trainable parameters
as printed (rounded to two decimals in M or K) and the per-sample inference time in ms on an
RTX 2080 Ti (TensorFlow), for 3 decoders x 4 encoders x frozen / not frozen. `EXACT_COUNTS`
holds the exact counts of the Keras models that reproduce every printed digit
(docs/original_models.md, "Exact parameter counts").
"""

from __future__ import annotations

from typing import NamedTuple


class Table8Row(NamedTuple):
    """One row of the paper's Table 8."""

    arch: str  # unet | unetpp | dla
    encoder: str  # chexnet | densenet121 | inceptionv3 | resnet50
    frozen: bool
    trainable: str  # as printed, e.g. "5.19M"
    non_trainable: str  # as printed, e.g. "85.63K"
    time_ms: float


_T = True
_F = False

# In the paper's order (paper text lines 1184-1251).
TABLE8: tuple[Table8Row, ...] = (
    Table8Row("unet", "chexnet", _T, "5.19M", "6.96M", 2.56),
    Table8Row("unet", "densenet121", _T, "5.19M", "6.96M", 2.58),
    Table8Row("unet", "inceptionv3", _T, "8.15M", "21.79M", 2.53),
    Table8Row("unet", "resnet50", _T, "9.06M", "23.50M", 2.54),
    Table8Row("unet", "chexnet", _F, "12.06M", "85.63K", 2.62),
    Table8Row("unet", "densenet121", _F, "12.06M", "85.63K", 2.58),
    Table8Row("unet", "inceptionv3", _F, "29.9M", "36.42K", 2.61),
    Table8Row("unet", "resnet50", _F, "32.51M", "47.56K", 2.64),
    Table8Row("unetpp", "chexnet", _T, "7.53M", "6.96M", 5.17),
    Table8Row("unetpp", "densenet121", _T, "7.53M", "6.96M", 5.10),
    Table8Row("unetpp", "inceptionv3", _T, "8.68M", "21.79M", 5.32),
    Table8Row("unetpp", "resnet50", _T, "10.88M", "23.51M", 5.58),
    Table8Row("unetpp", "chexnet", _F, "14.40M", "88.45K", 5.24),
    Table8Row("unetpp", "densenet121", _F, "14.40M", "88.45K", 5.25),
    Table8Row("unetpp", "inceptionv3", _F, "30.43M", "39.23K", 5.32),
    Table8Row("unetpp", "resnet50", _F, "34.34M", "50.37K", 5.46),
    Table8Row("dla", "chexnet", _T, "6.27M", "6.96M", 4.65),
    Table8Row("dla", "densenet121", _T, "6.27M", "6.96M", 4.63),
    Table8Row("dla", "inceptionv3", _T, "7.20M", "21.79M", 4.70),
    Table8Row("dla", "resnet50", _T, "8.74M", "23.51M", 4.90),
    Table8Row("dla", "chexnet", _F, "13.15M", "88.45K", 4.63),
    Table8Row("dla", "densenet121", _F, "13.15M", "88.45K", 4.65),
    Table8Row("dla", "inceptionv3", _F, "28.96M", "39.23K", 4.72),
    Table8Row("dla", "resnet50", _F, "32.2M", "50.37K", 4.90),
)

# Exact (trainable, non_trainable) at 224x224x3, keyed by (arch, encoder, frozen); CheXNet has
# DenseNet-121's graph, hence its counts (docs/original_models.md, "Exact parameter counts").
_EXACT_BASE: dict[tuple[str, str, bool], tuple[int, int]] = {
    ("unet", "densenet121", False): (12_059_345, 85_632),
    ("unet", "densenet121", True): (5_189_137, 6_955_840),
    ("unet", "inceptionv3", False): (29_896_689, 36_416),
    ("unet", "inceptionv3", True): (8_145_553, 21_787_552),
    ("unet", "resnet50", False): (32_513_556, 47_558),
    ("unet", "resnet50", True): (9_058_644, 23_502_470),
    ("unetpp", "densenet121", False): (14_398_561, 88_448),
    ("unetpp", "densenet121", True): (7_528_353, 6_958_656),
    ("unetpp", "inceptionv3", False): (30_429_569, 39_232),
    ("unetpp", "inceptionv3", True): (8_678_433, 21_790_368),
    ("unetpp", "resnet50", False): (34_336_676, 50_374),
    ("unetpp", "resnet50", True): (10_881_764, 23_505_286),
    ("dla", "densenet121", False): (13_145_185, 88_448),
    ("dla", "densenet121", True): (6_274_977, 6_958_656),
    ("dla", "inceptionv3", False): (28_955_009, 39_232),
    ("dla", "inceptionv3", True): (7_203_873, 21_790_368),
    ("dla", "resnet50", False): (32_198_564, 50_374),
    ("dla", "resnet50", True): (8_743_652, 23_505_286),
}
EXACT_COUNTS: dict[tuple[str, str, bool], tuple[int, int]] = {
    **_EXACT_BASE,
    **{
        (arch, "chexnet", frozen): counts
        for (arch, enc, frozen), counts in _EXACT_BASE.items()
        if enc == "densenet121"
    },
}

# Keras DenseNet121(include_top=False): (trainable, non_trainable).
DENSENET121_NOTOP = (6_953_856, 83_648)


def matches_printed(n: int, printed: str) -> bool:
    """Whether the exact count `n` rounds to the paper's printed value (which sometimes drops
    a trailing zero: "29.9M" is 29.90M)."""
    unit = {"M": 1e6, "K": 1e3}[printed[-1]]
    return round(n / unit, 2) == round(float(printed[:-1]), 2)


def table8_row(arch: str, encoder: str, frozen: bool) -> Table8Row | None:
    """The Table 8 row of a configuration, or None if the paper has none (e.g. FPN)."""
    for row in TABLE8:
        if (row.arch, row.encoder, row.frozen) == (arch, encoder, frozen):
            return row
    return None
