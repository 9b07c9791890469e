"""Integer builds judged per quantized tensor (lightir.lowering.stepwise)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import lightir
from lightir.lowering.stepwise import CUT_SUFFIX, cut_model, cut_points, stepwise_check
from lightir.onnx_bridge import OrtModel
from lightir.testing import GraphBuilder, random_inputs


def int8_model():
    """conv (pad 1) -> relu -> conv -> residual add -> gemm, quantized by lightir's int8."""
    b = GraphBuilder("stepwise", seed=3)
    x = b.input("x", [1, 8, 10, 10])
    h = b.relu(b.conv(x, 8, 3, bias=True))
    h = b.add(b.conv(h, 8, 3, bias=True), h)
    b.output(b.gemm(b.flatten(h), 10, in_features=8 * 10 * 10), "y")
    return lightir.optimize(b.build(), "int8").model


def test_the_cut_copy_reads_every_quantized_tensor_from_an_input_and_leaves_the_model():
    model = int8_model()
    nodes, inputs = len(list(model.graph)), len(model.graph.inputs)
    cuts = [v.name for v in cut_points(model)]
    cut, names = cut_model(model)
    assert names == cuts and len(names) >= 3
    assert (len(list(model.graph)), len(model.graph.inputs)) == (nodes, inputs)
    fed = {v.name for v in cut.graph.inputs}
    for node in cut.graph:
        if node.op_type == "DequantizeLinear" and node.inputs[0].const_value is None:
            assert node.inputs[0].name in fed, node.name
    assert {v.name for v in cut.graph.outputs} >= set(names)
    # Fed the whole model's own quantized tensors, onnxruntime's run of the cut copy gives
    # them back: the pieces compute from the same integers.
    batch = random_inputs(model, samples=1, seed=4)[0]
    taps = OrtModel(model, optimize="all", probes={v.name: v for v in cut_points(model)}).run(batch)
    feed = {**batch, **{n + CUT_SUFFIX: taps[n] for n in names}}
    again = OrtModel(cut, optimize="all").run(feed)
    for name in names:
        assert np.array_equal(again[name], taps[name]), name


def _ort_build(corrupt: bool = False):
    """A 'build' of the cut copy by onnxruntime's float fake-quant kernels: another int8
    implementation, a step apart at ties. ``corrupt`` negates one conv's weight codes."""

    def build(cut, shapes):
        if corrupt:
            conv = next(n for n in cut.graph if n.op_type == "Conv")
            codes = conv.inputs[1].producer().inputs[0]
            codes.const_value = ir.tensor(-codes.const_value.numpy(), name=codes.name)
        session = OrtModel(cut, optimize=False)
        return session.run

    return build


def test_another_int8_implementation_is_within_one_step_everywhere():
    model = int8_model()
    batches = random_inputs(model, samples=2, seed=5)
    verdict = stepwise_check(model, batches, _ort_build(), 1e-3)
    assert verdict.ok, verdict.describe()
    assert verdict.max_steps <= 1 and verdict.tensors == len(cut_points(model))


def test_a_wrong_kernel_is_many_steps_off_where_it_is():
    model = int8_model()
    batches = random_inputs(model, samples=2, seed=5)
    verdict = stepwise_check(model, batches, _ort_build(corrupt=True), 1e-3)
    assert not verdict.ok
    assert verdict.max_steps > 1


def test_the_tvm_cut_build_of_an_integer_model_passes(tmp_path):
    """The cut copy built by TVM with the integer rewrites, as compile_model builds it when an
    integer build misses at its outputs, is within one step of onnxruntime everywhere."""
    pytest.importorskip("tvm")
    from lightir.lowering import tvm_backend
    from lightir.lowering.targets import resolve

    model = int8_model()
    batches = random_inputs(model, samples=2, seed=6)
    failure = tvm_backend.LoweringError("missed at the outputs; nothing was written")
    failure.tolerance, failure.integer_ops = 1e-3, 4
    verdict = tvm_backend._stepwise(
        model, batches, {"x": (1, 8, 10, 10)}, resolve("x86"), None, tmp_path, failure
    )
    assert verdict.ok and verdict.max_steps <= 1, verdict.describe()
    assert verdict.tensors == len(cut_points(model))
