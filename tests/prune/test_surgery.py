"""Planner and surgery work on node objects: names (missing or repeated) change nothing."""

from __future__ import annotations

import numpy as np

import lightir
from lightir import zoo
from lightir.data import CalibrationData


def _weights(model):
    return [v.const_value.numpy() for v in model.graph.initializers.values() if v.const_value]


def _unnamed(model):
    copy = lightir.optimize(model, "cleanup").model
    for node in copy.graph:
        node.name = ""
    return copy


def test_unnamed_nodes_prune_and_refit_as_named_ones():
    images, _ = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:128]})
    model = lightir.optimize("zoo:digits", "fold-bn,cleanup").model
    pipeline = "prune{ratio=0.5,round=1,refit=true}"
    named = lightir.optimize(model, pipeline, calib=calib, tolerances={"prune": "cos:-1"})
    blank = lightir.optimize(_unnamed(model), pipeline, calib=calib, tolerances={"prune": "cos:-1"})
    assert named.report.ok and blank.report.ok
    stats = named.report.record("prune").stats
    assert stats["channels_removed"] > 0 and stats["refit_layers"] > 0
    assert blank.report.record("prune").stats == stats
    for a, b in zip(_weights(named.model), _weights(blank.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unnamed_nodes_quantize_as_named_ones():
    model = lightir.optimize("zoo:resnet", "fold-bn,cleanup").model
    named = lightir.optimize(model, "int8{keep-fp32=auto}")
    blank = lightir.optimize(_unnamed(model), "int8{keep-fp32=auto}")
    assert named.report.ok and blank.report.ok
    assert len(named.report.record("int8").stats["int8_ops"]) == len(
        blank.report.record("int8").stats["int8_ops"]
    )
    for a, b in zip(_weights(named.model), _weights(blank.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_channel_means_streamed_a_row_at_a_time_equal_the_whole_capture(monkeypatch):
    """The compensating means are per-channel sums kept over parts of the rows; held whole,
    the values read on ResNet-50 at ratio 0.75 took 1 GB for 24 samples."""
    from lightir.onnx_bridge import capture
    from lightir.prune import surgery

    model = zoo.build("resnet")
    names = [n.inputs[0].name for n in model.graph if n.op_type == "Conv"][1:4]
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((5, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    whole = capture(model, names, batches)
    monkeypatch.setattr(surgery, "MEANS_BYTES", 1)  # one row per run
    means = surgery.channel_means(model, names, batches)
    for name in names:
        expected = whole[name].mean(axis=(0, 2, 3), dtype=np.float64)
        np.testing.assert_allclose(means[name], expected, rtol=1e-5, atol=1e-6)
