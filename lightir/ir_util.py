"""Small onnx-ir helpers shared by the core and the passes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes


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


def crossing(model: ir.Model, cut: int) -> list[str]:
    """Values computed before node ``cut`` (graph inputs included) and read from it on.

    What a run of the graph from node ``cut`` on must be fed: a residual's skip crosses too,
    and so does a graph output computed before the cut.
    """
    nodes = list(model.graph)
    before = {v.name for v in model.graph.inputs}
    for node in nodes[:cut]:
        before.update(v.name for v in node.outputs)
    needed: list[str] = []
    for node in nodes[cut:]:
        for value in node.inputs:
            if value is not None and value.name in before and value.name not in needed:
                needed.append(value.name)
    for value in model.graph.outputs:
        if value.name in before and value.name not in needed:
            needed.append(value.name)
    return needed


def has_subgraphs(model: ir.Model) -> bool:
    """Whether a node holds a graph (If, Loop, Scan): values it reads are not its inputs."""
    return any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for node in model.graph
        for attr in node.attributes.values()
    )


def cut_graph(
    model: ir.Model, inputs: Sequence[str], outputs: Sequence[str] | None = None
) -> ir.Model | None:
    """``model`` (changed in place: give it a copy) run from the values ``inputs``.

    Those values become the graph's inputs (the nodes computing them go, with everything
    else no output needs); with ``outputs``, those values are the graph's outputs instead of
    its own. Inputs nothing reads any more are dropped. None when a name is not a value of
    the graph.
    """
    graph = model.graph
    values = {v.name: v for v in graph.inputs}
    values.update({v.name: v for n in graph for v in n.outputs})
    wanted = list(inputs) + list(outputs or [])
    if any(name not in values for name in wanted):
        return None
    if outputs is not None:
        graph.outputs.clear()
        graph.outputs.extend(values[name] for name in outputs)
    old_inputs = list(graph.inputs)
    new_inputs = []
    for name in inputs:
        value = values[name]
        if value in old_inputs:
            new_inputs.append(value)
            continue
        fresh = ir.Value(name=name, type=value.type, shape=value.shape)
        value.name = f"{name}__before_cut"
        value.replace_all_uses_with(fresh, replace_graph_outputs=True)
        new_inputs.append(fresh)
    graph.inputs.clear()
    graph.inputs.extend(new_inputs)
    common_passes.RemoveUnusedNodesPass()(model)
    read = {v for node in graph for v in node.inputs if v is not None}
    read.update(graph.outputs)
    kept = [v for v in graph.inputs if v in read]
    graph.inputs.clear()
    graph.inputs.extend(kept)
    return model
