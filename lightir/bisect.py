"""Name the rewrite that broke an exact pass, and cut a reproducer that fails on its own.

When an exact pass breaks its contract, the verifier knows which output moved, not which of
the pass's rewrites moved it. The pass manager then calls :func:`bisect`: the pass runs again
on the model it was given, with only its first ``k`` rewrites let through
(:class:`lightir.rewrite.RewriteGate`, LLVM's ``-opt-bisect-limit`` for rewrites), and the
verifier judges each try as it judged the pass. Bisection over ``k`` finds the first rewrite
after which the check fails: its rule and the nodes it matched.

The reproducer, as ``mlir-opt`` writes one: the nodes that rewrite matched, cut out of the
model as the pass saw it just before that rewrite (the first ``k - 1`` rewrites done),
with their inputs as graph inputs and their constants as initializers. It is kept only if the
pass, run on it alone and verified as the manager verifies, fails again; otherwise the whole
model before that rewrite is the reproducer (it fails by construction on the run's inputs).

Rewrites count when they go through :func:`lightir.rewrite.apply_rules` or, in a pass's own
loop, :func:`lightir.rewrite.allow`; a pass whose rewrites do neither is not bisected, and
the report says so.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from lightir.ir_util import clone_model
from lightir.pass_base import Pass, PassContext
from lightir.rewrite import RewriteGate, gated

logger = logging.getLogger(__name__)


@dataclass
class Bisection:
    """What the bisection found."""

    rewrites: int  # the pass's rewrites on the model it was given
    first_bad: int = 0  # 1-based index of the first rewrite after which the check fails
    rule: str = ""
    node: str = ""  # the matched subgraph's root
    nodes: list[str] = field(default_factory=list)
    failure: str = ""  # the verifier's verdict with the first ``first_bad`` rewrites
    reproducer: ir.Model | None = None
    reproducer_kind: str = ""  # "subgraph" (the matched nodes alone) or "model"
    note: str = ""

    def describe(self) -> str:
        """One line for the report."""
        if not self.first_bad:
            return f"bisection: {self.note}"
        return (
            f"bisection: rewrite {self.first_bad} of {self.rewrites} ({self.rule} at "
            f"'{self.node}', nodes {', '.join(self.nodes)}) is the first that {self.failure}"
        )

    def as_dict(self) -> dict:
        """Plain dict for the report's stats (the reproducer model itself is not in it)."""
        return {
            "rewrites": self.rewrites,
            "first_bad": self.first_bad,
            "rule": self.rule,
            "node": self.node,
            "nodes": self.nodes,
            "failure": self.failure,
            "reproducer": self.reproducer_kind,
            "note": self.note,
        }


def run_gated(pass_: Pass, model: ir.Model, context: PassContext, limit: int | None):
    """``pass_`` on a copy of ``model`` with the first ``limit`` rewrites; (model, gate)."""
    trial = clone_model(model)
    gate = RewriteGate(limit)
    with gated(gate):
        result = copy.copy(pass_).run(trial, context)
    return result.model, gate


def bisect(
    pass_: Pass,
    model: ir.Model,
    context: Callable[[], PassContext],
    broken: Callable[[ir.Model], str | None],
    reproduces: Callable[[ir.Model], bool],
) -> Bisection:
    """Find the first rewrite of ``pass_`` on ``model`` after which ``broken`` says why.

    ``context`` makes a fresh :class:`PassContext` per run; ``broken(model)`` is the
    verifier's failure for the pass's result (None when accepted); ``reproduces(model)``
    runs the pass on a candidate reproducer and says whether it fails there too.
    """
    _, counted = run_gated(pass_, model, context(), None)
    total = len(counted.seen)
    if total == 0:
        return Bisection(
            0,
            note=f"'{pass_.name}' made no rewrite through lightir.rewrite (apply_rules or "
            "allow), so its rewrites cannot be told apart",
        )
    low, high = 1, total  # the answer is in [low, high]; all rewrites break it
    failures: dict[int, str] = {}
    while low < high:
        middle = (low + high) // 2
        trial, _ = run_gated(pass_, model, context(), middle)
        failure = broken(trial)
        if failure:
            failures[middle] = failure
            high = middle
        else:
            low = middle + 1
    if low not in failures:
        trial, _ = run_gated(pass_, model, context(), low)
        failure = broken(trial)
        if not failure:
            return Bisection(
                total,
                note=f"all {total} rewrites together fail but no prefix of them does "
                "(the rewrites interact, or the pass is not deterministic)",
            )
        failures[low] = failure
    rule, root, nodes = counted.seen[low - 1]
    found = Bisection(total, low, rule, root, nodes, failures[low])
    before, _ = run_gated(pass_, model, context(), low - 1)
    try:
        subgraph = extract(before, nodes)
    except Exception as exc:  # noqa: BLE001 - a failed cut falls back to the whole model
        logger.debug("bisect: cutting the matched nodes failed", exc_info=True)
        subgraph, found.note = None, f"the matched nodes could not be cut out ({exc})"
    if subgraph is not None and reproduces(subgraph):
        found.reproducer, found.reproducer_kind = subgraph, "subgraph"
    else:
        if subgraph is not None:
            found.note = "the matched nodes alone do not fail on synthesized inputs"
        found.reproducer, found.reproducer_kind = before, "model"
    return found


def extract(model: ir.Model, names: list[str]) -> ir.Model:
    """The nodes called ``names``, cut out of ``model`` as a model of their own.

    Their non-constant inputs from outside become graph inputs (with the shapes shape
    inference finds), what they produce for the rest of the graph becomes graph outputs;
    constants come along (``onnx.utils.Extractor`` takes what lies between the two).
    """
    wanted = set(names)
    graph = model.graph
    chosen = [node for node in graph if node.name in wanted]
    if not chosen:
        raise ValueError(f"no node called {sorted(wanted)}")
    inside = set(chosen)
    inputs, outputs = [], []
    graph_outputs = set(graph.outputs)
    for node in chosen:
        for value in node.inputs:
            if value is None or value.name in inputs:
                continue
            producer = value.producer()
            if producer in inside or value.const_value is not None or value.is_initializer():
                continue
            if producer is not None and producer.op_type == "Constant":
                continue
            inputs.append(value.name)
        for value in node.outputs:
            used_outside = any(use.node not in inside for use in value.uses())
            if used_outside or value in graph_outputs:
                outputs.append(value.name)
    proto = ir.serde.serialize_model(model)
    proto = onnx.shape_inference.infer_shapes(proto)
    cut = onnx.utils.Extractor(proto).extract_model(inputs, outputs)
    cut.graph.name = f"reproducer: {', '.join(names)}"
    return ir.serde.deserialize_model(cut)
