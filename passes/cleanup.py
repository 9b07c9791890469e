"""Clean up a graph without changing what it computes.

In order:

1. constant folding (onnxscript's folder: subgraphs of constants become initializers);
2. no-op removal by pattern rules, each replaced by Identity, then Identity elimination:
   inference Dropout (no training-mode input, or a constant false one, mask unused);
   Mul / Div by a constant of ones and Add / Sub of a constant of zeros, only where the
   constant cannot broadcast the other operand to a larger shape or change its type; Reshape
   to the shape the input already has; Transpose with the identity permutation; Cast to the
   input's own type;
3. Constant nodes lifted to initializers; removal of dead nodes, initializers, functions and
   opset imports;
4. onnx shape inference, so later passes see shapes.

All of it is exact: every removed op computes the identity on its input bit for bit.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import fold_constants_ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common._basic_rules import CastIdentity, TransposeIdentity

from lightir.pass_base import Pass, PassContext, PassResult
from lightir.registry import register_pass
from lightir.rewrite import apply_rules, skip

logger = logging.getLogger(__name__)


def _shape_kept(x: ir.Value, constant: np.ndarray) -> str | None:
    """Reason why ``x (op) constant`` may have another shape than ``x``, or None."""
    if x.shape is None:
        return "input rank unknown"
    rank = len(x.shape)
    if constant.ndim > rank:
        return f"constant has rank {constant.ndim} > input rank {rank}: it would broadcast"
    for axis in range(1, constant.ndim + 1):
        size = constant.shape[-axis]
        if size != 1 and x.shape[-axis] != size:
            return f"constant dim {size} would broadcast axis {-axis} of the input"
    return None


class NoOpBinary(RewriteRuleClassBase):
    """``x * 1``, ``1 * x``, ``x / 1``, ``x + 0``, ``0 + x``, ``x - 0`` -> ``x``."""

    def __init__(self, op_type: str, neutral: float, constant_first: bool) -> None:
        side = "left" if constant_first else "right"
        super().__init__(name=f"no-op-{op_type.lower()}-{side}")
        self.op_type, self.neutral, self.constant_first = op_type, neutral, constant_first

    def pattern(self, op, x, c):
        args = (c, x) if self.constant_first else (x, c)
        return getattr(op, self.op_type)(*args, _outputs=["out"])

    def check(self, context, x: ir.Value, c: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        if c.const_value is None:
            return skip(result, "operand is not a constant")
        constant = c.const_value.numpy()
        if not np.all(constant == self.neutral):
            return skip(result, f"constant is not all {self.neutral:g}")
        if x.dtype is None or x.dtype != c.dtype:
            return result.fail("operand types differ or are unknown")
        reason = _shape_kept(x, constant)
        return result.fail(reason) if reason else result

    def rewrite(self, op, x, c, out):
        return op.Identity(x)


class NoOpReshape(RewriteRuleClassBase):
    """Reshape to the shape the input already has -> Identity."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x: ir.Value, shape: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        if shape.const_value is None:
            return skip(result, "target shape is not a constant")
        if x.shape is None:
            return result.fail("input shape unknown")
        target = [int(v) for v in shape.const_value.numpy().ravel()]
        dims = list(x.shape)
        if len(target) != len(dims):
            return skip(result, "target rank differs from the input rank")
        allow_zero = out.producer().attributes.get_int("allowzero", 0)
        unresolved = 0
        for want, have in zip(target, dims):
            if want == 0 and not allow_zero:
                continue
            if want == -1:
                unresolved += 1
                continue
            if want != have:
                return skip(result, f"target dim {want} differs from input dim {have}")
        if unresolved > 1:
            return skip(result, "more than one -1 in the target")
        return result

    def rewrite(self, op, x, shape, out):
        return op.Identity(x)


class InferenceDropout(RewriteRuleClassBase):
    """Dropout that cannot be in training mode and whose mask is unused -> Identity."""

    def pattern(self, op, x):
        return op.Dropout(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"]
        )

    def check(self, context, x: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        node = out.producer()
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = node.inputs[2].const_value
            if mode is None or bool(mode.numpy().ravel()[0]):
                return result.fail("training_mode is not a constant false")
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return result.fail("the dropout mask is used")
        return result

    def rewrite(self, op, x, out):
        return op.Identity(x)


RULES = [
    InferenceDropout().rule(),
    NoOpBinary.rule("Mul", 1.0, False),
    NoOpBinary.rule("Mul", 1.0, True),
    NoOpBinary.rule("Div", 1.0, False),
    NoOpBinary.rule("Add", 0.0, False),
    NoOpBinary.rule("Add", 0.0, True),
    NoOpBinary.rule("Sub", 0.0, False),
    NoOpReshape().rule(),
    TransposeIdentity().rule(),
    CastIdentity().rule(),
]


def count_nodes(model: ir.Model) -> int:
    """Nodes in all graphs of the model."""
    return sum(1 for graph in model.graphs() for _ in graph)


@register_pass("cleanup", contract="exact")
class Cleanup(Pass):
    """Fold constants, remove no-ops, dead nodes and initializers; infer shapes."""

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Run the cleanup steps; modified when anything was removed or folded."""
        nodes_before = count_nodes(model)
        inits_before = sum(len(g.initializers) for g in model.graphs())
        folded = fold_constants_ir(model).modified
        removed_no_ops = apply_rules(model, RULES, context)
        common_passes.IdentityEliminationPass()(model)
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        common_passes.RemoveUnusedOpsetsPass()(model)
        common_passes.ShapeInferencePass()(model)
        nodes_after = count_nodes(model)
        inits_after = sum(len(g.initializers) for g in model.graphs())
        modified = (
            folded
            or removed_no_ops > 0
            or nodes_after != nodes_before
            or inits_after != inits_before
        )
        stats = {
            "nodes_removed": nodes_before - nodes_after,
            "initializers_removed": inits_before - inits_after,
            "no_ops": removed_no_ops,
        }
        logger.info("cleanup: %s", stats)
        return PassResult(model, modified=modified, stats=stats)
