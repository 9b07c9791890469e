"""Import canonicalization: bring models other tools exported to the form the passes expect.

Run once on every loaded model, before the first pass, and verified like an exact pass (the
report shows it as the ``canonicalize`` row). Each step computes the same function:

1. **Non-positive dims become symbolic.** Paddle2ONNX and some converters store an unknown
   dim as ``dim_value: -1`` (or 0). A graph input or output dim that is not positive becomes
   the symbolic dim ``{input}_{axis}`` (settable with ``--dim``); such dims in intermediate
   value infos are cleared, and shape inference recomputes them.
2. **Weight-holding constants become initializers.** ``Constant`` nodes with a tensor value
   and ``ConstantOfShape`` of a constant shape (the onnx model-zoo test data stores every
   weight that way) are lifted, so passes see the weights of Conv, Gemm and BN wherever the
   exporter put them.
3. **Identity chains go** (onnx-ir's ``IdentityEliminationPass``: a graph output keeps its
   name, an Identity between a graph input and a graph output stays).
4. **Old IR versions.** IR version 3 requires every initializer to be a graph input as
   well, so every initializer a pass adds would break the model. Such models are raised to
   IR version 4 (valid for every opset IR 3 allows), and initializers are no longer listed as
   inputs (they were not inputs a user could feed anyway: lightir never feeds them).
5. **Two-input Sum becomes Add.** Old exports (the onnx test ShuffleNet, Caffe2 converts)
   write residual additions as ``Sum``; ``a + b`` is the same rounding either way, and the
   passes that know residual Adds (channel pruning, int8's QLinearAdd) then see them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

logger = logging.getLogger(__name__)

# IR version 4 dropped the rule that every initializer is also a graph input.
MIN_IR_VERSION = 4
# ConstantOfShape results larger than this stay nodes (2 GiB of float32).
MAX_LIFTED_ELEMENTS = 2**29


def canonicalize(model: ir.Model) -> dict[str, Any]:
    """Canonicalize ``model`` in place (see module docstring); returns what was done."""
    stats: dict[str, Any] = {}
    if model.ir_version < MIN_IR_VERSION:
        stats["ir_version"] = f"{model.ir_version} -> {MIN_IR_VERSION}"
        model.ir_version = MIN_IR_VERSION
        listed = sum(1 for v in model.graph.inputs if v.name in model.graph.initializers)
        if listed:
            common_passes.RemoveInitializersFromInputsPass()(model)
            stats["initializer_inputs_unlisted"] = listed
    dims = _symbolic_dims(model)
    if dims:
        stats["symbolic_dims"] = dims
    lifted = _lift_constants(model)
    if lifted:
        stats["constants_lifted"] = lifted
    sums = _sums_as_adds(model)
    if sums:
        stats["sums_as_adds"] = sums
    identities = sum(1 for graph in model.graphs() for node in graph if node.op_type == "Identity")
    if identities:
        common_passes.IdentityEliminationPass()(model)
        left = sum(1 for graph in model.graphs() for node in graph if node.op_type == "Identity")
        if identities - left:
            stats["identities_removed"] = identities - left
    if stats:
        common_passes.RemoveUnusedNodesPass()(model)
    return stats


def _sums_as_adds(model: ir.Model) -> int:
    """Replace every two-input ``Sum`` by an ``Add`` of the same inputs; returns the count."""
    count = 0
    for graph in model.graphs():
        for node in list(graph):
            if node.op_type != "Sum" or node.domain not in ("", "ai.onnx"):
                continue
            if len(node.inputs) != 2 or any(v is None for v in node.inputs):
                continue
            add = ir.node("Add", list(node.inputs), name=node.name)
            out, new = node.outputs[0], add.outputs[0]
            if out.type is not None:
                new.type, new.shape = out.type, out.shape
            graph.insert_before(node, add)
            out.replace_all_uses_with(new, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            new.name = out.name
            count += 1
    return count


def _symbolic_dims(model: ir.Model) -> list[str]:
    """Non-positive dim values -> symbolic dims on graph inputs and outputs."""
    changed = []
    graph = model.graph
    for kind, values in (("input", graph.inputs), ("output", graph.outputs)):
        for value in values:
            if value.shape is None:
                continue
            dims = list(value.shape)
            bad = [axis for axis, d in enumerate(dims) if isinstance(d, int) and d <= 0]
            if not bad:
                continue
            for axis in bad:
                dims[axis] = ir.SymbolicDim(f"{value.name}_{axis}")
                changed.append(f"{kind} '{value.name}' axis {axis}")
            value.shape = ir.Shape(dims)
    io_values = {*graph.inputs, *graph.outputs}
    for g in model.graphs():
        for node in g:
            for out in node.outputs:
                if out in io_values or out.shape is None:
                    continue
                if any(isinstance(d, int) and d <= 0 for d in out.shape):
                    out.shape = None
    return changed


def _lift_constants(model: ir.Model) -> int:
    """Constant (tensor value) and ConstantOfShape(constant shape) -> initializers."""
    lifted = 0
    for graph in model.graphs():
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
                continue
            array = _constant_array(node)
            if array is None:
                continue
            out = node.outputs[0]
            if out.is_graph_output():
                continue  # an output must be produced by a node in ONNX < IR 10 tools
            name = out.name or f"{node.name}_value"
            value = ir.Value(
                name=f"{name}__lifting",  # the node's output holds the name until removed
                type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                shape=ir.Shape(array.shape),
                const_value=ir.tensor(array, name=name),
            )
            out.replace_all_uses_with(value)
            graph.remove(node, safe=True)
            value.name = name
            value.const_value.name = name
            graph.register_initializer(value)
            lifted += 1
    return lifted


def _constant_array(node: ir.Node) -> np.ndarray | None:
    if node.op_type == "Constant":
        attr = node.attributes.get("value")
        if attr is None or attr.type != ir.AttributeType.TENSOR or attr.value is None:
            return None
        if attr.value.dtype in (ir.DataType.STRING,):
            return None
        return np.asarray(attr.value.numpy())
    if node.op_type == "ConstantOfShape":
        shape = node.inputs[0].const_value if node.inputs and node.inputs[0] else None
        if shape is None or node.inputs[0].is_graph_input():
            return None
        dims = [int(d) for d in np.asarray(shape.numpy()).ravel()]
        if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.int64)) > MAX_LIFTED_ELEMENTS:
            return None
        attr = node.attributes.get("value")
        fill = (
            np.asarray(attr.value.numpy()).ravel()
            if attr is not None and attr.value is not None
            else np.zeros(1, np.float32)
        )
        return np.full(dims, fill[0], dtype=fill.dtype)
    return None
