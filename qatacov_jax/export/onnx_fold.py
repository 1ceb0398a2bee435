"""NumPy computations of the primitives whose inputs are all constants (`onnx_graph.fold`):
what the serving function computes from the weights alone (BatchNorm folding, kernel phase
sums) is evaluated at conversion time and stored. NumPy is ~100x faster here than JAX's own
implementation, which compiles one XLA program per primitive and shape; primitives missing
from `EVALUATORS` still fall back to it. Integer division is left to JAX (it truncates where
NumPy floors).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatacov_jax.export.onnx_graph import Evaluator, UnsupportedError


def _np_slice(x: np.ndarray, *, start_indices: Any, limit_indices: Any, strides: Any) -> Any:
    steps = strides or (1,) * x.ndim
    return x[
        tuple(slice(a, b, c) for a, b, c in zip(start_indices, limit_indices, steps, strict=True))
    ]


def _np_pad(x: np.ndarray, value: np.ndarray, *, padding_config: Any) -> np.ndarray:
    if any(i or lo < 0 or hi < 0 for lo, hi, i in padding_config):
        raise UnsupportedError("folding a pad with interior or negative padding.")
    pads = [(int(lo), int(hi)) for lo, hi, _ in padding_config]
    return np.pad(x, pads, constant_values=value.item())


def _np_split(x: np.ndarray, *, sizes: Any, axis: int) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _np_select(pred: np.ndarray, *cases: np.ndarray) -> np.ndarray:
    if pred.dtype == np.bool_:
        return np.where(pred, cases[1], cases[0])
    return np.choose(pred, cases)


# NumPy computations of constant subexpressions (folded at conversion time); integer
# division is left to JAX (it truncates where NumPy floors).
def _ufunc(f: Any) -> Evaluator:
    return lambda *xs, **_: f(*xs)  # params such as `accuracy`, `out_dtype` don't apply


UFUNCS = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
    "neg": np.negative,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "square": np.square,
    "lt": np.less,
    "gt": np.greater,
    "le": np.less_equal,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "and": np.logical_and,
    "or": np.logical_or,
    "not": np.logical_not,
}
EVALUATORS: dict[str, Evaluator] = {
    **{k: _ufunc(f) for k, f in UFUNCS.items()},
    "select_n": _np_select,
    "integer_pow": lambda x, *, y: x**y,
    "convert_element_type": lambda x, *, new_dtype, **_: x.astype(new_dtype),
    "reshape": lambda x, *, new_sizes, dimensions, **_: np.reshape(x, new_sizes),
    "transpose": lambda x, *, permutation: np.transpose(x, permutation),
    "squeeze": lambda x, *, dimensions: np.squeeze(x, tuple(dimensions)),
    "concatenate": lambda *xs, dimension: np.concatenate(xs, axis=dimension),
    "stack": lambda *xs, axis: np.stack(xs, axis=axis),
    "slice": _np_slice,
    "rev": lambda x, *, dimensions: np.flip(x, tuple(dimensions)),
    "pad": _np_pad,
    "split": _np_split,
}
EVALUATORS["div"] = lambda x, y, **_: (
    np.divide(x, y) if np.issubdtype(x.dtype, np.floating) else np.trunc(np.divide(x, y))
)
