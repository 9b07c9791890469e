from __future__ import annotations

import lightir
from lightir.testing import assert_outputs_close, from_text, op_types

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def cleanup(model):
    result = lightir.optimize(model, "cleanup")
    assert result.report.ok, result.report.failures
    return result


def test_removes_no_ops_dead_nodes_and_folds_constants():
    model = from_text(
        HEADER
        + """
        g (float[N, 4] x) => (float[N, 4] y) {
          one = Constant <value = float {1.0}> ()
          a = Mul(x, one)
          zero = Constant <value = float[1] {0.0}> ()
          b = Add(zero, a)
          d, mask = Dropout(b)
          i = Identity(d)
          shape = Constant <value = int64[2] {-1, 4}> ()
          r = Reshape(i, shape)
          t = Transpose <perm = [0, 1]> (r)
          c1 = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> ()
          c2 = Constant <value = float[4] {0.5, 0.5, 0.5, 0.5}> ()
          c = Add(c1, c2)
          s = Mul(t, c)
          unused = Sigmoid(x)
          y = Relu(s)
        }"""
    )
    out = cleanup(model).model
    assert op_types(out) == ["Mul", "Relu"]
    (scale,) = out.graph.initializers.values()
    assert scale.const_value.numpy().tolist() == [1.5, 2.5, 3.5, 4.5]
    assert_outputs_close(model, out, rtol=0)


def test_keeps_ops_that_only_look_like_no_ops():
    model = from_text(
        HEADER
        + """
        g (float[N, 4] x, bool train) => (float[N, 4] y, float[2, N, 4] z, float[N, 4] w) {
          ones = Constant <value = float[2, 1, 1] {1.0, 1.0}> ()
          z = Mul(x, ones)
          almost = Constant <value = float {1.0000001}> ()
          w = Mul(x, almost)
          ratio = Constant <value = float {0.5}> ()
          y = Dropout(x, ratio, train)
        }"""
    )
    result = lightir.optimize(model, "cleanup", verify="structural")
    # Mul by ones that broadcasts to rank 3, Mul by 1+1e-7, Dropout whose mode is an input
    assert sorted(op_types(result.model)) == ["Dropout", "Mul", "Mul"]
    assert any("training_mode" in d for d in result.report.records[0].declines)


def test_keeps_reshape_that_changes_shape_and_reports_unknown_shapes():
    model = from_text(
        HEADER
        + """
        g (float[N, 4] x) => (float[N, 2, 2] y) {
          shape = Constant <value = int64[3] {-1, 2, 2}> ()
          y = Reshape(x, shape)
        }"""
    )
    result = cleanup(model)
    assert op_types(result.model) == ["Reshape"]
    assert result.report.records[0].declines == []  # a real reshape is not a candidate


def test_unchanged_model_reports_unchanged():
    model = from_text(HEADER + "g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }")
    result = cleanup(model)
    assert result.report.records[0].status == "unchanged"
