from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir.testing import GraphBuilder, assert_outputs_close, declines, from_text, op_types


def merge(model, pipeline="merge-linear,cleanup"):
    result = lightir.optimize(model, pipeline)
    assert result.report.ok, result.report.failures
    return result


def two_convs(cin, mid, cout, k1, k2, *, pads2=None, bias1=False, seed=0):
    b = GraphBuilder("chain", seed=seed)
    x = b.input("x", ["batch", cin, 10, 10])
    y = b.conv(x, mid, k1, bias=bias1, pads=[k1 // 2] * 4)
    b.output(b.conv(y, cout, k2, pads=pads2, bias=True), "y")
    return b.build()


@pytest.mark.parametrize(
    ("cin", "mid", "cout", "k1", "k2"),
    [(4, 8, 8, 1, 3), (4, 16, 4, 3, 1), (8, 8, 8, 1, 1)],
)
def test_cheaper_conv_chains_merge(cin, mid, cout, k1, k2):
    model = two_convs(cin, mid, cout, k1, k2)
    out = merge(model).model
    assert op_types(out) == ["Conv"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_bottleneck_is_left_alone_unless_forced():
    model = two_convs(16, 2, 16, 1, 3)
    result = merge(model)
    assert op_types(result.model) == ["Conv", "Conv"]
    assert any("would cost more" in d for d in declines(result))
    forced = merge(model, "merge-linear{force=true},cleanup").model
    assert op_types(forced) == ["Conv"]
    assert_outputs_close(model, forced, rtol=1e-5)


def test_kxk_then_unpadded_kxk_composes_when_forced():
    model = two_convs(4, 4, 4, 3, 3, pads2=[0] * 4)
    out = merge(model, "merge-linear{force=true},cleanup").model
    assert op_types(out) == ["Conv"] and tuple(
        out.graph[0].attributes.get_ints("kernel_shape")
    ) == (5, 5)
    assert_outputs_close(model, out, rtol=1e-5)


def test_declines_padded_conv_after_a_bias():
    model = two_convs(4, 8, 8, 1, 3, bias1=True)
    result = merge(model)
    assert op_types(result.model) == ["Conv", "Conv"]
    assert any("cannot merge exactly" in d for d in declines(result))


def test_constant_scales_and_shifts_fold_into_convs():
    b = GraphBuilder("affine", seed=1)
    x = b.input("x", [1, 4, 6, 6])
    scale_in = b.initializer(np.linspace(0.5, 2, 4, dtype=np.float32).reshape(1, 4, 1, 1))
    y = b.conv(b.op("Mul", [x, scale_in]), 6, 3, bias=True)
    shift = b.initializer(np.linspace(-1, 1, 6, dtype=np.float32).reshape(6, 1, 1))
    scale_out = b.initializer(np.float32(3.0))
    b.output(b.op("Mul", [b.op("Add", [y, shift]), scale_out]), "y")
    model = b.build()
    out = merge(model).model
    assert op_types(out) == ["Conv"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_declines_relu_between():
    b = GraphBuilder("relu", seed=2)
    x = b.input("x", [1, 4, 6, 6])
    b.output(b.conv(b.relu(b.conv(x, 4, 1, pads=[0] * 4)), 4, 1, pads=[0] * 4), "y")
    result = merge(b.build())
    assert op_types(result.model) == ["Conv", "Relu", "Conv"]


HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def dense_chain_model(middle=32, extra=""):
    rng = np.random.default_rng(0)
    w1 = ", ".join(f"{v:.4f}" for v in rng.standard_normal(middle * 16))
    b1 = ", ".join(f"{v:.4f}" for v in rng.standard_normal(middle))
    w2 = ", ".join(f"{v:.4f}" for v in rng.standard_normal(8 * middle))
    return from_text(
        HEADER
        + f"""
        g (float[N, 16] x) => (float[N, 8] y) {{
          w1 = Constant <value = float[{middle}, 16] {{{w1}}}> ()
          b1 = Constant <value = float[{middle}] {{{b1}}}> ()
          w2 = Constant <value = float[{middle}, 8] {{{w2}}}> ()
          h = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w1, b1)
          {extra}
          m = MatMul(f, w2)
          c = Constant <value = float[8] {{1, 2, 3, 4, 5, 6, 7, 8}}> ()
          y = Add(m, c)
        }}"""
    )


def test_dense_chain_through_flatten_merges():
    model = dense_chain_model(extra="f = Flatten <axis = 1> (h)")
    out = merge(model).model
    assert op_types(out) == ["Gemm"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_dense_chain_with_relu_and_costlier_merge_left_alone():
    relu = merge(dense_chain_model(extra="f = Relu(h)"))
    # The chain stays split at the Relu; the MatMul + bias Add after it becomes one Gemm.
    assert op_types(relu.model) == ["Gemm", "Relu", "Gemm"]
    narrow = merge(dense_chain_model(middle=2, extra="f = Identity(h)"))
    assert op_types(narrow.model).count("Gemm") == 1  # 16x2 + 2x8 < 16x8: kept
    assert any("would cost more" in d for d in declines(narrow))


def test_linear_layers_exported_with_transposed_weights_merge_under_reparam():
    """MatMul(x, Transpose(W)) + b twice, as some exporters write nn.Linear."""
    b = GraphBuilder("linear_t", seed=3)
    x = b.input("x", ["batch", 16])
    h = x
    for fan_in, fan_out in [(16, 24), (24, 8)]:
        w = b.initializer(b.rng.standard_normal((fan_out, fan_in)).astype(np.float32))
        bias = b.initializer(b.rng.standard_normal(fan_out).astype(np.float32))
        wt = b.op("Transpose", [w], {"perm": [1, 0]})
        h = b.op("Add", [b.op("MatMul", [h, wt]), bias])
    b.output(h, "y")
    model = b.build()
    out = merge(model, "reparam").model
    assert op_types(out) == ["Gemm"]
    assert_outputs_close(model, out, rtol=1e-5)
