"""Channel dependency analysis for structured pruning: a read-only networkx view of the model.

Every channel ``c`` of every rank >= 2 value (axis 1: the channels of NCHW tensors, the
features of [N, F] ones) is a graph node ``(value_name, c)``. An edge joins two channels that
must be removed together:

* elementwise ops (BatchNormalization, activations, pools, Resize, Pad without channel
  padding, Dropout, Cast, Identity), and Transpose that keeps axis 1 in place, tie input c to
  output c;
* Add, Sub, Mul, Div tie c of every operand that is not broadcast over channels to output c.
  Residual Adds and SE gates couple this way;
* Concat on axis 1 ties ``in_i[c]`` to ``out[offset_i + c]``, and Split and Slice on axis 1 the
  other way round;
* depthwise Conv ties input c to its outputs ``c*m .. c*m+m-1``;
* Flatten (axis 1), and Reshape to ``[N, -1]``, tie channel c to features ``c*HW .. c*HW+HW-1``.

Dense Conv, Gemm and 2-D MatMul break the chain. Their output channels start a chain (the
"producer" rows of the weight), and their input channels end one (the "consumer" columns).

Channels that reach an op the analysis does not know, a grouped (non-depthwise) Conv, a graph
input or output, or a weight shared with another node are frozen: never guessed. A connected
component is a set of channels that can only be removed together. Components whose producers
are the same set of layers form a :class:`ChannelGroup`, such as all channels of one residual
stage. ``frozen`` lists every frozen group with its reason.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_ir as ir

from lightir.analysis.branches import NONLINEAR_OPS
from lightir.ir_util import constant, node_label

logger = logging.getLogger(__name__)

# Channel-preserving ops: every activation lightir knows, plus the ones listed here.
ELEMENTWISE = NONLINEAR_OPS | {
    "Abs",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Dropout",
    "Erf",
    "Exp",
    "Floor",
    "Log",
    "Round",
    "Sign",
    "Softsign",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "InstanceNormalization",
    "LRN",
    "Neg",
    "Reciprocal",
    "Resize",
    "Sqrt",
    "Upsample",
}
BINARY = {"Add", "Sub", "Mul", "Div"}


@dataclass(frozen=True)
class Slice:
    """Removing a channel deletes index ``index`` along ``axis`` of initializer ``value``."""

    value: ir.Value
    axis: int
    index: int


@dataclass
class Component:
    """Channels that must be removed together, and what removing them touches."""

    channels: list[tuple[str, int]]
    producers: list[tuple[ir.Node, int]]  # (node, output channel) whose weight rows go away
    consumers: list[tuple[ir.Node, int]]  # (node, input channel) whose weight columns go away
    slices: list[Slice]
    frozen: str | None = None


@dataclass
class ChannelGroup:
    """Components produced by the same layers (for example one residual stage)."""

    producer_nodes: tuple[str, ...]  # the producing layers' labels, for messages
    components: list[Component] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of channels in the group."""
        return len(self.components)


def _axis(node: ir.Node, value: ir.Value) -> int:
    """The node's ``axis`` attribute, made non-negative against ``value``'s rank."""
    rank = len(value.shape) if value.shape is not None else 0
    axis = node.attributes.get_int("axis", 0)
    return axis + rank if axis < 0 else axis


