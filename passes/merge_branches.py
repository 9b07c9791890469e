"""Merge parallel linear branches that read the same input into one Conv (RepVGG, ACNet, DBB, ...).

A tree of Adds whose leaves are linear maps of one input ``x`` (Conv kxk, 1x1, 1xk / kx1,
identity, AveragePool, each optionally followed by BatchNormalization or a per-channel
Mul/Add, and 1x1 -> kxk or 1x1 -> AveragePool sequences) equals one convolution of ``x``
(see :mod:`lightir.analysis.conv_algebra` for the algebra). Each branch kernel is placed in the
smallest window covering all of them, grouped branches are re-expressed at the gcd of their
group counts, and weights and biases are summed. Per-channel constant leaves of the Add tree
join the bias. Leaves that read other inputs stay in an Add with the merged Conv.

Preconditions, each refusal explained by ``--explain``:

* every intermediate result of the tree and of the branches has no other consumer;
* no branch weight is shared with another node;
* branches have equal strides, compatible dilations, and read the same input span;
* at least one branch is a Conv, and the merged Conv costs no more MACs than the branches.

BatchNormalization that directly follows a Conv is best folded first (``fold-bn``); the
``reparam`` pipeline does that.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from lightir.analysis.branches import LINEAR_OPS, Branch, classify, per_channel, reaches
from lightir.analysis.conv_algebra import ConvKernel, NotExact
from lightir.ir_util import constant
from lightir.pass_base import Pass, PassContext, PassResult
from lightir.registry import register_pass
from lightir.rewrite import Decline, apply_rules, emit_conv

logger = logging.getLogger(__name__)


def classify_identity(value: ir.Value) -> ConvKernel:
    """The identity kernel on ``value``'s channels."""
    return ConvKernel.identity(value.shape[1])


def _on_path(value: ir.Value, target: ir.Value, depth: int = 6) -> bool:
    """Whether ``target`` is reached from ``value`` through first inputs, linear ops only."""
    for _ in range(depth):
        if value is target:
            return True
        node = value.producer()
        if node is None or not node.inputs or node.op_type not in LINEAR_OPS:
            return False
        value = node.inputs[0]
    return False


def same_shape(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    """Equal rank, equal static dims, and symbolic where the other is symbolic.

    Shape inference names unknown dims independently, so two symbolic dims are taken as
    equal; a static dim against a symbolic one is not (it could broadcast).
    """
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, int) != isinstance(y, int) or (isinstance(x, int) and x != y):
            return False
    return True


def add_tree_leaves(root: ir.Node) -> tuple[list[ir.Value], list[ir.Node], str | None]:
    """Leaves and inner Adds of the Add tree rooted at ``root``; a reason if it is unusable."""
    out_shape = root.outputs[0].shape
    leaves, inner, stack = [], [], list(root.inputs)
    while stack:
        value = stack.pop()
        node = value.producer()
        if (
            node is not None
            and node.op_type == "Add"
            and len(list(value.uses())) == 1
            and not value.is_graph_output()
            and same_shape(value.shape, out_shape)
        ):
            inner.append(node)
            stack.extend(node.inputs)
        else:
            leaves.append(value)
    return leaves, inner, None


