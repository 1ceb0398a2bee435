"""Datasets and the input pipeline.

Importing this package registers the TFDS builders `qatacov19` (configs `v1`, `v2`),
`covid_qu_ex` (configs `infection`, `lung`) and `synthetic_cxr`.
"""

from qatacov_jax.data.config import default_config
from qatacov_jax.data.covid_qu_ex import CovidQuEx
from qatacov_jax.data.features import DataError
from qatacov_jax.data.pipeline import (
    ShardedIterator,
    eval_iterator,
    example_filenames,
    num_examples,
    train_iterator,
)
from qatacov_jax.data.qatacov19 import Qatacov19
from qatacov_jax.data.sources import prepare
from qatacov_jax.data.synthetic_cxr import SyntheticCxr

__all__ = [
    "CovidQuEx",
    "Qatacov19",
    "DataError",
    "ShardedIterator",
    "SyntheticCxr",
    "default_config",
    "eval_iterator",
    "example_filenames",
    "num_examples",
    "prepare",
    "train_iterator",
]