def _channels(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None or len(value.shape) < 2:
        return None
    dim = value.shape[1]
    return dim if isinstance(dim, int) else None


class ChannelGraph:
    """The channel dependency graph of a model (read-only; pruning edits go through onnx-ir)."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = nx.Graph()
        self.frozen: dict[tuple[str, int], str] = {}
        self.producers: dict[tuple[str, int], list[tuple[ir.Node, int]]] = defaultdict(list)
        self.consumers: dict[tuple[str, int], list[tuple[ir.Node, int]]] = defaultdict(list)
        self.slices: dict[tuple[str, int], list[Slice]] = defaultdict(list)
        self.values: dict[str, ir.Value] = {}
        self._build()

    # ------------------------------------------------------------------ building
    def _add_value(self, value: ir.Value) -> int | None:
        count = _channels(value)
        if count is None or value.name is None:
            return None
        if value.name not in self.values:
            self.values[value.name] = value
            self.graph.add_nodes_from((value.name, c) for c in range(count))
        return count

    def _freeze_value(self, value: ir.Value | None, reason: str) -> None:
        if value is None:
            return
        count = self._add_value(value)
        for c in range(count or 0):
            self.frozen.setdefault((value.name, c), reason)

    def _tie(self, a: ir.Value, ca: int, b: ir.Value, cb: int) -> None:
        self.graph.add_edge((a.name, ca), (b.name, cb))

    def _tie_all(self, a: ir.Value, b: ir.Value) -> bool:
        na, nb = self._add_value(a), self._add_value(b)
        if na is None or na != nb:
            return False
        for c in range(na):
            self._tie(a, c, b, c)
        return True

    def _param_slices(self, node: ir.Node, key, inputs: range, axis: int, index: int) -> bool:
        """Record slicing of constant inputs; False when one is shared or not constant."""
        for i in inputs:
            value = node.inputs[i] if i < len(node.inputs) else None
            if value is None:
                continue
            if constant(value) is None:
                return False
            if any(user is not node for user, _ in value.uses()):
                return False
            self.slices[key].append(Slice(value, axis, index))
        return True

    def _build(self) -> None:
        graph = self.model.graph
        for value in graph.inputs:
            self._freeze_value(value, f"graph input '{value.name}'")
        for value in graph.outputs:
            self._freeze_value(value, f"graph output '{value.name}'")
        for node in graph:
            handler = getattr(self, f"_op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx"):
                handler = None
            if handler is None and node.op_type in ELEMENTWISE:
                handler = self._op_elementwise
            if handler is None and node.op_type in BINARY:
                handler = self._op_binary
            reason = handler(node) if handler is not None else f"op {node.op_type} is not analysed"
            if reason:
                for value in (*node.inputs, *node.outputs):
                    if value is not None and value.const_value is None:
                        self._freeze_value(value, f"{node.op_type} '{node.name}': {reason}")

    def _op_elementwise(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if node.op_type == "Pad":
            return "pads the channel axis"
        if not self._tie_all(x, y):
            return "channel counts unknown or changed"
        for out in node.outputs[1:]:
            if out.uses() or out.is_graph_output():
                return "a secondary output is used"
        if node.op_type == "BatchNormalization":
            for c in range(_channels(y)):
                if not self._param_slices(node, (y.name, c), range(1, 5), 0, c):
                    return "statistics are not constant or are shared"
        if node.op_type == "PRelu":
            slope = constant(node.inputs[1])
            count = _channels(y)
            if slope is None:
                return "slope is not constant"
            if slope.size != 1:
                # Per-channel ([C], [C, 1, 1]: MTCNN): the slope is sliced with the channel.
                rank = len(y.shape)
                shape = (1,) * (rank - slope.ndim) + slope.shape
                if shape[1] != count or slope.size != count:
                    return "slope is not per channel"
                axis = 1 - (rank - slope.ndim)
                for c in range(count):
                    if not self._param_slices(node, (y.name, c), range(1, 2), axis, c):
                        return "slope is shared"
        return None

    def _op_Pad(self, node: ir.Node) -> str | None:
        pads = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None:
            return "pads are not constant"
        rank = len(pads) // 2
        if rank < 2 or pads[1] != 0 or pads[rank + 1] != 0:
            return "pads the channel axis"
        return None if self._tie_all(node.inputs[0], node.outputs[0]) else "channels unknown"

    def _op_Transpose(self, node: ir.Node) -> str | None:
        perm = node.attributes.get_ints("perm", None)
        if perm is None or len(perm) < 2 or perm[1] != 1:
            return "moves the channel axis"
        return None if self._tie_all(node.inputs[0], node.outputs[0]) else "channels unknown"

    def _op_binary(self, node: ir.Node) -> str | None:
        out = node.outputs[0]
        count = self._add_value(out)
        if count is None:
            return "channel count unknown"
        rank = len(out.shape)
        for value in node.inputs:
            array = constant(value)
            if array is not None:
                shape = (1,) * (rank - array.ndim) + array.shape
                if shape[1] == count and count > 1:
                    if any(u is not node for u, _ in value.uses()):
                        return f"constant '{value.name}' is shared"
                    for c in range(count):
                        axis = 1 - (rank - array.ndim)
                        self.slices[(out.name, c)].append(Slice(value, axis, c))
                continue
            if value.shape is None or len(value.shape) != rank:
                return "operand rank differs (channel axis not tracked)"
            dim = value.shape[1]
            if dim == count:
                self._tie_all(value, out)
            elif dim != 1:
                return "operand channel count unknown"
        return None

    _op_Add = _op_Sub = _op_Mul = _op_Div = _op_binary

    def _op_Pow(self, node: ir.Node) -> str | None:
        exponent = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if exponent is None or exponent.size != 1:
            return "exponent is not a constant scalar"
        return None if self._tie_all(node.inputs[0], node.outputs[0]) else "channels unknown"

    def _op_reduce(self, node: ir.Node) -> str | None:
        """A reduction over other axes than 1 with keepdims (SE's mean over H, W) keeps c."""
        x = node.inputs[0]
        if x.shape is None:
            return "rank unknown"
        rank = len(x.shape)
        axes = node.attributes.get_ints("axes", None)
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            given = constant(node.inputs[1])
            if given is None:
                return "axes are not constant"
            axes = [int(a) for a in given.ravel()]
        if axes is None or not node.attributes.get_int("keepdims", 1):
            return "reduces every axis or drops axes"
        if 1 in [a + rank if a < 0 else a for a in axes]:
            return "reduces the channel axis"
        return None if self._tie_all(x, node.outputs[0]) else "channels unknown"

    _op_ReduceMean = _op_ReduceMax = _op_ReduceMin = _op_ReduceSum = _op_reduce
    _op_ReduceL2 = _op_ReduceL1 = _op_reduce

    def _op_Slice(self, node: ir.Node) -> str | None:
        """A Slice that leaves axis 1 whole (YOLOX's space-to-depth slices H and W) keeps c."""
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None:
            return "rank unknown"
        rank = len(x.shape)
        starts = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        ends = constant(node.inputs[2]) if len(node.inputs) > 2 else None
        if starts is None or ends is None:
            return "starts or ends are not constant"
        axes_value = node.inputs[3] if len(node.inputs) > 3 else None
        axes = constant(axes_value) if axes_value is not None else np.arange(len(starts))
        if axes is None:
            return "axes are not constant"
        for axis, start, end in zip(axes.ravel(), starts.ravel(), ends.ravel()):
            axis = int(axis) + rank if axis < 0 else int(axis)
            if axis == 1 and not (start == 0 and end >= np.iinfo(np.int32).max):
                steps = constant(node.inputs[4]) if len(node.inputs) > 4 else None
                count = _channels(x)
                whole = start == 0 and count is not None and end >= count
                if not whole or (steps is not None and np.any(steps != 1)):
                    return "slices the channel axis"
        return None if self._tie_all(x, y) else "channels unknown"

    def _op_Conv(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        weight = constant(node.inputs[1])
        cin, cout = self._add_value(x), self._add_value(y)
        if weight is None or cin is None or cout is None:
            return "weight not constant or channels unknown"
        group = node.attributes.get_int("group", 1)
        if any(u is not node for u, _ in node.inputs[1].uses()):
            return "weight is shared"
        if group == 1:
            for o in range(cout):
                self.producers[(y.name, o)].append((node, o))
                if not self._param_slices(node, (y.name, o), range(1, 3), 0, o):
                    return "bias not constant"
            for c in range(cin):
                self.consumers[(x.name, c)].append((node, c))
                self.slices[(x.name, c)].append(Slice(node.inputs[1], 1, c))
            return None
        if group == cin and cout % cin == 0:
            multiplier = cout // cin
            for c in range(cin):
                for m in range(multiplier):
                    o = c * multiplier + m
                    self._tie(x, c, y, o)
                    if not self._param_slices(node, (y.name, o), range(1, 3), 0, o):
                        return "bias not constant"
            return None
        if cin % group or cout % group:
            return f"grouped conv (group={group}) with {cin} -> {cout} channels"
        # A grouped conv (RegNet's fixed group width, ResNeXt) loses whole groups: group k's
        # input block, its weight rows and its output block go together, so the group
        # width, which the architecture fixes, stays, and the group count drops.
        width_in, width_out = cin // group, cout // group
        for k in range(group):
            anchor = k * width_out
            for j in range(width_in):
                self._tie(x, k * width_in + j, y, anchor)
            for o in range(anchor, anchor + width_out):
                self._tie(y, o, y, anchor)
                self.producers[(y.name, o)].append((node, o))
                if not self._param_slices(node, (y.name, o), range(1, 3), 0, o):
                    return "bias not constant"
        return None

    def _op_Gemm(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        weight = constant(node.inputs[1])
        fin, fout = self._add_value(x), self._add_value(y)
        if weight is None or fin is None or fout is None or node.attributes.get_int("transA", 0):
            return "weight not constant, transA, or features unknown"
        if any(u is not node for u, _ in node.inputs[1].uses()):
            return "weight is shared"
        trans_b = node.attributes.get_int("transB", 0)
        bias = constant(node.inputs[2]) if len(node.inputs) > 2 else None
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            if (
                bias is None
                or (bias.ndim == 2 and bias.shape[0] != 1)
                or bias.size not in (1, fout)
            ):
                return "bias is not a constant per-feature vector"
        for o in range(fout):
            self.producers[(y.name, o)].append((node, o))
            self.slices[(y.name, o)].append(Slice(node.inputs[1], 0 if trans_b else 1, o))
            if bias is not None and bias.size == fout:
                self.slices[(y.name, o)].append(Slice(node.inputs[2], bias.ndim - 1, o))
        for f in range(fin):
            self.consumers[(x.name, f)].append((node, f))
            self.slices[(x.name, f)].append(Slice(node.inputs[1], 1 if trans_b else 0, f))
        return None

    def _op_MatMul(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        weight = constant(node.inputs[1])
        if weight is None or weight.ndim != 2 or x.shape is None or len(x.shape) != 2:
            return "not a rank-2 input times a constant matrix"
        if any(u is not node for u, _ in node.inputs[1].uses()):
            return "weight is shared"
        fin, fout = self._add_value(x), self._add_value(y)
        for o in range(fout):
            self.producers[(y.name, o)].append((node, o))
            self.slices[(y.name, o)].append(Slice(node.inputs[1], 1, o))
        for f in range(fin):
            self.consumers[(x.name, f)].append((node, f))
            self.slices[(x.name, f)].append(Slice(node.inputs[1], 0, f))
        return None

    def _op_Flatten(self, node: ir.Node) -> str | None:
        if node.attributes.get_int("axis", 1) != 1:
            return "flattens other than from axis 1"
        return self._tie_blocks(node.inputs[0], node.outputs[0])

    def _op_Reshape(self, node: ir.Node) -> str | None:
        target = constant(node.inputs[1])
        if target is None or len(target) != 2 or target[1] != -1:
            return "reshape target is not [N, -1]"
        return self._tie_blocks(node.inputs[0], node.outputs[0])

    def _tie_blocks(self, x: ir.Value, y: ir.Value) -> str | None:
        channels, features = self._add_value(x), self._add_value(y)
        if channels is None or features is None or x.shape is None:
            return "channels unknown"
        spatial = [d for d in list(x.shape)[2:]]
        if any(not isinstance(d, int) for d in spatial) or features != channels * math.prod(
            spatial
        ):
            return "spatial size unknown"
        block = math.prod(spatial)
        for c in range(channels):
            for f in range(c * block, (c + 1) * block):
                self._tie(x, c, y, f)
        return None

    def _op_Concat(self, node: ir.Node) -> str | None:
        out = node.outputs[0]
        if _axis(node, out) != 1:
            return None if all(self._tie_all(v, out) for v in node.inputs) else "channels differ"
        return self._tie_pieces(out, node.inputs, "operand")

    def _tie_pieces(self, whole: ir.Value, pieces, what: str) -> str | None:
        """Channel ``offset + c`` of ``whole`` is channel ``c`` of each piece in turn."""
        self._add_value(whole)
        offset = 0
        for value in pieces:
            count = self._add_value(value)
            if count is None:
                return f"{what} channels unknown"
            for c in range(count):
                if what == "operand":
                    self._tie(value, c, whole, offset + c)
                else:
                    self._tie(whole, offset + c, value, c)
            offset += count
        return None

    def _op_Split(self, node: ir.Node) -> str | None:
        x = node.inputs[0]
        explicit = (
            len(node.inputs) > 1 and node.inputs[1] is not None
        ) or "split" in node.attributes  # sizes as an input (opset >= 13) or an attribute
        if not explicit and len(node.outputs) > 1:
            split_axis = node.attributes.get_int("axis", 0)
            if split_axis in (1, 1 - len(x.shape or [])):
                return "equal split (no sizes input): the halves must stay equal"
        if _axis(node, x) != 1:
            return None if all(self._tie_all(x, v) for v in node.outputs) else "channels differ"
        return self._tie_pieces(x, node.outputs, "output")

    # ------------------------------------------------------------------ queries
    def components(self) -> list[Component]:
        """Every connected set of channels, with its producers, consumers and slices."""
        result = []
        for members in nx.connected_components(self.graph):
            channels = sorted(members)
            frozen = next((self.frozen[m] for m in channels if m in self.frozen), None)
            producers = [p for m in channels for p in self.producers.get(m, [])]
            if frozen is None and not producers:
                frozen = "no layer produces these channels"
            result.append(
                Component(
                    channels,
                    producers,
                    [c for m in channels for c in self.consumers.get(m, [])],
                    [s for m in channels for s in self.slices.get(m, [])],
                    frozen,
                )
            )
        return result

    def groups(self) -> tuple[list[ChannelGroup], list[tuple[ChannelGroup, str]]]:
        """Prunable groups and frozen groups (with their reason)."""
        by_key: dict[frozenset | str, ChannelGroup] = {}
        reasons: dict[frozenset | str, str] = {}
        for component in self.components():
            # The producing nodes themselves (names may be missing or repeated).
            producers = frozenset(n for n, _ in component.producers)
            key = producers or component.channels[0][0]
            if key not in by_key:
                label = tuple(sorted(node_label(n) for n in producers)) or (key,)
                by_key[key] = ChannelGroup(label)
            group = by_key[key]
            group.components.append(component)
            if component.frozen:
                reasons.setdefault(key, component.frozen)
        prunable = [g for k, g in by_key.items() if k not in reasons]
        frozen = [(g, reasons[k]) for k, g in by_key.items() if k in reasons]
        return prunable, frozen
