"""JAX -> ONNX: a translator of the jaxpr primitives the registered models use.

Why a translator of our own: jax2onnx 0.17.1, the maintained JAX-to-ONNX converter, fails on
these models (its `flax.nnx` pooling patches reject positional window shapes and explicit
padding; converting the plain jaxpr instead yields a 4-D `MaxPool` that ONNX Runtime refuses
and fails on a symbolic batch in `lax.pad`), and it pins orbax-checkpoint < 0.11.37, which
conflicts with ours; tf2onnx cannot read the jax2tf SavedModel (its `XlaCallModule` op). The
models here need a few dozen primitives, which this module and `onnx_ops` translate with the
`onnx` package alone.

How (`jaxpr_to_onnx`):
- the function is traced by `jax.make_jaxpr` with a symbolic batch dimension
  (`jax.export.symbolic_shape`), so every shape that depends on the batch says so;
- sub-jaxprs (`jit`, `custom_jvp_call`, `custom_vjp_call`, `closed_call`, `remat`) are
  inlined;
- every equation whose inputs are all known at conversion time (the weights, literals, what
  is computed from them: BatchNorm folding, kernel phase sums, resize matrices) is evaluated
  then, with JAX, and its result becomes an initializer; a constant broadcast to a shape with
  the symbolic batch stays small (`Bcast`) and relies on ONNX broadcasting;
- every other equation becomes ONNX nodes (`onnx_ops.HANDLERS`); the batch stays symbolic:
  reshapes write it as -1, broadcasts as 1, and a shape that needs its value reads it from the
  first graph input.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import onnx
from jax.extend import core, source_info_util
from onnx import helper, numpy_helper

OPSET = 17  # ONNX Runtime, OpenVINO and TensorRT 8.6+ all implement it
SUB_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
SMALL = 1 << 16  # a broadcast constant of up to this many elements is stored expanded


class UnsupportedError(NotImplementedError):
    """A primitive (or a form of one) the translator does not implement."""


@dataclasses.dataclass(frozen=True)
class Bcast:
    """A constant broadcast to `shape` (which may hold the symbolic batch), kept small: a
    bias broadcast to a (batch, H, W, C) activation is stored as (1, 1, 1, C).

    `array` has `len(shape)` dimensions, each equal to the one of `shape` or 1: ONNX's
    (numpy's) broadcasting expands it where an elementwise node meets a full tensor.
    """

    array: np.ndarray
    shape: tuple[Any, ...]


Value = str | np.ndarray | Bcast  # an ONNX tensor name, a constant, a broadcast constant


def is_static(shape: Sequence[Any]) -> bool:
    return all(isinstance(d, int) for d in shape)


def is_const(v: Value) -> bool:
    return not isinstance(v, str)


def const_array(v: Value) -> np.ndarray:
    """A constant's value at its small shape (a `Bcast`'s un-broadcast array)."""
    return v.array if isinstance(v, Bcast) else np.asarray(v)


class Builder:
    """Collects ONNX nodes and initializers while a jaxpr is walked.

    Attributes:
      batch_input: a graph input whose dimension 0 is the symbolic batch (to read its value).
    """

    def __init__(self, batch_input: str | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.batch_input = batch_input
        self._names: collections.Counter[str] = collections.Counter()
        self._consts: dict[int, tuple[np.ndarray, str]] = {}
        self.transposed: dict[str, tuple[str, tuple[int, ...]]] = {}  # Transpose out -> in
        self._batch: str | None = None

    def name(self, hint: str) -> str:
        self._names[hint] += 1
        return f"{hint}_{self._names[hint]}"

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        """An initializer holding `array` (the same object is stored once)."""
        key = id(array)
        if key not in self._consts:
            name = self.name(hint)
            self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
            self._consts[key] = (array, name)  # keeps `array` alive: its id stays unique
        return self._consts[key][1]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def op(self, op_type: str, *inputs: Value | None, outputs: int = 1, **attrs: Any) -> Any:
        """Appends one node; returns its output name (a list of them if `outputs` > 1).
        Constant inputs become initializers; None is an omitted optional input."""
        names = ["" if v is None else self.tensor(v) for v in inputs]
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, names, outs, name=outs[0], **attrs))
        return outs[0] if outputs == 1 else outs

    def tensor(self, v: Value) -> str:
        """`v` as an ONNX tensor name (a `Bcast` is expanded to its full shape)."""
        if isinstance(v, str):
            return v
        if isinstance(v, Bcast):
            if is_static(v.shape) and np.prod(v.shape) <= SMALL:
                return self.const(np.array(np.broadcast_to(v.array, v.shape), order="C"))
            return self.op("Expand", v.array, self.shape(v.shape))
        return self.const(np.asarray(v))

    def batch(self) -> str:
        """The batch size as a 1-D int64 tensor of one element (read from the first input)."""
        if self._batch is None:
            if self.batch_input is None:
                raise UnsupportedError("A symbolic shape with no input to read the batch from.")
            shape = self.op("Shape", self.batch_input)
            self._batch = self.op("Slice", shape, self.ints([0]), self.ints([1]))
        return self._batch

    def shape(self, shape: Sequence[Any]) -> str:
        """A 1-D int64 tensor holding `shape`, whose symbolic dimensions are the batch."""
        if is_static(shape):
            return self.ints(shape)
        parts = [self.batch() if not isinstance(d, int) else self.ints([d]) for d in shape]
        for d in shape:
            if not isinstance(d, int) and str(d) != "batch":
                raise UnsupportedError(f"Symbolic dimension {d} (only the batch is supported).")
        return self.op("Concat", *parts, axis=0)

    def reshape_dims(self, shape: Sequence[Any]) -> str:
        """A Reshape target: the (one) symbolic batch dimension written as -1."""
        symbolic = [d for d in shape if not isinstance(d, int)]
        if len(symbolic) > 1 or any(str(d) != "batch" for d in symbolic):
            return self.shape(shape)
        return self.ints([d if isinstance(d, int) else -1 for d in shape])

    def transpose(self, v: Value, perm: Sequence[int]) -> Value:
        """`v` transposed (ONNX `perm`: output axis i is input axis perm[i]); transposes of
        transposes are composed, identities dropped, constants transposed here."""
        perm = tuple(int(p) for p in perm)
        if perm == tuple(range(len(perm))):
            return v
        if isinstance(v, np.ndarray):
            return np.transpose(v, perm)
        v = self.tensor(v)
        if v in self.transposed:
            source, inner = self.transposed[v]
            return self.transpose(source, [inner[p] for p in perm])
        out = self.op("Transpose", v, perm=list(perm))
        self.transposed[out] = (v, perm)
        return out


Handler = Callable[[Builder, Any, list[Value]], list[Value]]
Evaluator = Callable[..., np.ndarray]  # (*arrays, **params) -> array, NumPy only


class OpTable(NamedTuple):
    """How to translate primitives (`onnx_ops.OPS`).

    Attributes:
      handlers: primitive name -> ONNX nodes for it (`Handler`).
      elementwise: primitives that broadcast (a `Bcast` input folds on its small array).
      evaluators: primitive name -> a NumPy computation for folding constants (others are
        computed by JAX's own implementation, one XLA compilation per shape: slower).
    """

    handlers: dict[str, Handler]
    elementwise: frozenset[str]
    evaluators: dict[str, Evaluator]


def sub_jaxpr(eqn: Any) -> core.ClosedJaxpr | None:
    """The jaxpr a call-like equation runs (jit, custom_jvp_call, ...), closed, or None."""
    for key in SUB_JAXPR_PARAMS:
        sub = eqn.params.get(key)
        if isinstance(sub, core.ClosedJaxpr):
            return sub
        if isinstance(sub, core.Jaxpr):
            return core.ClosedJaxpr(sub, ())
    return None


def _literal(v: Any) -> np.ndarray:
    return np.asarray(v.val, dtype=v.aval.dtype)


def _evaluate(eqn: Any, arrays: list[np.ndarray], ops: OpTable) -> list[np.ndarray]:
    name = eqn.primitive.name
    if name in ops.evaluators:
        out = ops.evaluators[name](*arrays, **eqn.params)
        return [np.asarray(o) for o in out] if isinstance(out, list) else [np.asarray(out)]
    params = eqn.primitive.get_bind_params(eqn.params)
    with jax.default_device(jax.devices("cpu")[0]):
        outs = eqn.primitive.bind(*arrays, **params)
    return [np.asarray(o) for o in (outs if eqn.primitive.multiple_results else [outs])]


def fold(eqn: Any, ins: list[Value], ops: OpTable) -> list[Value] | None:
    """The equation's outputs computed now, or None where that is not possible (an input is
    not constant, or an output shape holds the batch) or not wanted (a broadcast, which
    `onnx_ops` keeps small as a `Bcast`). Elementwise equations on `Bcast`s compute on the
    small arrays and give a `Bcast`."""
    if eqn.primitive.name == "broadcast_in_dim" or not all(is_const(v) for v in ins):
        return None
    elementwise = eqn.primitive.name in ops.elementwise
    shapes = [tuple(v.aval.shape) for v in eqn.outvars]
    static = all(is_static(s) for s in shapes)
    small = any(isinstance(v, Bcast) for v in ins) or not static
    if small and not (elementwise and len(shapes) == 1):
        if not static or any(isinstance(v, Bcast) and not is_static(v.shape) for v in ins):
            return None  # e.g. a reduction over the batch: left to its handler
        arrays = [np.broadcast_to(v.array, v.shape) if isinstance(v, Bcast) else v for v in ins]
    else:
        arrays = [const_array(v) for v in ins]
        if small:
            common = np.broadcast_shapes(*(a.shape for a in arrays))
            arrays = [np.broadcast_to(a, common) for a in arrays]
    outs = _evaluate(eqn, arrays, ops)
    dtypes = [v.aval.dtype for v in eqn.outvars]
    outs = [o.astype(d, copy=False) for o, d in zip(outs, dtypes, strict=True)]
    if small and elementwise and len(shapes) == 1:
        return [Bcast(outs[0], shapes[0])]
    return [np.array(np.broadcast_to(o, s), order="C") for o, s in zip(outs, shapes, strict=True)]


def run_jaxpr(
    b: Builder,
    jaxpr: core.Jaxpr,
    consts: Sequence[Any],
    args: Sequence[Value],
    ops: OpTable,
) -> list[Value]:
    """Walks `jaxpr` on `args`, appending nodes to `b`; returns its outputs' values."""
    env: dict[Any, Value] = {}

    def read(v: Any) -> Value:
        return _literal(v) if isinstance(v, core.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = np.asarray(val)
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        sub = sub_jaxpr(eqn)
        name = eqn.primitive.name
        if sub is not None:
            outs = run_jaxpr(b, sub.jaxpr, sub.consts, ins, ops)
        else:
            outs = fold(eqn, ins, ops)
            if outs is None:
                if name not in ops.handlers:
                    raise UnsupportedError(
                        f"No ONNX translation for the JAX primitive {name!r} "
                        f"({eqn.params}); see qatacov_jax/export/onnx_ops.py."
                    )
                try:
                    outs = ops.handlers[name](b, eqn, ins)
                except UnsupportedError as e:
                    where = source_info_util.summarize(eqn.source_info)
                    raise UnsupportedError(f"{e} At {where}.") from None
        for var, val in zip(eqn.outvars, outs, strict=True):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def _value_info(name: str, dtype: Any, shape: Sequence[Any]) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), dims)


