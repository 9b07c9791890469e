"""Size and cost of a model: nodes, parameters, MACs, weight bytes.

MACs are multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul for the concrete input
shapes given; the pass manager gives one sample (a dynamic batch dim counts as 1). Other ops count
zero: they are memory-bound and their cost is not what pruning or factorization changes.
Parameters count the elements of floating-point and 8/4-bit initializers (weights); integer
shape tensors are left out. Bytes count every initializer and tensor attribute.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import onnx
import onnx_ir as ir

from lightir.io import iter_tensors
from lightir.onnx_bridge import infer_shapes, weightless_proto

_WEIGHT_DTYPES = {
    ir.DataType.FLOAT,
    ir.DataType.FLOAT16,
    ir.DataType.BFLOAT16,
    ir.DataType.DOUBLE,
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT4,
    ir.DataType.UINT4,
}


@dataclass(frozen=True)
class ModelCost:
    """Nodes, parameters, MACs and weight bytes of a model."""

    nodes: int
    params: int
    macs: int
    bytes: int

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON."""
        return asdict(self)


def _fix_input_dims(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> None:
    """Set the named graph inputs of ``proto`` to these concrete shapes (in place)."""
    for info in proto.graph.input:
        shape = input_shapes.get(info.name)
        if shape is None:
            continue
        dims = info.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)


def node_macs(node: ir.Node, shapes: dict[str, tuple]) -> int:
    """MACs of one node given inferred shapes (0 when unknown or not a linear op)."""

    def shape_of(value: ir.Value | None) -> tuple | None:
        if value is None:
            return None
        shape = shapes.get(value.name)
        if shape is None or any(not isinstance(d, int) for d in shape):
            return None
        return shape

    out = shape_of(node.outputs[0]) if node.outputs else None
    if node.op_type == "Conv":
        weight = shape_of(node.inputs[1])
        if out is None or weight is None:
            return 0
        return math.prod(out) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        x, weight = shape_of(node.inputs[0]), shape_of(node.inputs[1])
        if x is None or weight is None:
            return 0
        return math.prod(x) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a = shape_of(node.inputs[0])
        if out is None or a is None:
            return 0
        trans_a = node.attributes.get_int("transA", 0)
        k = a[0] if trans_a else a[1]
        return math.prod(out) * k
    if node.op_type == "MatMul":
        a = shape_of(node.inputs[0])
        if out is None or a is None:
            return 0
        return math.prod(out) * a[-1]
    return 0


def inferred_shapes(model: ir.Model, input_shapes: dict[str, tuple[int, ...]]) -> dict:
    """Every value's shape that onnx shape inference finds with the inputs at these shapes."""
    proto, _ = weightless_proto(model)
    _fix_input_dims(proto, input_shapes)
    return infer_shapes(proto)


def model_cost(model: ir.Model, input_shapes: dict[str, tuple[int, ...]]) -> ModelCost:
    """Nodes, params, MACs (for ``input_shapes``) and bytes of ``model``."""
    shapes = inferred_shapes(model, input_shapes)
    nodes = macs = 0
    for graph in model.graphs():
        for node in graph:
            nodes += 1
            macs += node_macs(node, shapes)
    params = 0
    total_bytes = 0
    for _, tensor in iter_tensors(model):
        total_bytes += tensor.nbytes
        if tensor.dtype in _WEIGHT_DTYPES:
            params += math.prod(tensor.shape.numpy())
    return ModelCost(nodes=nodes, params=params, macs=macs, bytes=total_bytes)


LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _weight_of(node: ir.Node) -> ir.TensorProtocol | None:
    """The weight of a linear node: its constant second input, or a DequantizeLinear's.

    An int8 model's weights reach the layer through a DequantizeLinear of an int8 constant.
    """
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    value = node.inputs[1]
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.inputs[0]:
        return producer.inputs[0].const_value
    return None


def model_profile(model: ir.Model, input_shapes: dict[str, tuple[int, ...]]) -> dict:
    """Op types and linear layers of ``model``, for the report's before/after tables.

    ``{"ops": {op_type: count}, "layers": [{"name", "op", "macs", "params", "shape",
    "dtype"}]}``: every Conv, ConvTranspose, Gemm and MatMul with a constant weight (through
    a DequantizeLinear for int8), with its MACs at ``input_shapes`` and its weight and bias
    elements. Read-only.
    """
    shapes = inferred_shapes(model, input_shapes)
    ops: dict[str, int] = {}
    layers = []
    for graph in model.graphs():
        for node in graph:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
            if node.op_type not in LINEAR_OPS:
                continue
            weight = _weight_of(node)
            if weight is None:
                continue
            params = math.prod(weight.shape.numpy())
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            if bias is not None and bias.const_value is not None:
                params += math.prod(bias.const_value.shape.numpy())
            layers.append(
                {
                    "name": node.name or "",
                    "op": node.op_type,
                    "macs": node_macs(node, shapes),
                    "params": int(params),
                    "shape": [int(d) for d in weight.shape.numpy()],
                    "dtype": weight.dtype.name.lower(),
                }
            )
    return {"ops": dict(sorted(ops.items())), "layers": layers}