class MergeBranches(RewriteRuleClassBase):
    """Add tree of linear branches of one input -> one Conv (+ Add of the other leaves)."""

    def __init__(self) -> None:
        super().__init__(name="merge-branches")

    def pattern(self, op, a, b):
        return op.Add(a, b, _outputs=["out"])

    def check(self, context, a, b, out: ir.Value) -> MatchResult:
        result = MatchResult()
        plan = self.plan(out.producer())
        if isinstance(plan, Decline):
            return plan.fail(result)
        self._plan = plan
        return result

    def plan(self, root: ir.Node):
        """Decide what to merge at ``root``: (group, kernel, other leaves) or a :class:`Decline`."""
        out = root.outputs[0]
        channels = out.shape[1] if out.shape is not None and len(out.shape) == 4 else None
        if not isinstance(channels, int):
            return Decline("output is not a rank-4 tensor with known channels", silent=True)
        leaves, _, _ = add_tree_leaves(root)
        branches: list[Branch] = []
        biases: list[ir.Value] = []
        others: list[ir.Value] = []
        for leaf in leaves:
            array = constant(leaf)
            if array is not None:
                if per_channel(array, channels) is not None:
                    biases.append(leaf)
                else:
                    others.append(leaf)
                continue
            if not same_shape(leaf.shape, out.shape):
                others.append(leaf)
                continue
            branch = classify(leaf)
            if branch is None:
                others.append(leaf)
                continue
            consumers = [n.name for n, _ in leaf.uses()]
            if branch.nodes and (len(consumers) > 1 or leaf.is_graph_output()):
                # Its producer must stay for the other consumer: only an identity reading.
                stop = f"branch output '{leaf.name}' has other consumers {consumers}"
                branch = Branch(leaf, leaf, classify_identity(leaf), [], stop, branch.source)
            branches.append(branch)
        by_source: dict[ir.Value, list[Branch]] = defaultdict(list)
        for branch in branches:
            by_source[branch.source].append(branch)
        # Two branches to sum, or one Conv branch whose constant shifts join its bias.
        groups = [
            g for g in by_source.values() if (len(g) >= 2 or biases) and any(b.has_conv for b in g)
        ]
        if not groups:
            return self._why_not(branches)
        group = max(groups, key=len)
        try:
            kernel = group[0].kernel
            for branch in group[1:]:
                kernel = kernel.add(branch.kernel)
        except NotExact as reason:
            return Decline(f"branches of '{group[0].source.name}' cannot merge exactly: {reason}")
        # What the branches cost as they are: each Conv's own MACs and weights, not those of
        # the kernel a chain (1x1 -> depthwise kxk) collapses to, which can be dense.
        cout = kernel.weight.shape[0]
        branch_macs = sum(_conv_cost(n)[0] for b in group for n in b.nodes) / cout
        branch_params = sum(_conv_cost(n)[1] for b in group for n in b.nodes)
        merged_params = kernel.weight.size + kernel.bias.size
        if kernel.macs_per_output > branch_macs or merged_params > branch_params:
            return Decline(
                f"merging the branches of '{group[0].source.name}' would cost more "
                f"({kernel.macs_per_output} vs {branch_macs:.0f} MACs per output, "
                f"{merged_params} vs {branch_params} parameters)"
            )
        for leaf in biases:
            kernel = kernel.scale(1.0, per_channel(constant(leaf), channels))
        rest = [b.value for b in branches if b not in group] + others
        return group, kernel, rest

    @staticmethod
    def _why_not(branches: list[Branch]) -> Decline:
        """A reason worth showing, or a silent one.

        A stop matters when, without it, the branch would have reached an input that another
        branch reads; a nonlinearity matters when it lies on the path between two sources.
        """
        sources = {b.source for b in branches}
        for branch in branches:
            if branch.stop and branch.wanted_source is not None:
                wanted = branch.wanted_source
                if any(_on_path(wanted, s) for s in sources - {branch.source}):
                    return Decline(branch.stop)
        for branch in branches:
            for other in sources - {branch.source}:
                nonlinear = reaches(branch.source, other)
                if nonlinear is not None:
                    return Decline(
                        f"{nonlinear.op_type} '{nonlinear.name}' (not linear) sits inside a "
                        f"branch from '{other.name}'"
                    )
        return Decline("no two linear branches read the same input", silent=True)

    def rewrite(self, op, a, b, out):
        group, kernel, rest = self._plan
        result = emit_conv(op, out.producer(), group[0].source, kernel)
        for value in rest:
            result = op.Add(result, value)
        return result


def _conv_cost(node: ir.Node) -> tuple[int, int]:
    """(MACs per output position, parameters) of a Conv branch node; 0 for other ops."""
    if node.op_type != "Conv" or node.inputs[1] is None or node.inputs[1].shape is None:
        return 0, 0
    weight = [int(d) if isinstance(d, int) else 0 for d in node.inputs[1].shape]
    params = math.prod(weight) + (weight[0] if len(node.inputs) > 2 and node.inputs[2] else 0)
    return math.prod(weight), params


RULES = [MergeBranches.rule()]


@register_pass("merge-branches", contract="exact")
class MergeBranchesPass(Pass):
    """Merge parallel linear branches of one input (RepVGG, ACNet, DBB, MobileOne) into a Conv."""

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Infer shapes, merge every eligible Add tree, drop the replaced branches."""
        common_passes.ShapeInferencePass()(model)
        count = apply_rules(model, RULES, context)
        if count:
            common_passes.RemoveUnusedNodesPass()(model)
        logger.info("merged %d branch groups", count)
        return PassResult(model, modified=count > 0, stats={"merged": count})
