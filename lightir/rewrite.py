"""Apply onnxscript pattern-rewrite rules and collect why they did not fire.

Passes write their local rewrites as onnxscript ``RewriteRuleClassBase`` rules whose ``check``
returns a failed ``MatchResult`` with a reason; :func:`apply_rules` applies them and then, in a
dry run with a tracer, records the reasons of the matches that remain (``--explain``).

Every rewrite :func:`apply_rules` makes first asks the :class:`RewriteGate` in force, if any
(:func:`gated`): the pass manager's bisection (``lightir.bisect``) runs a pass that broke its
exact contract again with the first ``k`` rewrites only, to name the rewrite that moved the
output, as LLVM's ``-opt-bisect-limit`` does for passes. A pass that rewrites in its own loop
asks :func:`allow` before each rewrite and is bisected the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import (
    MatchingTracer,
    MatchResult,
    MatchStatus,
    RewriteRule,
    RewriteRuleSet,
)

from lightir.pass_base import PassContext

logger = logging.getLogger(__name__)

NOT_A_CANDIDATE = "[not a candidate] "
"""Prefix of check reasons that mean "this is not what the rule is about" (hidden by explain)."""

_FRIENDLY = {
    "Matched nodes have other uses preventing replacement.": (
        "an intermediate result has another consumer or is a graph output"
    ),
}


class _DeclineTracer(MatchingTracer):
    """Records every match that got past the op types but was refused, with its reason."""

    def __init__(self, min_nodes: int) -> None:
        super().__init__()
        self.min_nodes = min_nodes
        self.declines: list[tuple[RewriteRule, ir.Node, str]] = []

    def log(self, rule, container, node, match_result, status) -> None:  # noqa: D102
        reason = match_result.reason
        if not reason or reason.startswith(NOT_A_CANDIDATE):
            return
        if status == MatchStatus.CONDITION_FAILED or (
            status == MatchStatus.NO_MATCH and reason in _FRIENDLY
        ):
            self.declines.append((rule, node, _FRIENDLY.get(reason, reason)))


@dataclass
class RewriteGate:
    """Lets the first ``limit`` rewrites through (all when ``None``) and records each one."""

    limit: int | None = None
    seen: list[tuple[str, str, list[str]]] = field(default_factory=list)  # rule, root, nodes

    def ask(self, rule: str, root: ir.Node, nodes: Sequence[ir.Node] = ()) -> bool:
        """Whether this rewrite may happen; it is counted either way."""
        if self.limit is not None and len(self.seen) >= self.limit:
            return False
        names = [n.name or n.op_type for n in nodes] or [root.name or root.op_type]
        self.seen.append((rule, root.name or root.op_type, names))
        return True


_GATE: contextvars.ContextVar[RewriteGate | None] = contextvars.ContextVar(
    "lightir_rewrite_gate", default=None
)


@contextlib.contextmanager
def gated(gate: RewriteGate) -> Iterator[RewriteGate]:
    """Run the rewrites inside the block through ``gate``."""
    token = _GATE.set(gate)
    try:
        yield gate
    finally:
        _GATE.reset(token)


def allow(node: ir.Node, what: str, nodes: Sequence[ir.Node] = ()) -> bool:
    """For passes with their own rewrite loop: ask before rewriting at ``node``.

    ``what`` names the rewrite (the bisection reports it), ``nodes`` the nodes it replaces.
    True outside a bisection.
    """
    gate = _GATE.get()
    return True if gate is None else gate.ask(what, node, nodes)


def _gated_rules(rule_set: RewriteRuleSet, gate: RewriteGate) -> RewriteRuleSet:
    """The rules, each of whose matches asks ``gate`` once its own check has passed."""
    rules = []
    for rule in rule_set.rules:
        clone = copy.copy(rule)
        check = rule._condition_function
        name = rule.name or type(rule).__name__

        def gated_check(context, _check=check, _name=name, **bindings):
            result = _check(context, **bindings)
            if not result:
                return result
            if not gate.ask(_name, context.root, context.nodes):
                return MatchResult().fail(f"{NOT_A_CANDIDATE}bisection: past the rewrite limit")
            return result

        clone._condition_function = gated_check
        rules.append(clone)
    return RewriteRuleSet(rules, commute=False)


def skip(result, reason: str):
    """Fail a rule's check quietly: the match is not a candidate, so explain stays silent."""
    return result.fail(NOT_A_CANDIDATE + reason)


