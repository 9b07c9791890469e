"""Cross-layer equalization (Nagel et al. 2019, DFQ): the arithmetic behind ``equalize``.

Also run by ``int8`` before calibration (``equalize=true``). See :mod:`lightir.passes.equalize`
for what is equalized and why.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from lightir.pass_base import PassContext

logger = logging.getLogger(__name__)

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}  # act(x / s) = act(x) / s for s > 0


def _conv_kind(node: ir.Node) -> str | None:
    """``dense``, ``depthwise``, or None when not a Conv with its own constant weight."""
    if node.op_type != "Conv" or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight.const_value is None or weight.is_graph_input():
        return None
    if any(user is not node for user, _ in weight.uses()):
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
        if bias.const_value is None or any(user is not node for user, _ in bias.uses()):
            return None
    group = node.attributes.get_int("group", 1)
    shape = weight.const_value.shape.numpy()
    if group == 1:
        return "dense"
    if shape[1] == 1 and shape[0] == group:
        return "depthwise"
    return None


def _single_consumer(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def find_pairs(model: ir.Model, context: PassContext) -> list[tuple[ir.Node, ir.Node]]:
    """(first, second) Conv pairs that can be equalized."""
    pairs = []
    for node in model.graph:
        if _conv_kind(node) is None:
            continue
        value = node.outputs[0]
        nxt = _single_consumer(value)
        if nxt is not None and nxt.op_type in HOMOGENEOUS:
            value = nxt.outputs[0]
            nxt = _single_consumer(value)
        elif nxt is not None and nxt.op_type == "Clip":
            context.decline(nxt, "Clip between convs: scaling would move its threshold")
            continue
        if nxt is None or _conv_kind(nxt) is None or nxt.inputs[0] is not value:
            continue
        pairs.append((node, nxt))
    return pairs


def _equalize(first: ir.Node, second: ir.Node) -> float:
    """Rescale one pair; returns the largest relative scale change."""
    w1 = first.inputs[1].const_value.numpy().astype(np.float64)
    w2 = second.inputs[1].const_value.numpy().astype(np.float64)
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
    if _conv_kind(second) == "depthwise":
        r2 = np.abs(w2.reshape(w2.shape[0], -1)).max(axis=1)
    else:
        r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)).max(axis=1)
    valid = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[valid] = np.sqrt(r1[valid] / r2[valid])
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    w1 = w1 / scale.reshape(shape1)
    if _conv_kind(second) == "depthwise":
        w2 = w2 * scale.reshape(shape1)
    else:
        w2 = w2 * scale.reshape((1, -1) + (1,) * (w2.ndim - 2))
    _store(first.inputs[1], w1)
    _store(second.inputs[1], w2)
    if len(first.inputs) > 2 and first.inputs[2] is not None:
        _store(first.inputs[2], first.inputs[2].const_value.numpy() / scale)
    return float(np.abs(np.log(scale)).max()) if scale.size else 0.0


def _store(value: ir.Value, array: np.ndarray) -> None:
    dtype = value.const_value.numpy().dtype
    value.const_value = ir.tensor(np.ascontiguousarray(array.astype(dtype)), name=value.name)


def equalize(model: ir.Model, context: PassContext, iterations: int = 4) -> int:
    """Equalize every pair, sweeping until the scales settle; returns the number of pairs."""
    pairs = find_pairs(model, context)
    change = 0.0
    for _ in range(iterations):
        change = max((_equalize(a, b) for a, b in pairs), default=0.0)
        if change < 1e-3:
            break
    logger.info("equalized %d conv pairs (last sweep moved log-scales by %.2g)", len(pairs), change)
    return len(pairs)