def jaxpr_to_onnx(
    closed: core.ClosedJaxpr,
    input_names: Sequence[str],
    output_names: Sequence[str],
    ops: OpTable,
    *,
    graph_name: str = "model",
    opset: int = OPSET,
) -> onnx.ModelProto:
    """An ONNX model computing `closed` (flat inputs and outputs, named in order).

    Raises:
      UnsupportedError: the jaxpr uses a primitive (or form) with no translation.
    """
    b = Builder(batch_input=input_names[0] if input_names else None)
    outs = run_jaxpr(b, closed.jaxpr, closed.consts, list(input_names), ops)
    for name, v in zip(output_names, outs, strict=True):
        # Every output gets a node of its own name (Identity is free in ONNX Runtime).
        b.nodes.append(helper.make_node("Identity", [b.tensor(v)], [name], name=name))
    graph = helper.make_graph(
        b.nodes,
        graph_name,
        [
            _value_info(n, v.aval.dtype, v.aval.shape)
            for n, v in zip(input_names, closed.jaxpr.invars, strict=True)
        ],
        [
            _value_info(n, v.aval.dtype, v.aval.shape)
            for n, v in zip(output_names, closed.jaxpr.outvars, strict=True)
        ],
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what opset 17 needs; readable by every runtime that reads opset 17
    return model
