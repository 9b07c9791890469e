"""Cross-layer equalization (Nagel et al. 2019, data-free quantization).

For two convolutions joined by a positively homogeneous activation, ``y = W2 relu(W1 x + b1)``,
scaling channel ``i`` of the first layer by ``1/s_i`` and the matching input channel of the
second by ``s_i`` leaves ``y`` unchanged, because ``relu(a / s) = relu(a) / s`` for ``s > 0``.
DFQ picks ``s_i = sqrt(r1_i / r2_i)``, where ``r1_i`` is the range of output channel i of W1
and ``r2_i`` the range of input channel i of W2. Both layers then have per-channel ranges
``sqrt(r1_i r2_i)``, so per-tensor quantization wastes less of its range. This matters most
for depthwise convs, whose channel ranges vary widely.

Pairs handled: a Conv (dense or depthwise) whose output reaches another Conv (dense or
depthwise) directly or through a Relu / LeakyRelu / PRelu (a per-channel slope is unchanged
by a per-channel positive scale), with no other consumer on the way. For a
depthwise second layer, channel i of its input is its weight row i. The pass sweeps all pairs
until the scales stop moving (``iterations``).

Declined, with a reason: Clip / ReLU6 between the layers (a scale would move the clip
threshold), shared weights, and grouped convs that are not depthwise. The pass only rescales
existing initializers, so it works on the weights directly rather than through a rewrite rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lightir.pass_base import Pass, PassContext, PassResult
from lightir.registry import register_pass

logger = logging.getLogger(__name__)

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}  # act(x / s) = act(x) / s for s > 0


@dataclass(frozen=True)
class Options:
    """Options of equalize."""

    iterations: int = 4


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


@register_pass("equalize", contract="exact")
class Equalize(Pass):
    """Cross-layer equalization of Conv -> (Relu) -> Conv pairs, depthwise included (DFQ)."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Equalize every pair, sweeping until the scales settle."""
        pairs = find_pairs(model, context)
        change = 0.0
        for _ in range(self.options.iterations):
            change = max((_equalize(a, b) for a, b in pairs), default=0.0)
            if change < 1e-3:
                break
        logger.info(
            "equalized %d conv pairs (last sweep moved log-scales by %.2g)", len(pairs), change
        )
        return PassResult(model, modified=bool(pairs), stats={"pairs": len(pairs)})
