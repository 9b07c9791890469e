"""Half precision: float16 weights and compute, float32 inputs and outputs.

Every float32 initializer, Constant and intermediate value becomes float16. The model's float32
inputs are cast to float16 on entry and its outputs back to float32 on exit, so callers see the
same interface. Ops that are numerically fragile in float16 (exponentials, reductions,
normalizations, resizing and index-producing ops) stay in float32, with casts around them.
``keep`` adds op types to that list.

On this kind of x86 machine, onnxruntime runs float16 Conv and Gemm, but without fp16
arithmetic units it is not faster than float32. The gain is half the weight bytes. On GPUs
and ARM cores with fp16 units the compute is faster too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.registry import register_pass
from lightir.rewrite import add_initializer, unique_name, unique_node_name

logger = logging.getLogger(__name__)

FRAGILE = {
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Softmax",
    "LogSoftmax",
    "ReduceSum",
    "ReduceMean",
    "ReduceProd",
    "ReduceL2",
    "ReduceLogSumExp",
    "CumSum",
    "LayerNormalization",
    "InstanceNormalization",
    "Resize",
    "Upsample",
    "Range",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "Einsum",
    "RandomNormal",
    "RandomUniform",
    "ArgMax",
    "ArgMin",
}
FLOAT, HALF = ir.DataType.FLOAT, ir.DataType.FLOAT16


@dataclass(frozen=True)
class Options:
    """Options of fp16 (``keep`` is a ``+``-separated list of op types kept in float32)."""

    keep: str = ""


def _half_ok(node: ir.Node, opset: int) -> bool:
    """Whether every type constraint of the op that admits float32 admits float16 too.

    DynamicQuantizeLinear (already-quantized models) takes float32 only; such ops stay
    float32 with casts around them rather than making an invalid model.
    """
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return False
    for constraint in schema.type_constraints:
        allowed = set(constraint.allowed_type_strs)
        if "tensor(float)" in allowed and "tensor(float16)" not in allowed:
            return False
    # Inputs and outputs typed float32 outright (DequantizeLinear-13's x_scale).
    return not any(p.type_str == "tensor(float)" for p in [*schema.inputs, *schema.outputs])


@register_pass("fp16", contract=Contract.lossy(rel_error=0.01, min_cosine=0.9999))
class Float16(Pass):
    """Float16 weights and compute with float32 inputs/outputs; fragile ops stay float32."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Convert the main graph to float16 outside the float32 islands."""
        graph = model.graph
        keep = FRAGILE | {t for t in self.options.keep.split("+") if t}
        opset = model.opset_imports.get("", 13)
        # Element types decide where casts go: a value of unknown type next to a float16 one
        # would make a mixed-type op. Infer them; nodes still reading one stay float32.
        common_passes.ShapeInferencePass()(model)
        half_nodes = [
            n
            for n in graph
            if n.op_type not in keep
            and n.domain in ("", "ai.onnx")
            and _half_ok(n, opset)
            and all(v is None or v.dtype is not None for v in n.inputs)
        ]
        if not any(v.dtype == FLOAT for n in half_nodes for v in n.outputs):
            return PassResult(model, modified=False)
        casts: dict[tuple[int, ir.DataType], ir.Value] = {}
        converted: dict[int, ir.Value] = {}

        def cast(value: ir.Value, to: ir.DataType, before: ir.Node) -> ir.Value:
            key = (id(value), to)
            if key not in casts:
                node = ir.node(
                    "Cast", [value], {"to": to}, name=unique_node_name(graph, "fp16_cast")
                )
                node.outputs[0].name = unique_name(graph, f"{value.name}_{to.name.lower()}")
                node.outputs[0].dtype, node.outputs[0].shape = to, value.shape
                producer = value.producer()
                if producer is None:
                    graph.insert_before(before, node)
                else:
                    graph.insert_after(producer, node)
                casts[key] = node.outputs[0]
            return casts[key]

        def half_constant(value: ir.Value) -> ir.Value:
            if id(value) not in converted:
                array = value.const_value.numpy().astype(np.float16)
                converted[id(value)] = add_initializer(graph, f"{value.name}_fp16", array)
            return converted[id(value)]

        half = {id(n) for n in half_nodes}
        for node in list(graph):
            in_half = id(node) in half
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                producer = value.producer()
                if in_half and value.dtype == FLOAT:
                    if value.const_value is not None and not value.is_graph_input():
                        node.replace_input_with(index, half_constant(value))
                    elif producer is None or id(producer) not in half:
                        node.replace_input_with(index, cast(value, HALF, node))
                elif (
                    not in_half
                    and value.dtype == HALF
                    and producer is not None
                    and id(producer) in half
                ):
                    node.replace_input_with(index, cast(value, FLOAT, node))
            if in_half:
                if node.op_type == "Cast" and node.attributes.get_int("to") == FLOAT.value:
                    node.attributes["to"] = ir.AttrInt64("to", HALF.value)
                if node.op_type in ("Constant", "ConstantOfShape") and "value" in node.attributes:
                    tensor = node.attributes["value"].value
                    if tensor.dtype == FLOAT:
                        node.attributes["value"] = ir.AttrTensor(
                            "value", ir.tensor(tensor.numpy().astype(np.float16))
                        )
                for out in node.outputs:
                    if out.dtype == FLOAT:
                        out.dtype = HALF
        outputs = graph.outputs
        for position, value in enumerate(list(outputs)):
            if value.dtype == HALF:
                name = value.name
                value.name = unique_name(graph, f"{name}_fp16")
                restored = cast(value, FLOAT, graph[len(graph) - 1])
                restored.name = name
                outputs[position] = restored
        for value in list(graph.initializers.values()):
            if not value.uses() and value not in graph.inputs and value not in outputs:
                graph.initializers.pop(value.name)
        kept = sum(1 for n in graph if n.op_type in keep)
        return PassResult(model, modified=True, stats={"fp32_ops": kept, "casts": len(casts)})
