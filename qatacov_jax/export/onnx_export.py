"""`--format onnx`: the serving function as an ONNX model (`model.onnx`), run by ONNX Runtime.

The same contract as the SavedModel (`export.serving`): inputs name -> `(batch, H, W, 1)`
uint8 (or float32 [0, 1]) grey pixels at the model size, outputs name -> `(batch, H, W, 1)`
float32 probabilities, BatchNorm folded and preprocessing + sigmoid inside, an optional lung
model in the same graph, and a symbolic `batch` dimension unless a fixed batch is asked for.
The translation is ours (`onnx_graph`, `onnx_ops`: why, in `onnx_graph`'s docstring).

`to_float16(model)` converts a translated graph's weights and activations to float16 (inputs
and outputs keep their dtypes); ONNX Runtime runs it on CPU, within 3e-2 of float32 on the
models measured (docs/export.md#onnx). `scripts/export.py` writes float32.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import onnx
from onnx import helper, numpy_helper

from qatacov_jax.export.onnx_graph import OPSET, UnsupportedError, jaxpr_to_onnx
from qatacov_jax.export.onnx_ops import OPS
from qatacov_jax.export.onnx_runtime import ONNX_FILE
from qatacov_jax.export.serving import ServingModel

OUTPUT_SUFFIX = "_probability"


def output_tensor(name: str) -> str:
    """The ONNX output tensor of output `name` (ONNX names each tensor once, and the inputs
    already hold the plain names)."""
    return f"{name}{OUTPUT_SUFFIX}"


def _leaf_name(path: Any) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def serving_to_onnx(serving: ServingModel) -> onnx.ModelProto:
    """The ONNX model of a serving function (its state embedded as initializers).

    Raises:
      UnsupportedError: the model uses a primitive the translator lacks, or a bfloat16
        serving function (ONNX Runtime's CPU kernels have no bfloat16 convolutions).
    """
    if serving.compute_dtype != "float32":
        raise UnsupportedError(
            f"--format onnx exports float32 models, not {serving.compute_dtype} (ONNX "
            "Runtime's CPU kernels have no bfloat16 convolutions)."
        )
    specs = serving.input_specs()
    closed = jax.make_jaxpr(serving.closed())(specs)
    in_paths = [_leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(specs)[0]]
    out_shapes = jax.eval_shape(serving.closed(), specs)
    out_paths = [
        output_tensor(_leaf_name(p)) for p, _ in jax.tree_util.tree_flatten_with_path(out_shapes)[0]
    ]
    model = jaxpr_to_onnx(closed, in_paths, out_paths, OPS)
    model.producer_name = "qatacov_jax.export"
    onnx.checker.check_model(model, full_check=False)
    return model


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float16: float32 initializers stored as float16, casts to
    float32 made casts to float16, float32 graph inputs cast on entry and outputs cast back to
    float32 (inputs and outputs keep their dtypes).

    ONNX Runtime runs it on CPU; error against float32: docs/export.md#onnx.
    """
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    model = copy.deepcopy(model)
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == f32:
            half = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(half, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f32:
                attr.i = f16
    entry = []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == f32:
            half_name = f"{inp.name}_float16"
            for node in graph.node:
                node.input[:] = [half_name if i == inp.name else i for i in node.input]
            entry.append(helper.make_node("Cast", [inp.name], [half_name], to=f16))
    outputs = {o.name for o in graph.output}
    for node in graph.node:  # each output is an Identity of its value (`jaxpr_to_onnx`)
        if node.op_type == "Identity" and node.output[0] in outputs:
            node.op_type = "Cast"
            node.attribute.append(helper.make_attribute("to", f32))
    nodes = [*entry, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=False)
    return model


def export_onnx(
    serving: ServingModel,
    directory: Path,
    platforms: Sequence[str] = ("cpu",),
    *,
    float16: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Writes `directory/model.onnx` (`artifact.WRITERS["onnx"]`); `float16`: the graph
    computes in float16 (`to_float16`; pixels in and probabilities out as before).

    Returns:
      (artifact path relative to `directory`, what the manifest's `serving` records).
    """
    model = serving_to_onnx(serving)
    if float16:
        model = to_float16(model)
    onnx.save_model(model, str(directory / ONNX_FILE))
    return ONNX_FILE, {
        "load": "onnxruntime.InferenceSession(PATH) (ONNX Runtime alone, no JAX)",
        "call": "session.run(None, {name: images}) -> [probabilities per output, in order]",
        "opset": OPSET,
        "ir_version": int(model.ir_version),
        "onnx": onnx.__version__,
        "translator": "qatacov_jax.export.onnx_graph (jaxpr -> ONNX)",
        "batch_dimension": "batch" if serving.batch is None else serving.batch,
        "input_tensors": {n: n for n in serving.names},
        "output_tensors": {n: output_tensor(n) for n in serving.names},
    }
