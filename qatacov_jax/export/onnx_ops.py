"""ONNX translations of JAX primitives (`HANDLERS`), for `onnx_graph.jaxpr_to_onnx`.

Only what the registered models' serving functions use once their constants are folded
(`onnx_graph.fold`): convolutions, elementwise maths, pooling windows, the structural ops of
the restructured decoders (reshape, broadcast, transpose, slices, stacks, pads) and the uint8
lookup table of the input. Any other form raises `UnsupportedError` naming the primitive.

Layout: JAX's activations are NHWC, ONNX's `Conv` and pools take NCHW, so each is wrapped in
Transposes (`_nchw`); transposes meeting each other are composed (`Builder.transpose`) and
ONNX Runtime's transpose optimizer moves the rest through the elementwise nodes between convs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qatacov_jax.export.onnx_fold import EVALUATORS
from qatacov_jax.export.onnx_graph import (
    SMALL,
    Bcast,
    Builder,
    Handler,
    OpTable,
    UnsupportedError,
    Value,
    is_static,
)

INT64_MAX = np.iinfo(np.int64).max

UNARY = {
    "exp": "Exp",
    "log": "Log",
    "tanh": "Tanh",
    "logistic": "Sigmoid",
    "sqrt": "Sqrt",
    "neg": "Neg",
    "abs": "Abs",
    "sign": "Sign",
    "floor": "Floor",
    "ceil": "Ceil",
    "erf": "Erf",
    "not": "Not",
    "copy": "Identity",
    "copy_p": "Identity",
}
BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "pow": "Pow",
    "lt": "Less",
    "gt": "Greater",
    "le": "LessOrEqual",
    "ge": "GreaterOrEqual",
    "eq": "Equal",
    "and": "And",
    "or": "Or",
}
ELEMENTWISE = frozenset(
    {*UNARY, *BINARY, "ne", "rsqrt", "square", "integer_pow", "select_n", "convert_element_type"}
)


def _unary(op_type: str) -> Handler:
    return lambda b, eqn, ins: [b.op(op_type, ins[0])]


def _binary(op_type: str) -> Handler:
    def handle(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
        x, y = (v.array if isinstance(v, Bcast) else v for v in ins)
        if op_type == "Max" and isinstance(y, np.ndarray) and y.size == 1 and y.item() == 0:
            return [b.op("Relu", x)]  # jax.nn.relu: max(x, 0.0)
        return [b.op(op_type, x, y)]

    return handle


def _ne(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    return [b.op("Not", b.op("Equal", *ins))]


def _rsqrt(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    return [b.op("Reciprocal", b.op("Sqrt", ins[0]))]


def _square(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    x = b.tensor(ins[0])
    return [b.op("Mul", x, x)]


def _integer_pow(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    y = eqn.params["y"]
    x = b.tensor(ins[0])
    if y == 2:
        return [b.op("Mul", x, x)]
    dtype = eqn.outvars[0].aval.dtype
    return [b.op("Pow", x, np.asarray(y, dtype=dtype))]


def _select_n(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    pred, *cases = ins
    if len(cases) != 2 or eqn.invars[0].aval.dtype != np.bool_:
        raise UnsupportedError("select_n with an integer predicate or more than two cases.")
    return [b.op("Where", pred, cases[1], cases[0])]


def _convert(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    from onnx import helper

    to = helper.np_dtype_to_tensor_dtype(np.dtype(eqn.params["new_dtype"]))
    return [b.op("Cast", ins[0], to=to)]


def _reshape(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    if eqn.params.get("dimensions") is not None:
        raise UnsupportedError("reshape with `dimensions` (a transpose first).")
    return [b.op("Reshape", ins[0], b.reshape_dims(eqn.params["new_sizes"]))]


def _squeeze(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    return [b.op("Squeeze", ins[0], b.ints(eqn.params["dimensions"]))]


def _broadcast_in_dim(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    shape = tuple(eqn.params["shape"])
    dims = eqn.params["broadcast_dimensions"]
    (x,) = ins
    in_shape = eqn.invars[0].aval.shape
    ranked = [1] * len(shape)
    for i, d in enumerate(dims):
        ranked[d] = in_shape[i]
    if isinstance(x, np.ndarray | Bcast):  # a constant: stays small (`Bcast`)
        small = x.array.shape if isinstance(x, Bcast) else x.shape
        target = [1] * len(shape)
        for i, d in enumerate(dims):
            target[d] = small[i]
        small_x = np.reshape(getattr(x, "array", x), target)
        if is_static(shape) and np.prod(shape) <= SMALL:
            return [np.array(np.broadcast_to(small_x, shape), order="C")]
        return [Bcast(small_x, shape)]
    new_axes = [a for a in range(len(shape)) if a not in dims]
    if new_axes:
        x = b.op("Unsqueeze", x, b.ints(new_axes))
    # Expand with 1 where the operand already has the (symbolic) size: ONNX keeps it.
    target = [1 if r == s else s for r, s in zip(ranked, shape, strict=True)]
    if all(t == 1 for t in target):
        return [x]
    return [b.op("Expand", x, b.shape(target))]


def _transpose(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    return [b.transpose(ins[0], eqn.params["permutation"])]


def _concatenate(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    return [b.op("Concat", *ins, axis=int(eqn.params["dimension"]))]


def _stack(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    axis = int(eqn.params["axis"])
    axes = b.ints([axis])
    return [b.op("Concat", *(b.op("Unsqueeze", x, axes) for x in ins), axis=axis)]


def _split(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    sizes = [int(s) for s in eqn.params["sizes"]]
    outs = b.op("Split", ins[0], b.ints(sizes), outputs=len(sizes), axis=int(eqn.params["axis"]))
    return list(outs) if len(sizes) > 1 else [outs]


def _slice(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    p = eqn.params
    shape = eqn.invars[0].aval.shape
    strides = p["strides"] or (1,) * len(shape)
    axes, starts, ends, steps = [], [], [], []
    for a, (lo, hi, st, d) in enumerate(
        zip(p["start_indices"], p["limit_indices"], strides, shape, strict=True)
    ):
        if lo == 0 and st == 1 and (hi is d or (isinstance(d, int) and hi == d)):
            continue  # the whole axis
        if not all(isinstance(v, int) for v in (lo, hi, st)):
            raise UnsupportedError(f"slice of the symbolic axis {a} ({lo}:{hi}:{st}).")
        axes.append(a), starts.append(lo), ends.append(hi), steps.append(st)
    if not axes:
        return [ins[0]]
    return [b.op("Slice", ins[0], b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps))]


def _rev(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    axes = [int(a) for a in eqn.params["dimensions"]]
    n = len(axes)
    return [
        b.op(
            "Slice",
            ins[0],
            b.ints([-1] * n),
            b.ints([-INT64_MAX] * n),
            b.ints(axes),
            b.ints([-1] * n),
        )
    ]


def _pad(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    x, value = ins
    config = [tuple(int(v) for v in c) for c in eqn.params["padding_config"]]
    if any(interior for _, _, interior in config):
        raise UnsupportedError("pad with interior padding.")
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise UnsupportedError("pad with negative padding (a slice).")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    if not any(pads):
        return [x]
    if not isinstance(value, np.ndarray):
        raise UnsupportedError("pad with a computed padding value.")
    return [b.op("Pad", x, b.ints(pads), value.reshape(()), mode="constant")]


def _nchw(b: Builder, x: Value, rank: int) -> Value:
    """NHWC... -> NCHW... (channels last to second)."""
    return b.transpose(x, [0, rank - 1, *range(1, rank - 1)])


def _nhwc(b: Builder, x: Value, rank: int) -> Value:
    return b.transpose(x, [0, *range(2, rank), 1])


def _conv(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    p = eqn.params
    x, w = ins
    dn = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise UnsupportedError("conv_general_dilated with lhs dilation or batch groups.")
    padding = [(int(lo), int(hi)) for lo, hi in p["padding"]]
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        raise UnsupportedError("conv_general_dilated with negative padding.")
    x = b.transpose(x, dn.lhs_spec)  # (N, C, spatial...)
    w = b.transpose(w.array if isinstance(w, Bcast) else w, dn.rhs_spec)  # (O, I, spatial...)
    y = b.op(
        "Conv",
        x,
        w,
        strides=[int(s) for s in p["window_strides"]],
        pads=[lo for lo, _ in padding] + [hi for _, hi in padding],
        dilations=[int(d) for d in p["rhs_dilation"]],
        group=int(p["feature_group_count"]),
    )
    return [b.transpose(y, np.argsort(dn.out_spec))]


def _window(eqn: Any) -> tuple[list[int], list[int], list[int]]:
    """(kernel, strides, ONNX pads) of a reduce_window over the spatial axes of NHWC."""
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    rank = len(window)
    if window[0] != 1 or window[-1] != 1 or strides[0] != 1 or strides[-1] != 1:
        raise UnsupportedError("reduce_window over the batch or channel axis.")
    if tuple(padding[0]) != (0, 0) or tuple(padding[-1]) != (0, 0):
        raise UnsupportedError("reduce_window padding the batch or channel axis.")
    if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
        raise UnsupportedError("reduce_window with dilation.")
    spatial = range(1, rank - 1)
    pads = [int(padding[a][0]) for a in spatial] + [int(padding[a][1]) for a in spatial]
    return [int(window[a]) for a in spatial], [int(strides[a]) for a in spatial], pads


def _reduce_window_max(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    kernel, strides, pads = _window(eqn)
    rank = len(kernel) + 2
    # JAX pads max windows with -inf: padded cells never win, as in ONNX's MaxPool.
    y = b.op("MaxPool", _nchw(b, ins[0], rank), kernel_shape=kernel, strides=strides, pads=pads)
    return [_nhwc(b, y, rank)]


def _reduce_window_sum(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    kernel, strides, pads = _window(eqn)
    rank = len(kernel) + 2
    # Sum = mean over the window counting padded zeros, times its size (the caller divides by
    # the count it wants, e.g. without padding: flax's avg_pool(count_include_pad=False)).
    y = b.op(
        "AveragePool",
        _nchw(b, ins[0], rank),
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        count_include_pad=1,
    )
    y = b.op("Mul", y, np.asarray(np.prod(kernel), dtype=eqn.outvars[0].aval.dtype))
    return [_nhwc(b, y, rank)]


def _reduce(op_type: str) -> Handler:
    def handle(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
        axes = [int(a) for a in eqn.params["axes"]]
        if op_type == "ReduceSum":  # axes an input since opset 13
            return [b.op(op_type, ins[0], b.ints(axes), keepdims=0)]
        return [b.op(op_type, ins[0], axes=axes, keepdims=0)]  # an attribute until opset 18

    return handle


def _dot_general(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.array if isinstance(v, Bcast) else v for v in ins)
    lr, rr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    left = [next(letters) for _ in range(lr)]
    right = [next(letters) for _ in range(rr)]
    for i, j in zip((*lc, *lb), (*rc, *rb), strict=True):
        right[j] = left[i]
    out = [left[i] for i in lb]
    out += [c for i, c in enumerate(left) if i not in lc and i not in lb]
    out += [c for j, c in enumerate(right) if j not in rc and j not in rb]
    equation = f"{''.join(left)},{''.join(right)}->{''.join(out)}"
    return [b.op("Einsum", lhs, rhs, equation=equation)]


def _static_gather(b: Builder, eqn: Any, operand: Value, starts: np.ndarray) -> Value:
    """A gather of one window at constant start indices: a slice, less the collapsed axes
    (what indexing like `y[:, 1:5, 0:4, a, c]` becomes on a symbolic batch)."""
    p = eqn.params
    dn = p["dimension_numbers"]
    shape, sizes = eqn.invars[0].aval.shape, p["slice_sizes"]
    rank = len(shape)
    if dn.operand_batching_dims or tuple(dn.offset_dims) != tuple(
        range(rank - len(dn.collapsed_slice_dims))
    ):
        raise UnsupportedError(f"gather of one window with offset dims {dn.offset_dims}.")
    axes, begin, end = [], [], []
    for k, a in enumerate(dn.start_index_map):
        if not isinstance(shape[a], int):
            raise UnsupportedError("gather at a start index along the symbolic batch.")
        lo = int(np.clip(starts[k], 0, shape[a] - sizes[a]))  # JAX clamps windows in bounds
        axes.append(a), begin.append(lo), end.append(lo + int(sizes[a]))
    y = b.op("Slice", operand, b.ints(begin), b.ints(end), b.ints(axes))
    if dn.collapsed_slice_dims:
        y = b.op("Squeeze", y, b.ints(list(dn.collapsed_slice_dims)))
    return y


def _gather(b: Builder, eqn: Any, ins: list[Value]) -> list[Value]:
    """The gather form `jnp.take` makes: whole slices along one axis `a` at indices
    `(..., 1)` (a table lookup, or `x[..., ::-1]` on a symbolic shape), whose batch axes land
    at position `a` of the output; as ONNX's `Gather(axis=a)`."""
    operand, indices = ins
    if isinstance(indices, np.ndarray) and indices.ndim == 1:
        return [_static_gather(b, eqn, operand, indices)]
    p = eqn.params
    dn = p["dimension_numbers"]
    shape = eqn.invars[0].aval.shape
    batch = eqn.invars[1].aval.shape[:-1]
    (a,) = dn.collapsed_slice_dims if len(dn.collapsed_slice_dims) == 1 else (None,)
    kept = [d for d in range(len(shape)) if d != a]
    offset = (
        [*range(a), *range(a + len(batch), len(shape) - 1 + len(batch))] if a is not None else []
    )
    if (
        a is None
        or tuple(dn.start_index_map) != (a,)
        or tuple(dn.offset_dims) != tuple(offset)
        or dn.operand_batching_dims
        or eqn.invars[1].aval.shape[-1] != 1
        or p["slice_sizes"][a] != 1
        or any(
            p["slice_sizes"][d] is not shape[d] and p["slice_sizes"][d] != shape[d] for d in kept
        )
    ):
        raise UnsupportedError(f"gather other than a take along one axis ({dn}).")
    if isinstance(indices, np.ndarray) and not np.all((indices >= 0) & (indices < shape[a])):
        raise UnsupportedError("gather with constant indices out of bounds.")
    idx = b.op("Squeeze", indices, b.ints([len(batch)]))
    return [b.op("Gather", operand, idx, axis=a)]


HANDLERS: dict[str, Handler] = {
    **{k: _unary(v) for k, v in UNARY.items()},
    **{k: _binary(v) for k, v in BINARY.items()},
    "ne": _ne,
    "rsqrt": _rsqrt,
    "square": _square,
    "integer_pow": _integer_pow,
    "select_n": _select_n,
    "convert_element_type": _convert,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "concatenate": _concatenate,
    "stack": _stack,
    "split": _split,
    "slice": _slice,
    "rev": _rev,
    "pad": _pad,
    "conv_general_dilated": _conv,
    "reduce_window_max": _reduce_window_max,
    "reduce_window_sum": _reduce_window_sum,
    "reduce_sum": _reduce("ReduceSum"),
    "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "dot_general": _dot_general,
    "gather": _gather,
}


OPS = OpTable(HANDLERS, ELEMENTWISE, EVALUATORS)
