"""Small onnx-ir helpers shared by the core and the passes."""

from __future__ import annotations

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
