"""Recognize a value as a linear map of some input: the read-only analysis behind merge passes.

:func:`classify` walks from a value towards the graph inputs through ops that are linear maps
of one feature map (Conv with constant weights, inference BatchNormalization, AveragePool that
counts padding, Mul/Add by per-channel constants) and returns the input it reaches and the
:class:`~lightir.analysis.conv_algebra.ConvKernel` that maps it to the value. It stops at the
first op that is not such a map, at an intermediate result that has another consumer, or at a weight
that another node shares; the reason it stopped is kept so passes can explain a decline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from lightir.analysis.conv_algebra import ConvKernel, NotExact
from lightir.ir_util import constant

NONLINEAR_OPS = {
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "PRelu",
    "Tanh",
    "Elu",
    "Selu",
    "Gelu",
    "Mish",
    "Softplus",
    "MaxPool",
    "Swish",
}


LINEAR_OPS = {"Conv", "BatchNormalization", "AveragePool", "Mul", "Add"}


@dataclass(eq=False)
class Branch:
    """``value = kernel(source)``; ``nodes`` are the ops the kernel replaces."""

    value: ir.Value
    source: ir.Value
    kernel: ConvKernel
    nodes: list[ir.Node] = field(default_factory=list)
    stop: str | None = None  # why the walk did not go further back, if it matters
    wanted_source: ir.Value | None = None  # where the walk would have gone without the stop
    inexact: bool = False  # it stopped because the next step cannot compose exactly

    @property
    def has_conv(self) -> bool:
        """Whether a Conv is among the replaced ops."""
        return any(n.op_type == "Conv" for n in self.nodes)


def channels_of(value: ir.Value) -> int | None:
    """Axis-1 size of a rank-4 value, when known."""
    shape = value.shape
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    return shape[1]


def per_channel(array: np.ndarray, channels: int) -> np.ndarray | None:
    """``array`` as a length-``channels`` vector when it broadcasts per channel of NCHW."""
    if array.ndim > 4:
        return None
    shape = (1,) * (4 - array.ndim) + array.shape
    if shape[0] != 1 or shape[2] != 1 or shape[3] != 1 or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1).astype(np.float64), (channels,)).copy()


def _single_consumer(value: ir.Value) -> str | None:
    """None when ``value`` feeds exactly one node and is not a graph output, else why not."""
    uses = list(value.uses())
    if value.is_graph_output():
        return f"'{value.name}' is a graph output"
    if len(uses) > 1:
        others = ", ".join(f"'{n.name}'" for n, _ in uses)
        return f"'{value.name}' has several consumers ({others})"
    return None


def _shared_weight(node: ir.Node) -> str | None:
    for value in node.inputs[1:]:
        if value is None:
            continue
        others = [n.name for n, _ in value.uses() if n is not node]
        if others:
            return (
                f"weight '{value.name}' of {node.op_type} '{node.name}' is shared with "
                f"'{others[0]}'"
            )
    return None


def _conv_kernel(node: ir.Node) -> ConvKernel | str:
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim != 4:
        return f"Conv '{node.name}' has no constant 2-D weight"
    bias = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] is not None and bias is None:
        return f"Conv '{node.name}' has a non-constant bias"
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"Conv '{node.name}' uses auto_pad"
    return ConvKernel.conv(
        weight,
        bias,
        group=node.attributes.get_int("group", 1),
        strides=node.attributes.get_ints("strides", [1, 1]),
        dilations=node.attributes.get_ints("dilations", [1, 1]),
        pads=node.attributes.get_ints("pads", [0, 0, 0, 0]),
    )


def _pool_kernel(node: ir.Node, channels: int) -> ConvKernel | str:
    pads = list(node.attributes.get_ints("pads", [0, 0, 0, 0]))
    if node.attributes.get_int("ceil_mode", 0):
        return f"AveragePool '{node.name}' uses ceil_mode"
    if any(pads) and not node.attributes.get_int("count_include_pad", 0):
        return f"AveragePool '{node.name}' pads without count_include_pad (not linear)"
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"AveragePool '{node.name}' uses auto_pad"
    dilations = node.attributes.get_ints("dilations", [1, 1])
    if list(dilations) != [1, 1]:
        return f"AveragePool '{node.name}' is dilated"
    kernel = node.attributes.get_ints("kernel_shape")
    strides = node.attributes.get_ints("strides", [1, 1])
    return ConvKernel.average_pool(channels, kernel, strides, pads)


def _bn_affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    if node.attributes.get_int("training_mode", 0):
        return f"BatchNormalization '{node.name}' is in training mode"
    params = [constant(v) for v in node.inputs[1:5]]
    if any(p is None for p in params):
        return f"BatchNormalization '{node.name}' has non-constant statistics"
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + node.attributes.get_float("epsilon", 1e-5))
    return scale, beta - mean * scale


def classify(value: ir.Value) -> Branch | None:
    """The deepest linear-map reading of ``value`` (identity of itself at worst).

    Returns None only when the channel count of ``value`` is unknown.
    """
    channels = channels_of(value)
    if channels is None:
        return None
    node = value.producer()
    identity = Branch(value, value, ConvKernel.identity(channels))
    if node is None:
        return identity
    step: ConvKernel | str
    source: ir.Value = node.inputs[0]
    if node.op_type == "Conv":
        step = _shared_weight(node) or _conv_kernel(node)
    elif node.op_type == "BatchNormalization":
        affine = _bn_affine(node)
        if isinstance(affine, str):
            step = affine
        else:
            step = ConvKernel.identity(channels).scale(*affine)
    elif node.op_type == "AveragePool":
        step = _pool_kernel(node, channels)
    elif node.op_type in ("Mul", "Add") and len(node.inputs) == 2:
        step, source = _affine_with_constant(node, channels)
    else:
        if node.op_type in NONLINEAR_OPS:
            identity.stop = f"{node.op_type} '{node.name}' (not linear)"
        return identity
    if isinstance(step, str):
        identity.stop = step
        identity.wanted_source = source
        return identity
    return _extend(value, node, source, step)


def _affine_with_constant(node: ir.Node, channels: int) -> tuple[ConvKernel | str, ir.Value]:
    a, b = node.inputs
    const_b, const_a = constant(b), constant(a)
    if const_b is not None and const_a is None:
        source, array = a, const_b
    elif const_a is not None and const_b is None:
        source, array = b, const_a
    else:
        return f"{node.op_type} '{node.name}' has no single constant operand", node.inputs[0]
    vector = per_channel(array, channels)
    if vector is None or source.shape != node.outputs[0].shape:
        return f"{node.op_type} '{node.name}' constant is not per-channel", source
    identity = ConvKernel.identity(channels)
    if node.op_type == "Mul":
        return identity.scale(vector, 0.0), source
    return identity.scale(1.0, vector), source


def _extend(value: ir.Value, node: ir.Node, source: ir.Value, step: ConvKernel) -> Branch:
    """Compose ``step`` (the map of ``node``) with the reading of its input, if exact."""
    here = Branch(value, source, step, [node])
    busy = _single_consumer(source)
    producer = source.producer()
    if busy is not None or producer is None:
        if busy is not None and producer is not None and producer.op_type in LINEAR_OPS:
            here.stop = busy
            here.wanted_source = producer.inputs[0]
        return here
    inner = classify(source)
    if inner is None or not inner.nodes:
        if inner is not None:
            here.stop, here.wanted_source = inner.stop, inner.wanted_source
            here.inexact = inner.inexact
        return here
    try:
        kernel = inner.kernel.then(step)
    except NotExact as reason:
        first = inner.nodes[-1]
        here.stop = (
            f"{first.op_type} '{first.name}' -> {node.op_type} '{node.name}' cannot merge "
            f"exactly: {reason}"
        )
        here.wanted_source, here.inexact = inner.source, True
        return here
    return Branch(
        value, inner.source, kernel, [*inner.nodes, node], inner.stop, inexact=inner.inexact
    )


def reaches(value: ir.Value, target: ir.Value, depth: int = 6) -> ir.Node | None:
    """The first non-linear op on a single-input path from ``value`` back to ``target``."""
    node = value.producer()
    nonlinear = None
    for _ in range(depth):
        if node is None or not node.inputs:
            return None
        if node.op_type in NONLINEAR_OPS and nonlinear is None:
            nonlinear = node
        if node.inputs[0] is target:
            return nonlinear
        node = node.inputs[0].producer()
    return None
