"""What ``int8`` quantizes: the ops, the tensors that get a Q/DQ pair, and their parameters.

The plan is read-only on the model; :mod:`lightir.quant.qdq` writes it and
:mod:`lightir.quant.mixed` chooses the ops to keep in float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from lightir import progress
from lightir.data import input_specs, synthesize
from lightir.ir_util import constant
from lightir.onnx_bridge import Probe
from lightir.pass_base import PassContext
from lightir.quant.calibration import Calibrator
from lightir.verify import LAYOUT_OPS, SQUASHING_OPS

WEIGHTED = {"Conv", "Gemm", "MatMul"}
ACTIVATION_OPS = {"Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat"}
# Ops that mean a model is quantized already (static QDQ, dynamic, or integer kernels).
QUANTIZED = {
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
}
# Concat inputs whose value ranges differ more than this are not put under one scale.
MIXED_RANGE = 8.0
# Ops that only squash or move values at the end of a model: what feeds them is a "head".
HEAD_OPS = SQUASHING_OPS | LAYOUT_OPS | {"LogSoftmax"}
SAME_SCALE = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
# Ops that only move values: a chain of them between two quantized ops runs on uint8.
MOVES = (SAME_SCALE - {"MaxPool"}) | {"Gather"}


def is_head(value: ir.Value, depth: int = 0) -> bool:
    """A graph output, or a value that reaches one only through squashing and layout ops.

    Such values are not requantized to uint8: the outputs are what the task reads (class
    scores, a probability map), and a Softmax over logits rounded to 1/255 of their range
    loses the ranking of close classes (PP-OCRv6's recognizer: cosine 0.94).
    """
    if value.is_graph_output():
        return True
    if depth > 8:
        return False
    return any(
        user.op_type in HEAD_OPS and any(is_head(out, depth + 1) for out in user.outputs)
        for user, _ in value.uses()
    )


def weight_axis(node: ir.Node) -> int | None:
    """The output-channel axis of the node's weight, or None when it cannot be quantized."""
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype != np.float32:
        return None
    if any(user is not node for user, _ in node.inputs[1].uses()):
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1:
            return None
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul" and weight.ndim == 2:
        return 1
    return None


def quantizable_nodes(graph: ir.Graph, context: PassContext) -> list[ir.Node]:
    """The ops onnxruntime has integer kernels for, with what they need (a weight of their own)."""
    nodes = []
    for node in graph:
        if node.op_type in WEIGHTED and weight_axis(node) is not None:
            nodes.append(node)
        elif node.op_type in ACTIVATION_OPS and node.outputs[0].dtype == ir.DataType.FLOAT:
            if node.op_type == "Add" and any(constant(v) is not None for v in node.inputs):
                # A bias or epsilon add (LayerNorm's var + eps): onnxruntime has no integer
                # kernel for it, and uint8 would round the variance to zero.
                continue
            nodes.append(node)
        elif node.op_type in WEIGHTED:
            context.decline(node, "weight is not a constant float tensor of its own")
    return nodes


def absorbed_activation(node: ir.Node) -> ir.Node | None:
    """A Relu / Clip(0, 6) that alone consumes ``node``'s output and can be absorbed."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    user = uses[0][0]
    if user.outputs[0].is_graph_output():
        return None
    if user.op_type == "Relu":
        return user
    if user.op_type == "Clip":
        low = constant(user.inputs[1]) if len(user.inputs) > 1 else None
        if low is not None and float(np.asarray(low).ravel()[0]) == 0.0:
            return user
    return None


def activations(nodes: Iterable[ir.Node]) -> list[ir.Value]:
    """The float tensors that get a Q/DQ pair (inputs and outputs of quantized nodes)."""
    chosen: dict[str, ir.Value] = {}
    for node in nodes:
        inputs = node.inputs[:1] if node.op_type in WEIGHTED else node.inputs
        for value in inputs:
            if value is not None and constant(value) is None:
                chosen[value.name] = value
                # Back through a chain of moves (ShuffleNet's Reshape -> Transpose ->
                # Reshape channel shuffle): a Q/DQ pair on each link, with the chain's
                # one scale, lets onnxruntime move uint8 data. Left in float32 between
                # a DQ and a Q, the shuffle's transposes took 4.5 of int8 ShuffleNet's
                # 8.4 ms, against 0.2 ms in the fp32 model.
                link = value.producer()
                while (
                    link is not None
                    and link.op_type in MOVES
                    and all(constant(v) is not None for v in link.inputs[1:] if v is not None)
                    and len(value.uses()) == 1
                    and link.inputs[0] is not None
                    and constant(link.inputs[0]) is None
                    and link.inputs[0].dtype == ir.DataType.FLOAT
                ):
                    value = link.inputs[0]
                    chosen[value.name] = value
                    link = value.producer()
        absorbed = absorbed_activation(node)
        out = absorbed.outputs[0] if absorbed is not None else node.outputs[0]
        if not is_head(out):
            chosen[out.name] = out
    return [v for v in chosen.values() if v.dtype == ir.DataType.FLOAT]


def activation_params(low: float, high: float) -> tuple[float, int]:
    """Per-tensor uint8 scale and zero point covering ``[low, high]``."""
    scale = (high - low) / 255.0 or 1.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    return float(scale), zero_point


@dataclass
class QdqPlan:
    """What int8 will quantize and how.

    The quantizable ops, the calibrated ranges and uint8 parameters of the tensors around
    them (by value name), and the layers' input means for bias correction.
    """

    nodes: list[ir.Node]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    params: dict[str, tuple[float, int]] = field(default_factory=dict)
    means: dict[str, np.ndarray] = field(default_factory=dict)

    def mixed_range_concats(self) -> dict[ir.Node, str]:
        """Concats whose inputs' ranges differ by more than ``MIXED_RANGE``, with the reason.

        One uint8 scale over box coordinates (0-320) and class scores (0-1) leaves the scores
        two or three levels; such a Concat stays float and each input keeps its own scale.
        """
        mixed = {}
        for node in self.nodes:
            if node.op_type != "Concat":
                continue
            spans = [
                self.ranges[v.name][1] - self.ranges[v.name][0]
                for v in node.inputs
                if v is not None and v.name in self.ranges
            ]
            spans = [span for span in spans if span > 0]
            if len(spans) >= 2 and max(spans) > MIXED_RANGE * min(spans):
                mixed[node] = (
                    f"inputs span {min(spans):.3g} to {max(spans):.3g}: one scale would "
                    "crush the narrow ones; kept float, each input keeps its own scale"
                )
        return mixed


def calibrate(
    model: ir.Model, values: list[ir.Value], calibration, method: str, batches: int
) -> dict[str, tuple[float, float]]:
    """Ranges of ``values`` on the calibration data (or synthesized inputs), by ``method``."""
    if calibration is not None:
        runs = list(calibration.batches(batch_size=8, limit=8 * batches))
    else:
        specs = input_specs(model)
        runs = [synthesize(specs, samples=2, seed=100 + i)[0] for i in range(4)]
    calibrator = Calibrator(v.name for v in values)
    probe = Probe(model, [v.name for v in values])
    # One batch at a time: memory does not grow with the data.
    for batch in progress.bar(runs, desc="int8: calibrating"):
        calibrator.update(probe.run(batch))
    return calibrator.ranges(method)


def plan_qdq(
    model: ir.Model, context: PassContext, method: str, batches: int, means: dict
) -> QdqPlan:
    """Find the quantizable ops and calibrate the tensors around them."""
    nodes = quantizable_nodes(model.graph, context)
    values = activations(nodes)
    ranges = calibrate(model, values, context.calibration, method, batches) if values else {}
    params = {name: activation_params(*ranges[name]) for name in ranges}
    # Ops that only move values keep their input's parameters: onnxruntime then runs them
    # on int8 data without requantizing (MaxPool, Flatten, Reshape, ...).
    for node in model.graph:
        if node.op_type in SAME_SCALE and node.inputs[0] is not None:
            source, target = node.inputs[0].name, node.outputs[0].name
            if source in params and target in params:
                params[target] = params[source]
    return QdqPlan(nodes, ranges, params, means)
