from __future__ import annotations

from collections import Counter

import onnx_ir as ir

import lightir
from lightir import zoo
from lightir.testing import GraphBuilder, assert_outputs_close, from_text, op_types


def test_fp16_halves_weights_and_keeps_the_float32_interface():
    model = lightir.optimize("zoo:resnet", "fold-bn").model
    result = lightir.optimize(model, "fp16")
    assert result.report.ok, result.report.failures
    out = result.model
    assert Counter(op_types(out))["Cast"] == 2  # one in, one out
    assert out.graph.inputs[0].dtype == ir.DataType.FLOAT
    assert out.graph.outputs[0].dtype == ir.DataType.FLOAT
    dtypes = {v.const_value.dtype for v in out.graph.initializers.values()}
    assert ir.DataType.FLOAT not in dtypes
    assert result.report.records[0].cost.bytes < 0.51 * result.report.original.bytes
    assert_outputs_close(model, out, rtol=5e-3)


def test_fragile_ops_and_kept_types_stay_float32():
    b = GraphBuilder("softmax", seed=1)
    x = b.input("x", ["batch", 16])
    y = b.op("Softmax", [b.gemm(x, 8)], {"axis": 1})
    b.output(b.gemm(b.relu(y), 4), "y")
    model = b.build()
    out = lightir.optimize(model, "fp16").model
    softmax = next(n for n in out.graph if n.op_type == "Softmax")
    assert softmax.inputs[0].dtype == ir.DataType.FLOAT  # a Cast feeds it float32
    assert softmax.inputs[0].producer().op_type == "Cast"
    kept = lightir.optimize(model, "fp16{keep=Gemm}").model
    gemms = [n for n in kept.graph if n.op_type == "Gemm"]
    assert all(n.outputs[0].dtype == ir.DataType.FLOAT for n in gemms)
    assert_outputs_close(model, out, rtol=5e-3)


def test_fp16_on_the_trained_fixture_keeps_accuracy():
    images, labels = zoo.digits_test_split()
    model = zoo.build("digits")
    out = lightir.optimize(model, "fold-bn,fp16").model
    assert zoo.accuracy(out, images, labels) == zoo.accuracy(model, images, labels)


def test_ops_without_float16_stay_float32_and_the_model_stays_valid():
    """An already dynamically quantized model: DynamicQuantizeLinear takes float32 only."""
    model = from_text(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 8] x) => (float[1, 8] y) {
          q, scale, zero = DynamicQuantizeLinear (x)
          k = Constant <value = float[1] {2.0}> ()
          s2 = Mul (scale, k)
          deq = DequantizeLinear (q, s2, zero)
          w = Constant <value = float[8, 8] {%s}> ()
          y = MatMul (deq, w)
        }"""
        % ", ".join(str(v / 10) for v in range(64))
    )
    result = lightir.optimize(model, "fp16{keep=}", tolerances={"fp16": "cos:0.99"})
    assert result.report.records[0].status == "changed", result.report.failures
    kinds = {n.op_type: n for n in result.model.graph}
    assert kinds["DynamicQuantizeLinear"].inputs[0].dtype == ir.DataType.FLOAT
    assert kinds["MatMul"].outputs[0].dtype == ir.DataType.FLOAT16
