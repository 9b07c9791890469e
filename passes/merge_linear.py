"""Merge chains of linear layers with no nonlinearity between them.

Convolutions. A chain of Conv, per-channel Mul/Add by a constant and inference
BatchNormalization becomes one Conv (:func:`lightir.analysis.branches.classify` reads the
chain and :mod:`lightir.analysis.conv_algebra` composes it). Covered chains are 1x1 -> kxk,
kxk -> 1x1, kxk -> kxk when the second conv does not pad, and constant scales and shifts on
either side. Where the second conv zero-pads the first's non-zero bias, the chain is left
alone: that is not exact.

Fully connected. ``y = x @ A1 + c1`` then ``z = y @ A2 + c2`` becomes
``z = x @ (A1 A2) + (c1 A2 + c2)``. Each step is a Gemm (alpha, beta and transB folded into
A and c; transA must be 0) or a MatMul with a constant 2-D weight plus an optional Add of a
per-feature constant. Reshape and Flatten that keep a rank-2 value unchanged may sit between.

A merge is made only when the merged layer costs no more MACs and no more parameters than
the chain. ``force=true`` merges anyway. The reverse case, a bottleneck 64 -> 8 -> 64 whose
merged 64x64 layer is bigger, is left alone and explained. Every decision goes into
``--explain`` and the pass stats.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from lightir.analysis.branches import classify
from lightir.analysis.cost import node_macs
from lightir.ir_util import constant
from lightir.pass_base import Pass, PassContext, PassResult
from lightir.registry import register_pass
from lightir.rewrite import apply_rules, emit_conv, new_initializer, skip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of merge-linear."""

    force: bool = False


def _static_shape(value: ir.Value | None) -> tuple | None:
    """Shape with the leading (batch) dim as 1, when every other dim is known."""
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if not dims:
        return ()
    dims[0] = dims[0] if isinstance(dims[0], int) else 1
    if any(not isinstance(d, int) for d in dims):
        return None
    return tuple(dims)


def _chain_cost(nodes: list[ir.Node]) -> tuple[int, int] | None:
    """(MACs per sample, weight elements) of ``nodes``, None when a shape is unknown."""
    shapes = {}
    for node in nodes:
        for value in (*node.inputs, *node.outputs):
            if value is not None:
                shape = _static_shape(value)
                if shape is None and value.const_value is None:
                    return None
                shapes[value.name] = shape if shape is not None else tuple(value.const_value.shape)
    macs = sum(node_macs(node, shapes) for node in nodes)
    params = sum(
        math.prod(v.const_value.shape)
        for node in nodes
        for v in node.inputs[1:]
        if v is not None and v.const_value is not None
    )
    return macs, params


class _RootedRule(RewriteRuleClassBase):
    """A rule whose pattern is any node of ``op_type``; ``check`` reads the chain behind it."""

    kind = ""

    def __init__(self, op_type: str, force: bool) -> None:
        super().__init__(name=f"merge-linear-{op_type.lower()}{self.kind}")
        self.op_type, self.force = op_type, force

    def pattern(self, op, x):
        return getattr(op, self.op_type)(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"]
        )


class MergeConvChain(_RootedRule):
    """A chain ending at a Conv / Mul / Add / BatchNormalization -> one Conv."""

    def check(self, context, x, out: ir.Value) -> MatchResult:
        result = MatchResult()
        branch = classify(out)
        if branch is None or len(branch.nodes) < 2 or not branch.has_conv:
            if branch is not None and branch.inexact:
                return result.fail(branch.stop)
            return skip(result, "not a chain of two or more linear ops with a Conv")
        out_shape = _static_shape(out)
        chain = _chain_cost(branch.nodes)
        if out_shape is None or chain is None:
            return result.fail("shapes along the chain are unknown; run cleanup first")
        merged_macs = math.prod(out_shape) * branch.kernel.macs_per_output
        merged_params = branch.kernel.weight.size
        if not self.force and (merged_macs > chain[0] or merged_params > chain[1]):
            return result.fail(
                f"merging {len(branch.nodes)} ops would cost more: {merged_macs} MACs / "
                f"{merged_params} params vs {chain[0]} / {chain[1]} (force=true merges anyway)"
            )
        self._branch = branch
        return result

    def rewrite(self, op, x, out):
        branch, kernel = self._branch, self._branch.kernel
        return emit_conv(op, out.producer(), branch.source, kernel)


@dataclass
class Affine:
    """``y = x @ matrix + offset`` on the last axis; ``nodes`` compute it."""

    source: ir.Value
    matrix: np.ndarray
    offset: np.ndarray
    nodes: list[ir.Node]


def _single_use(value: ir.Value) -> bool:
    return len(list(value.uses())) == 1 and not value.is_graph_output()


