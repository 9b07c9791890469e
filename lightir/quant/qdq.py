"""Write a :class:`~lightir.quant.plan.QdqPlan` into the model: Q/DQ pairs and int8 weights.

Activations get a QuantizeLinear -> DequantizeLinear pair with per-tensor uint8 parameters;
weights become int8 initializers, symmetric per output channel, behind a DequantizeLinear
(no float copy is kept); biases become int32 with scale ``s_x * s_w``. A Relu or Clip(0, 6)
right after a quantized op is absorbed into the output's range (zero point 0), as
onnxruntime's QDQ fusion expects.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir.ir_util import constant, node_label
from lightir.pass_base import PassContext
from lightir.quant.bias import correct_biases, correctable_layers
from lightir.quant.plan import (
    WEIGHTED,
    QdqPlan,
    absorbed_activation,
    activations,
    weight_axis,
)
from lightir.rewrite import add_initializer, unique_name, unique_node_name


def write_qdq(
    model: ir.Model,
    plan: QdqPlan,
    selected: Collection[ir.Node],
    *,
    reduce_range: bool,
    bias_correct: bool,
    context: PassContext,
) -> dict:
    """Quantize the ``selected`` nodes of ``model`` and put Q/DQ pairs around them.

    ``model`` is the one ``plan`` was made on, or a copy of it: the plan's tensors are found
    by name, which the IR keeps unique.
    """
    graph = model.graph
    nodes = [n for n in graph if n in selected]
    wanted = {v.name for v in activations(nodes)}
    if bias_correct:
        bits = 7 if reduce_range else 8
        correct_biases(
            correctable_layers(model, set(nodes)), plan.means, bits, context, quantized=True
        )
    for node in nodes:
        absorbed = absorbed_activation(node)
        if absorbed is not None:
            # The output Q (zero point 0 at 0) does the clamp: the Relu / Clip goes.
            out, relu_out = node.outputs[0], absorbed.outputs[0]
            relu_out.replace_all_uses_with(out)
            graph.remove(absorbed, safe=True)
            out.name = relu_out.name
    levels = 63 if reduce_range else 127
    for node in nodes:
        if node.op_type in WEIGHTED:
            quantize_weight(node, plan.params[node.inputs[0].name][0], levels)
    by_name = {v.name: v for v in graph.inputs}
    by_name.update({o.name: o for n in graph for o in n.outputs})
    for name in wanted:
        if name in by_name and name in plan.params:
            insert_qdq(by_name[name], *plan.params[name])
    common_passes.RemoveUnusedNodesPass()(model)
    return {
        "int8_ops": sorted(node_label(n) for n in nodes),
        "qdq_pairs": len(wanted),
        "int8_weights": sum(1 for n in nodes if n.op_type in WEIGHTED),
    }


def quantize_weight(node: ir.Node, input_scale: float, levels: int = 127) -> None:
    """Replace the node's weight by int8 codes and its bias by int32, each behind a DQ."""
    graph = node.graph
    axis = weight_axis(node)
    weight = constant(node.inputs[1]).astype(np.float64)
    moved = np.moveaxis(weight, axis, 0)
    peak = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(peak > 0, peak / levels, 1.0)
    bias = constant(node.inputs[2]) if len(node.inputs) > 2 else None
    if bias is not None and bias.size == scale.size:
        # The int32 bias is bias / (s_x * s_w): a channel with near-zero weights and a
        # real bias (a dead channel of PP-OCRv6's detector) would overflow int32. Such a
        # channel gets the smallest weight scale that keeps its bias in range.
        limit = 0.5 * np.iinfo(np.int32).max * input_scale
        scale = np.maximum(scale, np.abs(bias.astype(np.float64).reshape(-1)) / limit)
    shape = [1] * weight.ndim
    shape[axis] = -1
    codes = np.clip(np.round(weight / scale.reshape(shape)), -levels, levels).astype(np.int8)
    base = node.inputs[1].name
    dq = _dequantize(
        node,
        "weight",
        add_initializer(graph, f"{base}_int8", codes),
        add_initializer(graph, f"{base}_scale", scale.astype(np.float32)),
        add_initializer(graph, f"{base}_zero_point", np.zeros_like(scale, np.int8)),
        axis,
    )
    dq.name = unique_name(graph, f"{base}_dequantized")
    dq.dtype, dq.shape = ir.DataType.FLOAT, ir.Shape(weight.shape)
    node.replace_input_with(1, dq)
    if bias is None or bias.size != scale.size:
        return
    bias_scale = (input_scale * scale).astype(np.float32)
    q_bias = np.round(bias.astype(np.float64).reshape(-1) / bias_scale).astype(np.int32)
    bname = node.inputs[2].name
    dq_bias = _dequantize(
        node,
        "bias",
        add_initializer(graph, f"{bname}_int32", q_bias),
        add_initializer(graph, f"{bname}_scale", bias_scale),
        add_initializer(graph, f"{bname}_zero_point", np.zeros_like(q_bias)),
        0,
    )
    dq_bias.name = unique_name(graph, f"{bname}_dequantized")
    dq_bias.dtype, dq_bias.shape = ir.DataType.FLOAT, ir.Shape([q_bias.size])
    node.replace_input_with(2, dq_bias)


def _dequantize(node: ir.Node, what: str, q, s, z, axis: int) -> ir.Value:
    dq = ir.node(
        "DequantizeLinear",
        [q, s, z],
        {"axis": axis},
        name=unique_node_name(node.graph, f"{node.name}_{what}_dq"),
    )
    node.graph.insert_before(node, dq)
    return dq.outputs[0]


def insert_qdq(value: ir.Value, scale: float, zero_point: int) -> None:
    """Put ``QuantizeLinear -> DequantizeLinear`` (uint8) between ``value`` and its users."""
    graph = value.graph
    users = list(value.uses())  # before the Q node becomes one
    s_value = add_initializer(graph, f"{value.name}_scale", np.array(scale, np.float32))
    z_value = add_initializer(graph, f"{value.name}_zero_point", np.array(zero_point, np.uint8))
    quant = ir.node(
        "QuantizeLinear",
        [value, s_value, z_value],
        name=unique_node_name(graph, f"{value.name}_q"),
    )
    quant.outputs[0].name = unique_name(graph, f"{value.name}_quantized")
    quant.outputs[0].dtype, quant.outputs[0].shape = ir.DataType.UINT8, value.shape
    dequant = ir.node(
        "DequantizeLinear",
        [quant.outputs[0], s_value, z_value],
        name=unique_node_name(graph, f"{value.name}_dq"),
    )
    dequant.outputs[0].name = unique_name(graph, f"{value.name}_dequantized")
    dequant.outputs[0].dtype, dequant.outputs[0].shape = ir.DataType.FLOAT, value.shape
    producer = value.producer()
    if producer is None:
        graph.insert_before(graph[0], [quant, dequant])
    else:
        graph.insert_after(producer, [quant, dequant])
    for user, index in users:
        user.replace_input_with(index, dequant.outputs[0])
    # Graph outputs never get here (``is_head``): they stay float.
