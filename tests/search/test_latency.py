"""Per-layer latency tables: the layer models run, int8 ones as integer kernels, costs add up."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from lightir import zoo
from lightir.analysis.cost import inferred_shapes
from lightir.search.latency import (
    ConvSpec,
    LatencyTable,
    block_from_times,
    conv_channel_block,
    paired_difference,
    paired_ratio,
    paired_times,
    session,
    spec_model,
)


def test_spec_of_a_conv_reads_its_geometry():
    model = zoo.build("resnet")
    shapes = inferred_shapes(model, {"input": (1, 3, 32, 32)})
    conv = next(n for n in model.graph if n.op_type == "Conv")
    spec = ConvSpec.of_node(conv, shapes)
    weight = conv.inputs[1].const_value.shape
    assert (spec.cout, spec.cin, *spec.kernel) == tuple(weight)
    assert (spec.height, spec.width) == (32, 32)
    out = shapes[conv.outputs[0].name]
    assert spec.out_size == tuple(out[2:])
    assert spec.macs == out[1] * out[2] * out[3] * weight[1] * weight[2] * weight[3]
    # Nodes that are not priced layers have no spec, a Constant (no inputs at all) included.
    constant = ir.node("Constant", [], attributes={"value": ir.tensor(np.zeros(2, np.float32))})
    relu = next(n for n in model.graph if n.op_type == "Relu")
    assert ConvSpec.of_node(constant, shapes) is None and ConvSpec.of_node(relu, shapes) is None


def test_a_layer_model_computes_its_convolution():
    spec = ConvSpec(8, 16, (3, 3), 10, 12, strides=(2, 2), pads=(1, 1, 1, 1))
    model = spec_model(spec)
    x = np.random.default_rng(0).standard_normal((1, 8, 10, 12)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x})
    assert y.shape == (1, 16, *spec.out_size)


def test_an_int8_layer_runs_as_an_integer_convolution(tmp_path):
    spec = ConvSpec(16, 16, (3, 3), 14, 14, pads=(1, 1, 1, 1), int8=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    proto = ir.to_proto(spec_model(spec)).SerializeToString()
    ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops


def test_the_table_measures_each_shape_once_and_prices_by_objective():
    table = LatencyTable("latency")
    spec = ConvSpec(16, 16, (3, 3), 14, 14, pads=(1, 1, 1, 1))
    first = table.cost(spec)
    assert first > 0 and table.cost(spec) == first and len(table.entries) == 1
    assert table.chain([spec, spec]) == 2 * first
    assert LatencyTable("macs").cost(spec) == spec.macs == 16 * 14 * 14 * 16 * 9
    assert LatencyTable("bytes").cost(spec.with_(int8=True)) == 16 * 16 * 9
    with pytest.raises(ValueError, match="objective"):
        LatencyTable("watts")


def test_block_from_times_reads_padding():
    # 40 channels cost what 48 do: padded to a block of 16 (AVX-512 NCHWc).
    assert block_from_times(69e-6, 97e-6, 97e-6) == 16
    # 40 channels midway: blocks of 8 (AVX2), or no blocks.
    assert block_from_times(69e-6, 83e-6, 97e-6) == 8
    # Counts hardly matter (overhead-bound): nothing to align to.
    assert block_from_times(10e-6, 10.4e-6, 10.3e-6) == 8


def test_conv_channel_block_is_measured_once():
    assert conv_channel_block() in (8, 16)
    assert conv_channel_block.cache_info().currsize >= 1


def _busy(seconds: float):
    """A call that takes ``seconds`` of CPU (sleeping would measure the scheduler)."""

    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return run


def test_paired_timings_read_the_ratio_and_the_difference():
    fast, slow = _busy(0.0005), _busy(0.001)
    assert paired_ratio(fast, slow, rounds=3, min_seconds=0.005) == pytest.approx(2.0, rel=0.2)
    assert paired_ratio(slow, fast, rounds=3, min_seconds=0.005) == pytest.approx(0.5, rel=0.2)
    middle, half = paired_difference(fast, slow, rounds=5, min_seconds=0.005)
    assert middle == pytest.approx(0.0005, rel=0.3)
    assert half < middle  # a half-millisecond difference is told apart from nothing


def test_paired_times_alternate_which_runs_first():
    calls: list[str] = []
    first = lambda: calls.append("a")  # noqa: E731
    second = lambda: calls.append("b")  # noqa: E731
    pairs = paired_times(first, second, rounds=2, min_seconds=0.0)
    assert len(pairs) == 2
    # Round 1 times ``first`` (a warm-up call, then its runs) before ``second``; round 2
    # the other way round.
    half = len(calls) // 2
    assert calls[0] == "a" and calls[half] == "b"


def test_a_timing_session_reads_the_models_weights_in_place():
    """onnxruntime copies weights serialized into the protobuf (ResNet-50: 216 MB a session);
    handed over as external initializers it uses the model's own arrays (119 MB). Same
    outputs; a weight no node reads (an int8 layer's float weight) is not handed over."""
    model = zoo.build("resnet")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    shared = session(model)
    arrays = shared.lightir_weights
    assert arrays
    for name, array in arrays.items():
        assert np.shares_memory(array, model.graph.initializers[name].const_value.numpy())
    proto = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_array_equal(
        shared.run(None, {"input": x})[0], proto.run(None, {"input": x})[0]
    )
    spec = ConvSpec(64, 64, (3, 3), 14, 14, pads=(1, 1, 1, 1), int8=True)
    int8 = spec_model(spec)
    assert any(not v.uses() for v in int8.graph.initializers.values())
    feed = {"x": np.random.default_rng(1).standard_normal((1, 64, 14, 14)).astype(np.float32)}
    expected = ort.InferenceSession(
        ir.to_proto(int8).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, feed)[0]
    np.testing.assert_array_equal(session(int8).run(None, feed)[0], expected)