def _affine_step(value: ir.Value) -> Affine | str | None:
    """Read ``value`` as one fully connected step (with its bias Add), or why not."""
    node = value.producer()
    if node is None:
        return None
    bias_node = None
    if node.op_type == "Add":
        a, b = node.inputs
        const = constant(b) if constant(a) is None else constant(a)
        inner = a if constant(a) is None else b
        if const is None or inner.producer() is None or not _single_use(inner):
            return None
        if inner.producer().op_type not in ("MatMul", "Gemm"):
            return None
        bias_node, node = node, inner.producer()
        if const.ndim > 1 and any(d != 1 for d in const.shape[:-1]):
            return f"Add '{bias_node.name}' bias is not per feature"
        bias = const.reshape(-1).astype(np.float64)
    else:
        bias = None
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op_type == "MatMul":
        if weight is None or weight.ndim != 2:
            return None
        matrix = weight.astype(np.float64)
        offset = np.zeros(matrix.shape[1])
    elif node.op_type == "Gemm":
        if weight is None or node.attributes.get_int("transA", 0):
            return None
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        matrix = alpha * (weight.T if node.attributes.get_int("transB", 0) else weight)
        matrix = matrix.astype(np.float64)
        offset = np.zeros(matrix.shape[1])
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = constant(node.inputs[2])
            if c is None or (c.ndim == 2 and c.shape[0] != 1):
                return f"Gemm '{node.name}' bias is not a constant per-feature vector"
            offset = beta * np.broadcast_to(c.reshape(-1), (matrix.shape[1],)).astype(np.float64)
    else:
        return None
    for w in node.inputs[1:]:
        if w is not None and any(n is not node for n, _ in w.uses()):
            return f"weight '{w.name}' is shared"
    if bias is not None:
        offset = offset + np.broadcast_to(bias, offset.shape)
    nodes = [node] + ([bias_node] if bias_node is not None else [])
    return Affine(node.inputs[0], matrix, offset, nodes)


def _feeds_constant_add(value: ir.Value) -> bool:
    """Whether ``value`` only feeds an Add with a constant (a bias to fold with it)."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return False
    node = uses[0][0]
    return node.op_type == "Add" and any(constant(v) is not None for v in node.inputs)


def _through_no_op_reshape(value: ir.Value) -> tuple[ir.Value, list[ir.Node]]:
    """Skip Reshape/Flatten/Identity nodes whose rank-2 input and output shapes are equal."""
    skipped = []
    node = value.producer()
    while (
        node is not None
        and node.op_type in ("Reshape", "Flatten", "Identity")
        and node.inputs[0].shape is not None
        and len(node.inputs[0].shape) == 2
        and node.inputs[0].shape == node.outputs[0].shape
        and _single_use(node.inputs[0])
    ):
        skipped.append(node)
        value = node.inputs[0]
        node = value.producer()
    return value, skipped


class MergeDenseChain(_RootedRule):
    """Two fully connected steps with no nonlinearity between -> one."""

    kind = "-chain"

    def check(self, context, x, out: ir.Value) -> MatchResult:
        result = MatchResult()
        second = _affine_step(out)
        if not isinstance(second, Affine):
            return result.fail(second) if isinstance(second, str) else skip(result, "no step")
        if self.op_type != "Add" and _feeds_constant_add(out):
            return skip(result, "the bias Add after this step is the root of the chain")
        middle, skipped = _through_no_op_reshape(second.source)
        first = _affine_step(middle) if _single_use(middle) else None
        if isinstance(first, str):
            return result.fail(first)
        if first is None:
            # A single step: fold its separate bias Add into a Gemm when that is possible.
            if (
                len(second.nodes) == 2
                and second.source.shape is not None
                and len(second.source.shape) == 2
            ):
                identity = Affine(second.source, np.empty((0, 0)), np.empty(0), [])
                self._plan = (identity, second)
                return result
            return skip(result, "no chain")
        k, m = first.matrix.shape
        n = second.matrix.shape[1]
        if not self.force and k * n > k * m + m * n:
            return result.fail(
                f"merging {k}x{m} and {m}x{n} into {k}x{n} would cost more "
                f"({k * n} vs {k * m + m * n} MACs per row; force=true merges anyway)"
            )
        self._plan = (first, second)
        return result

    def rewrite(self, op, x, out):
        first, second = self._plan
        if first.nodes:
            matrix = first.matrix @ second.matrix
            offset = first.offset @ second.matrix + second.offset
        else:  # a single step whose bias Add joins it
            matrix, offset = second.matrix, second.offset
        root, source = out.producer(), first.source
        weight = new_initializer(op, root, "merged_weight", matrix, source.dtype)
        bias = new_initializer(op, root, "merged_bias", offset, source.dtype)
        if source.shape is not None and len(source.shape) == 2:
            return op.Gemm(source, weight, bias)
        return op.Add(op.MatMul(source, weight), bias)


@register_pass("merge-linear", contract="exact")
class MergeLinear(Pass):
    """Merge Conv->Conv, Gemm/MatMul->Gemm/MatMul and constant scales into one layer."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Infer shapes, merge chains to a fixpoint, drop what they replaced."""
        common_passes.ShapeInferencePass()(model)
        force = self.options.force
        rules = [
            MergeDenseChain.rule("Add", force),
            MergeDenseChain.rule("Gemm", force),
            MergeDenseChain.rule("MatMul", force),
            *(
                MergeConvChain.rule(op, force)
                for op in ("Conv", "Mul", "Add", "BatchNormalization")
            ),
        ]
        count = apply_rules(model, rules, context)
        if count:
            common_passes.RemoveUnusedNodesPass()(model)
            common_passes.ShapeInferencePass()(model)
        logger.info("merged %d linear chains", count)
        return PassResult(model, modified=count > 0, stats={"merged": count})
