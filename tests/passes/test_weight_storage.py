"""int8-weights, int4-weights and share-weights: smaller files, same ops, budgets kept."""

from __future__ import annotations

from collections import Counter

import numpy as np

import lightir
from lightir import zoo
from lightir.testing import GraphBuilder, assert_outputs_close, declines, op_types


def small_net(opset=17):
    b = GraphBuilder("net", seed=0, opset=opset)
    x = b.input("x", ["batch", 3, 8, 8])
    y = b.relu(b.conv(b.relu(b.conv(x, 16, 3, bias=True)), 16, 3, bias=True))
    b.output(b.gemm(b.flatten(b.global_avg_pool(y)), 10), "y")
    return b.build()


def test_int8_weights_store_int8_and_keep_float_compute():
    model = small_net()
    result = lightir.optimize(model, "int8-weights")
    assert result.report.ok, result.report.failures
    stats = result.report.records[0].stats
    # 4x less per weight, minus one float32 scale per 16-channel row: 3.8x here
    assert stats["layers"] == 2 and stats["compression"] > 3.7  # the 10x16 Gemm is < min-size
    counts = Counter(op_types(result.model))
    assert counts["DequantizeLinear"] == 2 and counts["Conv"] == 2
    assert_outputs_close(model, result.model, rtol=2e-2)


def test_int4_weights_need_opset_21():
    old = lightir.optimize(small_net(17), "int4-weights")
    # An opset-17 model is raised to 21 first, as its own verified step.
    assert [(r.name, r.status) for r in old.report.records] == [
        ("upgrade-opset", "changed"),
        ("int4-weights", "changed"),
    ]
    assert old.model.opset_imports[""] == 21
    new_model = small_net(21)
    new = lightir.optimize(new_model, "int4-weights")
    assert new.report.ok, new.report.failures
    assert new.report.records[0].stats["compression"] > 7
    assert_outputs_close(new_model, new.model, rtol=0.2)


def test_share_weights_uses_at_most_2_to_the_bits_values():
    model = small_net()
    result = lightir.optimize(model, "share-weights{bits=3}")
    assert result.report.ok, result.report.failures
    stats = result.report.records[0].stats
    assert stats["compression_packed"] > 9 and stats["entropy_coded_bytes"] <= stats["packed_bytes"]
    gathers = [n for n in result.model.graph if n.op_type == "Gather"]
    assert len(gathers) == 2  # both convs shared; a loop over nothing would prove nothing
    for node in gathers:
        assert node.inputs[0].const_value.numpy().size <= 8


def test_share_weights_keeps_pruned_zeros_exactly_zero():
    b = GraphBuilder("sparse", seed=2)
    x = b.input("x", [1, 8, 6, 6])
    y = b.conv(x, 16, 3)
    weight = y.producer().inputs[1]
    array = weight.const_value.numpy().copy()
    array[np.abs(array) < np.quantile(np.abs(array), 0.6)] = 0
    weight.const_value = lightir.onnx_bridge.ir.tensor(array, name=weight.name)
    b.output(y, "y")
    result = lightir.optimize(b.build(), "share-weights{bits=4}")
    gather = next(n for n in result.model.graph if n.op_type == "Gather")
    codes = gather.inputs[1].producer().inputs[0].const_value.numpy().reshape(array.shape)
    assert np.all(codes[array == 0] == 0) and gather.inputs[0].const_value.numpy()[0] == 0


def test_deep_compression_pipeline_on_the_fixture():
    images, labels = zoo.digits_test_split()
    model = zoo.build("digits")
    result = lightir.optimize(model, "fold-bn,sparsify{ratio=0.5},share-weights{bits=4}")
    assert result.report.ok, result.report.failures
    stats = result.report.records[-1].stats
    assert stats["compression_entropy_coded"] > 10
    assert zoo.accuracy(result.model, images, labels) >= zoo.accuracy(model, images, labels) - 0.01


def test_shared_weight_is_declined():
    b = GraphBuilder("shared", seed=3)
    x = b.input("x", [1, 16, 6, 6])
    w = b.initializer(b.conv_weight(16, 16, (3, 3)))
    b.output(b.conv(b.conv(x, 16, 3, weight=w), 16, 3, weight=w), "y")
    result = lightir.optimize(b.build(), "share-weights")
    assert result.report.records[0].status == "unchanged"
    assert any("is shared" in d for d in declines(result))


def test_replaced_float_weights_leave_the_file():
    model = small_net()
    for pipeline in ("int8-weights", "share-weights", "ternary", "binary"):
        result = lightir.optimize(model, pipeline, tolerances={pipeline: "cos:-1"})
        floats = [
            v.name
            for v in result.model.graph.initializers.values()
            if v.const_value.dtype == lightir.onnx_bridge.ir.DataType.FLOAT
            and v.const_value.size >= 256
        ]
        assert floats == [], (pipeline, floats)


def test_ternary_and_binary_codes():
    model = small_net()
    for pipeline, allowed in (("ternary", {-1, 0, 1}), ("binary", {-1, 1})):
        result = lightir.optimize(model, pipeline, tolerances={pipeline: "cos:-1"})
        dq = [n for n in result.model.graph if n.op_type == "DequantizeLinear"]
        assert len(dq) == 2
        for node in dq:
            assert set(np.unique(node.inputs[0].const_value.numpy()).tolist()) <= allowed


def test_binary_without_retraining_breaks_its_budget_on_the_fixture():
    result = lightir.optimize("zoo:digits", "fold-bn,binary")
    assert not result.report.ok and "binary" in result.report.failures[0]
