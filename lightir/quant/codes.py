"""Compact encodings of weights in valid ONNX, shared by the weight-storage passes.

* :func:`dequantized_weight`: an int8 (or int4) tensor plus ``DequantizeLinear`` with
  per-channel scales, replacing a float weight input. onnxruntime constant-folds the pair at
  session start, so inference runs the original float kernels.
* :func:`gathered_weight`: a codebook plus uint8 indices, decoded by ``Cast`` + ``Gather`` +
  ``Reshape`` (k-means weight sharing, Deep Compression).
* :func:`entropy_bytes`: the size of a code stream under an ideal entropy coder (the Huffman
  stage of Deep Compression, to within a bit per symbol).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from lightir.rewrite import add_initializer, unique_name, unique_node_name


def symmetric_codes(weight: np.ndarray, axis: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric integer codes in [-levels, levels] and their scales."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    peak = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(peak > 0, peak / levels, 1.0)
    shape = [1] * weight.ndim
    shape[axis] = -1
    codes = np.clip(np.round(weight / scale.reshape(shape)), -levels, levels)
    return codes, scale


def dequantized_weight(
    node: ir.Node,
    index: int,
    codes: np.ndarray,
    scale: np.ndarray,
    axis: int,
    dtype: ir.DataType = ir.DataType.INT8,
) -> ir.Value:
    """Replace ``node.inputs[index]`` by ``DequantizeLinear(codes, scale, 0, axis)``."""
    graph = node.graph
    base = node.inputs[index].name
    storage = codes.astype(np.int8)
    q = ir.val(
        unique_name(graph, f"{base}_{dtype.name.lower()}"),
        const_value=ir.tensor(storage, dtype=dtype, name=unique_name(graph, f"{base}_q")),
    )
    q.const_value.name = q.name
    graph.register_initializer(q)
    s = add_initializer(graph, f"{base}_scale", scale.astype(np.float32))
    z_name = unique_name(graph, f"{base}_zero_point")
    z = ir.val(
        z_name, const_value=ir.tensor(np.zeros(scale.shape, np.int8), dtype=dtype, name=z_name)
    )
    graph.register_initializer(z)
    dq = ir.node(
        "DequantizeLinear",
        [q, s, z],
        {"axis": axis},
        name=unique_node_name(graph, f"{node.name}_w{index}_dq"),
    )
    out = dq.outputs[0]
    out.name = unique_name(graph, f"{base}_dequantized")
    out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(codes.shape)
    graph.insert_before(node, dq)
    node.replace_input_with(index, out)
    return out


def gathered_weight(node: ir.Node, index: int, codebook: np.ndarray, labels: np.ndarray) -> None:
    """Replace ``node.inputs[index]`` by ``Reshape(Gather(codebook, Cast(labels)), shape)``."""
    graph = node.graph
    base = node.inputs[index].name
    book = add_initializer(graph, f"{base}_codebook", codebook.astype(np.float32))
    codes = add_initializer(graph, f"{base}_codes", labels.astype(np.uint8).ravel())
    shape = add_initializer(graph, f"{base}_shape", np.array(labels.shape, np.int64))
    cast = ir.node(
        "Cast",
        [codes],
        {"to": ir.DataType.INT32},
        name=unique_node_name(graph, f"{node.name}_w{index}_codes"),
    )
    gather = ir.node(
        "Gather",
        [book, cast.outputs[0]],
        {"axis": 0},
        name=unique_node_name(graph, f"{node.name}_w{index}_gather"),
    )
    reshape = ir.node(
        "Reshape",
        [gather.outputs[0], shape],
        name=unique_node_name(graph, f"{node.name}_w{index}_reshape"),
    )
    for step, dtype, dims in (
        (cast, ir.DataType.INT32, [labels.size]),
        (gather, ir.DataType.FLOAT, [labels.size]),
        (reshape, ir.DataType.FLOAT, list(labels.shape)),
    ):
        step.outputs[0].name = unique_name(graph, f"{base}_{step.op_type.lower()}")
        step.outputs[0].dtype, step.outputs[0].shape = dtype, ir.Shape(dims)
    graph.insert_before(node, [cast, gather, reshape])
    node.replace_input_with(index, reshape.outputs[0])


def entropy_bytes(labels: np.ndarray) -> int:
    """Bytes of ``labels`` under an ideal entropy coder (Shannon bound, rounded up)."""
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    bits = float(-(counts * np.log2(p)).sum())
    return math.ceil(bits / 8)


def weight_axis(node: ir.Node) -> int | None:
    """Output-channel axis of a node's weight (input 1) for per-channel quantization."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul":
        return 1
    return None


def eligible_weights(model: ir.Model, context, min_size: int):
    """Yield ``(node, weight array, channel axis)`` for float weights a pass may re-encode."""
    for node in list(model.graph):
        axis = weight_axis(node)
        if axis is None or len(node.inputs) < 2:
            continue
        value = node.inputs[1]
        tensor = value.const_value
        if tensor is None or value.is_graph_input() or tensor.dtype != ir.DataType.FLOAT:
            continue
        if tensor.size < min_size or (node.op_type == "MatMul" and len(tensor.shape) != 2):
            continue
        if any(user is not node for user, _ in value.uses()):
            context.decline(node, f"weight '{value.name}' is shared")
            continue
        yield node, tensor.numpy(), axis


def quantize_weights(model: ir.Model, context, *, bits: int, min_size: int) -> dict:
    """Weight-only quantization of every eligible weight; returns size statistics."""
    levels = 2 ** (bits - 1) - 1
    dtype = ir.DataType.INT8 if bits == 8 else ir.DataType.INT4
    dense = stored = layers = 0
    for node, weight, axis in eligible_weights(model, context, min_size):
        codes, scale = symmetric_codes(weight, axis, levels)
        dequantized_weight(node, 1, codes, scale, axis, dtype)
        layers += 1
        dense += weight.nbytes
        stored += math.ceil(codes.size * bits / 8) + scale.size * 4
    return {
        "layers": layers,
        "dense_bytes": dense,
        "stored_bytes": stored,
        "compression": round(dense / stored, 2) if stored else 1.0,
    }