@dataclass(frozen=True)
class Decline:
    """Why a rewrite does not fire at a match, as a rule's planning step returns it.

    ``silent``: the match is not a candidate at all (no branches to merge), so ``--explain``
    says nothing; otherwise the reason is shown.
    """

    reason: str
    silent: bool = False

    def fail(self, result):
        """Fail the rule's ``MatchResult`` with this reason (quietly when ``silent``)."""
        return skip(result, self.reason) if self.silent else result.fail(self.reason)


def apply_rules(
    model: ir.Model,
    rules: Sequence[RewriteRule] | RewriteRuleSet,
    context: PassContext | None = None,
) -> int:
    """Apply ``rules`` to the model (all graphs) until none fires; return the rewrite count.

    When ``context`` is given, the reasons of the remaining declined matches are recorded in
    it (one dry run of the matcher).
    """
    rule_set = rules if isinstance(rules, RewriteRuleSet) else RewriteRuleSet(list(rules))
    gate = _GATE.get()
    if gate is not None:
        rule_set = _gated_rules(rule_set, gate)
    total = 0
    while True:
        count = rule_set.apply_to_model(model)
        total += count
        if count == 0:
            break
    if context is not None:
        tracer = _DeclineTracer(min_nodes=2)
        rule_set.apply_to_model(model, tracer=tracer)
        seen = set()
        for rule, node, reason in tracer.declines:
            key = (node.name, reason)
            if key in seen:
                continue
            seen.add(key)
            context.decline(node, f"{rule.name}: {reason}" if rule.name else reason)
    return total


def unique_name(graph: ir.Graph, base: str) -> str:
    """A value name not yet used by an initializer or node output of ``graph``."""
    taken = set(graph.initializers)
    taken.update(v.name for v in graph.inputs)
    for node in graph:
        taken.update(o.name for o in node.outputs)
    return _fresh(base, taken)


def add_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer of ``graph``, named ``base`` or a fresh variant.

    Rules create theirs with :func:`new_initializer` (the rewriter's ``op.initializer``);
    everything else with this.
    """
    name = unique_name(graph, base)
    array = np.asarray(array)
    if not array.flags.c_contiguous:  # np.ascontiguousarray would make a scalar 1-D
        array = np.ascontiguousarray(array)
    value = ir.val(name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def add_after(node: ir.Node, constant: ir.Value, name: str) -> ir.Node:
    """Insert ``Add(node's output, constant)`` after ``node``; its users read the sum.

    When the output is a graph output, the sum takes its place and its name.
    """
    graph, out = node.graph, node.outputs[0]
    uses = list(out.uses())
    add = ir.node("Add", [out, constant], name=unique_node_name(graph, name))
    total = add.outputs[0]
    total.dtype, total.shape = out.dtype, out.shape
    graph.insert_after(node, [add])
    for user, index in uses:
        user.replace_input_with(index, total)
    if out.is_graph_output():
        position = list(graph.outputs).index(out)
        old_name = out.name
        out.name = unique_name(graph, f"{old_name}_before_add")
        total.name = old_name
        graph.outputs[position] = total
    else:
        total.name = unique_name(graph, f"{out.name}_plus")
    return add


def unique_node_name(graph: ir.Graph, base: str) -> str:
    """A node name not yet used in ``graph`` (onnxruntime refuses duplicates)."""
    return _fresh(base, {node.name for node in graph})


def _fresh(base: str, taken: set[str]) -> str:
    """``base``, or ``base_N`` with the smallest N not in ``taken``."""
    if base not in taken:
        return base
    index = 1
    while f"{base}_{index}" in taken:
        index += 1
    return f"{base}_{index}"


def new_initializer(op, root: ir.Node, suffix: str, array, dtype: ir.DataType | None):
    """A new initializer named after ``root`` holding ``array`` cast to ``dtype``.

    For use inside a rule's ``rewrite`` (``op`` is the rewriter's builder).
    """
    numpy_dtype = dtype.numpy() if dtype is not None else np.float32
    name = unique_name(root.graph, f"{root.name or root.op_type.lower()}_{suffix}")
    tensor = ir.tensor(np.ascontiguousarray(np.asarray(array).astype(numpy_dtype)), name=name)
    return op.initializer(tensor, name=name)


def emit_conv(op, root: ir.Node, source: ir.Value, kernel) -> ir.Value:
    """A Conv of ``source`` computing ``kernel`` (a ``ConvKernel``)."""
    return op.Conv(
        source,
        new_initializer(op, root, "merged_weight", kernel.weight, source.dtype),
        new_initializer(op, root, "merged_bias", kernel.bias, source.dtype),
        kernel_shape=list(kernel.kernel),
        strides=list(kernel.strides),
        dilations=list(kernel.dilations),
        pads=kernel.pads,
        group=kernel.group,
    )
