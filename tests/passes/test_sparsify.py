from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir import zoo
from lightir.testing import GraphBuilder, assert_outputs_close, op_types


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsify_zeroes_the_smallest_weights_and_reports_storage(scope):
    # Random weights lose more to sparsity than trained ones: lift the budget for mechanics.
    model = zoo.build("vgg")
    result = lightir.optimize(
        model, f"sparsify{{ratio=0.5,scope={scope}}}", tolerances={"sparsify": "cos:-1"}
    )
    assert result.report.ok, result.report.failures
    stats = result.report.records[0].stats
    assert 0.45 < stats["sparsity"] < 0.55
    assert stats["compression_gain"] > 1.3
    assert op_types(result.model) == op_types(model)  # dense model, same ops
    weights = [
        n.inputs[1].const_value.numpy() for n in result.model.graph if n.op_type in ("Conv", "Gemm")
    ]
    originals = [
        n.inputs[1].const_value.numpy() for n in model.graph if n.op_type in ("Conv", "Gemm")
    ]
    for new, old in zip(weights, originals):
        kept = new != 0
        np.testing.assert_array_equal(new[kept], old[kept])  # survivors unchanged
        if kept.any() and (~kept).any() and scope == "layer":
            assert np.abs(old[~kept]).max() <= np.abs(old[kept]).min()


def test_sparsify_leaves_small_layers_and_zero_ratio_alone():
    b = GraphBuilder("small", seed=1)
    x = b.input("x", [1, 2, 4, 4])
    b.output(b.conv(x, 2, 1, pads=[0] * 4), "y")  # 4 weights < min-size
    model = b.build()
    result = lightir.optimize(model, "sparsify{ratio=0.5}")
    assert result.report.records[0].status == "unchanged"
    assert_outputs_close(model, result.model, rtol=0)


def test_sparsify_on_the_trained_fixture_and_its_budget():
    images, labels = zoo.digits_test_split()
    model = zoo.build("digits")
    half = lightir.optimize(model, "sparsify{ratio=0.5}")
    assert half.report.ok, half.report.failures
    assert zoo.accuracy(half.model, images, labels) >= zoo.accuracy(model, images, labels) - 0.01
    most = lightir.optimize(model, "sparsify{ratio=0.9}")
    assert not most.report.ok and "cos>=0.9" in most.report.failures[0]
