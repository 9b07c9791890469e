"""Bisection of a broken exact pass: the first wrong rewrite named, a reproducer that fails alone.

The buggy pass below is fold-bn with one seeded bug, the class reported against real graph
optimizers: the BN shift is dropped when the conv is strided. zoo:resnet has fifteen
Conv+BN pairs, two of its convs strided, so the pass makes fifteen rewrites and the first
wrong one is the first strided conv's.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnxscript.rewriter import RewriteRuleSet

import lightir
from lightir import zoo
from lightir.bisect import extract
from lightir.pass_base import Pass, PassContext, PassResult
from lightir.passes import fold_bn
from lightir.registry import register_pass, unregister
from lightir.rewrite import RewriteGate, allow, apply_rules, gated
from lightir.testing import random_inputs, run


class StridedShiftDropped(fold_bn.FoldIntoConv):
    """Folds the BN scale but forgets its shift on strided convs (the seeded bug)."""

    def fold(self, linear, weight, bias, scale, beta, mean):
        weight, new_bias, attributes, extra = super().fold(linear, weight, bias, scale, beta, mean)
        if any(s != 1 for s in linear.attributes.get_ints("strides", [1, 1])):
            new_bias = np.zeros_like(new_bias) if bias is None else bias * scale
        return weight, new_bias, attributes, extra


@pytest.fixture
def buggy_pass():
    rules = RewriteRuleSet([StridedShiftDropped().rule(), *fold_bn.RULES[1:]])

    @register_pass("fold-bn-strided-bug", contract="exact")
    class BuggyFold(Pass):
        """fold-bn with a seeded bug on strided convs."""

        def run(self, model, context: PassContext) -> PassResult:
            count = apply_rules(model, rules, context)
            return PassResult(model, modified=count > 0)

    yield BuggyFold
    unregister("fold-bn-strided-bug")


def strided_convs(model) -> list[str]:
    return [
        n.name
        for n in model.graph
        if n.op_type == "Conv" and any(s != 1 for s in n.attributes.get_ints("strides", [1, 1]))
    ]


def test_the_first_wrong_rewrite_is_named_and_its_reproducer_fails_alone(buggy_pass):
    model = zoo.resnet()
    first = strided_convs(model)[0]
    result = lightir.optimize(model, "fold-bn-strided-bug")
    record = result.report.record("fold-bn-strided-bug")
    assert record.status == "rolled-back"
    found = record.stats["bisect"]
    assert found["rewrites"] == 15
    # Every conv before it folded correctly: the first wrong rewrite is the strided conv's.
    assert found["node"] != "" and first in found["nodes"], found
    assert found["rule"] == "fold-bn-into-conv"  # the rule class it inherits its name from
    assert f"rewrite {found['first_bad']} of 15" in record.message
    assert found["reproducer"] == "subgraph"
    reproducer = record.reproducer
    assert {n.op_type for n in reproducer.graph} <= {"Conv", "BatchNormalization"}
    assert len(reproducer.graph) == 2  # the conv and its BN: nothing else
    # It fails on its own, as it would for a maintainer given the file.
    again = lightir.optimize(reproducer, "fold-bn-strided-bug")
    assert again.report.record("fold-bn-strided-bug").status == "rolled-back"
    # And the real pass handles it: the reproducer is a valid model, not a broken one.
    assert lightir.optimize(reproducer, "fold-bn").report.ok


def test_a_correct_pass_is_never_bisected():
    result = lightir.optimize(zoo.resnet(), "fold-bn")
    assert result.report.ok and "bisect" not in result.report.record("fold-bn").stats


def test_the_gate_lets_the_first_k_rewrites_through_and_counts_them():
    model = zoo.resnet()
    with gated(RewriteGate(limit=4)) as gate:
        count = apply_rules(model, fold_bn.RULES)
    assert count == 4 and len(gate.seen) == 4
    assert sum(n.op_type == "BatchNormalization" for n in model.graph) == 11
    assert allow(next(iter(model.graph)), "anything")  # no gate: everything goes


def test_the_cut_is_a_model_of_its_own_computing_what_the_nodes_computed():
    model = zoo.resnet()
    conv = next(n for n in model.graph if n.op_type == "Conv")
    bn = next(iter(conv.outputs[0].uses())).node
    cut = extract(model, [conv.name, bn.name])
    assert [n.op_type for n in cut.graph] == ["Conv", "BatchNormalization"]
    (outputs,) = run(cut, random_inputs(cut, samples=2, seed=0))
    (out,) = outputs.values()
    assert out.shape[1] == conv.inputs[1].const_value.shape[0]


def test_the_command_line_writes_the_reproducer_next_to_the_output(buggy_pass, tmp_path, capsys):
    from lightir.cli import run as main

    output = tmp_path / "small.onnx"
    assert main(["zoo:resnet", "-p", "fold-bn-strided-bug", "-o", str(output), "-q"]) == 1
    reproducer = tmp_path / "small.1-fold-bn-strided-bug.repro.onnx"
    assert reproducer.exists()
    err = capsys.readouterr().err
    assert f"reproducer written to {reproducer}" in err and "rewrite 6 of 15" in err
    assert main([str(reproducer), "-p", "fold-bn-strided-bug", "-q"]) == 1  # fails alone
