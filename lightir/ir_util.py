"""Small onnx-ir helpers shared by the core and the passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def clone_model(model: ir.Model) -> ir.Model:
    """A structural copy whose tensors are shared but whose types and shapes are not.

    ``ir.Model.clone`` shares the type objects of values between the copy and the original,
    so ``value.dtype = ...`` on one changes both; each value of the copy gets its own.
    """
    copy = model.clone()
    copy.meta.update(model.meta)
    for graph in copy.graphs():
        values = [*graph.inputs, *graph.initializers.values()]
        values.extend(out for node in graph for out in node.outputs)
        for value in values:
            if isinstance(value.type, ir.TensorType):
                value.type = ir.TensorType(value.type.dtype)
            if value.shape is not None:
                value.shape = value.shape.copy()
    return copy


def opset_of(model: ir.Model) -> int:
    """The model's ai.onnx opset version (0 when it imports none)."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant array; None for a computed value or a graph input."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def node_label(node: ir.Node) -> str:
    """The node's name, or its op and first output for an unnamed node (for messages)."""
    return node.name or f"{node.op_type}->{node.outputs[0].name}"
