"""Datasets and the input pipeline.

The names below load on first use (PEP 562): TensorFlow Datasets and grain, which the
builders and the pipeline need, cost seconds to import, and the light modules of this
package (`preprocessing`, `resize`, `imageio`, `config`) must not pay for them; the model
code imports `qatacov_jax.data.preprocessing` alone. The TFDS builders `qatacov19` (configs
`v1`, `v2`), `covid_qu_ex` (configs `infection`, `lung`) and `synthetic_cxr` are registered
with TFDS when their modules load: on first use of any name below that reads datasets
(`prepare`, the iterators, the builder classes) or on import of `qatacov_jax.data.sources`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# public name -> the submodule that defines it
_HOMES = {
    "CovidQuEx": "covid_qu_ex",
    "Qatacov19": "qatacov19",
    "DataError": "features",
    "ShardedIterator": "pipeline",
    "SyntheticCxr": "synthetic_cxr",
    "default_config": "config",
    "eval_iterator": "pipeline",
    "example_filenames": "pipeline",
    "num_examples": "pipeline",
    "prepare": "sources",
    "train_iterator": "pipeline",
}

__all__ = [
    "CovidQuEx",
    "DataError",
    "Qatacov19",
    "ShardedIterator",
    "SyntheticCxr",
    "default_config",
    "eval_iterator",
    "example_filenames",
    "num_examples",
    "prepare",
    "train_iterator",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
